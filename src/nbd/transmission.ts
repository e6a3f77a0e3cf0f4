/**
 * The transmission phase of one connection: requests parsed from the input as it arrives, each
 * started at once (many in flight, answered in whatever order they finish), replies written
 * whole (header and payload in one buffer, or one write, so replies never interleave inside a
 * message).
 *
 * Backpressure: before each new request header the connection checks its limits (requests in
 * flight, bytes held, bytes queued on the socket unsent) and the server's byte budget; over any
 * of them it stops reading the socket until a request finishes or the socket drains. Nothing is
 * queued without bound, and no buffer is sized by a client's number before that number was
 * checked against the advertised maximum (payloads are gathered from the bytes actually received).
 *
 * Accounting: a request is charged, when its header is read, for everything it can come to hold:
 * its payload or read buffer plus REPLY_BOUND for the reply's headers or error message. When its
 * reply is queued the charge shrinks to the reply's size, and that stays charged until the socket
 * has handed the reply to the kernel (the write's callback), so replies a client does not read
 * count as long as they sit in this process. A header is read only while the server's total is
 * under its limit, so the total never passes limit + maxPayload + REPLY_BOUND.
 */
import type { Socket } from 'node:net';
import type { Extent } from '../device/block-device.js';
import type { NbdExport } from './export.js';
import type { InputBuffer } from './input.js';
import { ProtocolViolation, type Negotiated } from './handshake.js';
import {
  CFlag,
  CHUNK_HEADER_SIZE,
  Chunk,
  Cmd,
  Errno,
  REPLY_FLAG_DONE,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_REPLY_MAGIC,
  TFlag,
  errnoOf,
  getU64,
  putU64,
} from './protocol.js';

export interface TransmissionLimits {
  /** Largest READ or WRITE payload (advertised as the maximum block size). */
  maxPayload: number;
  /** Largest oversized WRITE whose payload is read and dropped before EINVAL; longer ones disconnect. */
  drainLimit: number;
  /** Requests in flight per connection before the socket is paused. */
  maxRequests: number;
  /** Payload and read bytes held per connection before the socket is paused. */
  maxBytes: number;
  /** Reply bytes queued unsent on the socket before the socket is paused. */
  maxOutput: number;
  /** Most extents in one BLOCK_STATUS reply. */
  maxExtents: number;
}

/** Bytes held by all connections of a server; connections wait while it is spent. */
export class ByteBudget {
  used = 0;
  /** The most `used` has been. */
  peak = 0;
  private readonly waiting = new Set<() => void>();
  constructor(readonly limit: number) {}

  get spent(): boolean {
    return this.used >= this.limit;
  }
  take(n: number): void {
    this.used += n;
    if (this.used > this.peak) this.peak = this.used;
  }
  give(n: number): void {
    this.used -= n;
    if (this.waiting.size > 0 && !this.spent) {
      const wake = [...this.waiting];
      this.waiting.clear();
      for (const f of wake) f();
    }
  }
  wait(f: () => void): void {
    this.waiting.add(f);
  }
  forget(f: () => void): void {
    this.waiting.delete(f);
  }
}

const HEADER = 0;
const PAYLOAD = 1;
const DRAIN = 2;

/** Error messages are cut to this many bytes: far below qemu's 1000-byte limit on non-data chunks. */
const MAX_MESSAGE_BYTES = 200;
/**
 * Bytes charged to every request for its reply beyond the payload: a simple reply (16), a data
 * chunk's header and offset (28), an error chunk (26 + message) all fit.
 */
export const REPLY_BOUND = 256;

export class Transmission {
  private readonly exp: NbdExport;
  private readonly structured: boolean;
  private readonly context: number | null;
  private readonly flags: number;
  /** Sparse reads (hole chunks) are possible: structured replies and a device with block status. */
  private readonly sparseReads: boolean;

  private state = HEADER;
  // The WRITE whose payload is being gathered, or the one being drained.
  private pCookieHi = 0;
  private pCookieLo = 0;
  private pFlags = 0;
  private pOffset = 0;
  private pLength = 0;
  private pErrno = 0;
  /** What the request being gathered or drained was charged. */
  private pCharge = 0;
  private parts: Buffer[] = [];
  private got = 0;
  private drainLeft = 0;

  private inFlight = 0;
  private bytesHeld = 0;
  private paused = false;
  private pumping = false;
  /** No more requests are read: DISC, end of input, shutdown, a violation, or the socket closed. */
  private stopping = false;
  private closed = false;
  private outQueue: Buffer[] = [];
  private outBytes = 0;
  private flushScheduled = false;
  /** When bytes last arrived or a reply was last handed to the kernel (performance.now()). */
  private lastActivity = performance.now();
  /** The client half-closed: once the buffered requests are read, stop. */
  private inputEnded = false;
  /** A write completed since the last flush began. */
  private dirty = false;
  private finishing = false;
  private resolveFinished!: () => void;
  /** Resolves when every request has finished and the connection has been wound up. */
  readonly finished: Promise<void>;
  private readonly wake = (): void => this.pump();

  constructor(
    private readonly socket: Socket,
    private readonly input: InputBuffer,
    negotiated: Negotiated,
    private readonly limits: TransmissionLimits,
    private readonly budget: ByteBudget,
    private readonly onError: (e: unknown) => void,
  ) {
    this.exp = negotiated.export;
    this.structured = negotiated.structured;
    this.context = negotiated.allocationContext;
    this.flags = negotiated.flags;
    this.sparseReads = this.structured && this.exp.device.can.extents;
    this.finished = new Promise((r) => (this.resolveFinished = r));
  }

  /** Bytes arrived from the client. */
  received(): void {
    this.lastActivity = performance.now();
    this.pump();
  }

  /**
   * Since when the connection has been idle (performance.now() time), or null while anything is
   * going on: a request in flight or half received, input not yet read, replies not yet written.
   */
  idleSince(): number | null {
    if (this.stopping || this.inFlight > 0 || this.state !== HEADER || this.input.available > 0 || this.bytesHeld > 0) return null;
    return this.lastActivity;
  }

  /**
   * Why the client, rather than the server, is holding this connection up: replies it does not
   * read, or a request it started and does not finish sending. Null when it is not (idle, or
   * waiting for the device or the server's budget).
   */
  stalled(): 'replies' | 'request' | null {
    if (this.socket.writableLength > 0) return 'replies';
    if (!this.stopping && !this.paused && (this.state !== HEADER || this.input.available > 0)) return 'request';
    return null;
  }

  /** New input arrived, a request finished, or the socket drained: read requests while allowed. */
  pump(): void {
    if (this.stopping) {
      this.input.clear();
      return;
    }
    if (this.pumping) return;
    this.pumping = true;
    try {
      this.pumpLoop();
    } finally {
      this.pumping = false;
    }
  }

  /** The client will send nothing more (EOF): handle what it sent, answer, then close. */
  endOfInput(): void {
    this.inputEnded = true;
    this.pump();
  }

  /** The socket closed: nothing more can be sent. Requests in flight still run to completion. */
  socketClosed(): void {
    this.closed = true;
    this.stop();
  }

  /** Stop reading requests; `finished` resolves once those in flight are answered. */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.budget.forget(this.wake);
      if (this.state !== HEADER) {
        // A write whose payload will never be complete (or be drained): give back its charge.
        if (this.state === PAYLOAD) this.inFlight--;
        this.state = HEADER;
        this.release(this.pCharge);
      }
      this.parts = [];
      this.input.clear();
      // Keep reading (and dropping) input, so that the client's EOF is seen and the socket closes.
      this.needInput();
      if (this.inFlight === 0) void this.finish();
    }
    return this.finished;
  }

  private pumpLoop(): void {
    const input = this.input;
    while (!this.stopping) {
      if (this.state === PAYLOAD) {
        if (input.available === 0) return this.needInput();
        const piece = input.takeSome(this.pLength - this.got);
        this.parts.push(piece);
        this.got += piece.length;
        if (this.got === this.pLength) {
          this.state = HEADER;
          const data = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.pLength);
          this.parts = [];
          void this.write(this.pCookieHi, this.pCookieLo, this.pFlags, this.pOffset, data, this.pCharge);
        }
        continue;
      }
      if (this.state === DRAIN) {
        this.drainLeft -= input.skip(this.drainLeft);
        if (this.drainLeft > 0) return this.needInput();
        this.state = HEADER;
        this.simple(this.pCookieHi, this.pCookieLo, this.pErrno, this.pCharge);
        continue;
      }
      if (!this.admissible()) return this.hold();
      if (input.available < REQUEST_HEADER_SIZE) return this.needInput();
      this.request(input.take(REQUEST_HEADER_SIZE));
    }
  }

  private admissible(): boolean {
    return (
      this.inFlight < this.limits.maxRequests &&
      this.bytesHeld < this.limits.maxBytes &&
      this.socket.writableLength + this.outBytes < this.limits.maxOutput &&
      !this.budget.spent
    );
  }

  private hold(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    if (this.budget.spent) this.budget.wait(this.wake);
  }

  private needInput(): void {
    if (this.inputEnded && !this.stopping) {
      void this.stop();
      return;
    }
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Parse one request header and start (or refuse) it. */
  private request(h: Buffer): void {
    if (h.readUInt32BE(0) !== REQUEST_MAGIC) return this.violation('bad request magic');
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const cHi = h.readUInt32BE(8);
    const cLo = h.readUInt32BE(12);
    const offset = getU64(h, 16); // -1 when >= 2^53: out of range for any disk
    const length = h.readUInt32BE(24);
    const size = this.exp.size;
    const inRange = offset >= 0 && offset <= size && length <= size - offset;
    /** Why a request out of range is refused, naming it as the client sent it. */
    const outside = (kind: string): string => `${kind} of ${length} bytes ${offset >= 0 ? `at offset ${offset}` : 'at an offset past 2^53'} is outside the ${size}-byte export`;
    const fua = (this.flags & TFlag.SEND_FUA) !== 0 ? CFlag.FUA : 0;

    switch (type) {
      case Cmd.READ: {
        const allowed = fua | (this.structured ? CFlag.DF : 0);
        if ((flags & ~allowed) !== 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'unsupported flags');
        if (length > this.limits.maxPayload) return this.fail(type, cHi, cLo, Errno.EINVAL, 'read is longer than the maximum block size');
        if (!inRange) return this.fail(type, cHi, cLo, Errno.EINVAL, outside('read'));
        if (length === 0) return this.ok(type, cHi, cLo);
        const charge = length + REPLY_BOUND;
        this.begin(charge);
        void this.read(cHi, cLo, flags, offset, length, charge);
        return;
      }
      case Cmd.WRITE: {
        let errno = 0;
        if (!this.exp.writable) errno = Errno.EPERM;
        else if ((flags & ~fua) !== 0) errno = Errno.EINVAL;
        else if (length > this.limits.maxPayload) errno = Errno.EINVAL;
        else if (!inRange) errno = Errno.ENOSPC;
        this.pCookieHi = cHi;
        this.pCookieLo = cLo;
        if (errno !== 0) {
          // Keep the stream in step: read and drop the payload, then refuse.
          if (length > this.limits.drainLimit) return this.violation(`write of ${length} bytes is past the drain limit`);
          this.pErrno = errno;
          this.drainLeft = length;
          this.pCharge = REPLY_BOUND; // the payload is dropped as it arrives; only the reply is held
          this.charge(REPLY_BOUND);
          this.state = DRAIN;
          return;
        }
        if (length === 0) return this.ok(type, cHi, cLo);
        this.pCharge = length + REPLY_BOUND;
        this.begin(this.pCharge);
        this.pFlags = flags;
        this.pOffset = offset;
        this.pLength = length;
        this.got = 0;
        this.state = PAYLOAD;
        return;
      }
      case Cmd.DISC:
        void this.stop();
        return;
      case Cmd.FLUSH:
        if ((flags & ~fua) !== 0 || offset !== 0 || length !== 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'FLUSH takes no flags, offset or length');
        this.begin(REPLY_BOUND);
        void this.flush(cHi, cLo);
        return;
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES: {
        const trim = type === Cmd.TRIM;
        if (!this.exp.writable) return this.fail(type, cHi, cLo, Errno.EPERM, 'the export is read-only');
        const advertised = trim ? TFlag.SEND_TRIM : TFlag.SEND_WRITE_ZEROES;
        if ((this.flags & advertised) === 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'command not advertised');
        const allowed = fua | (trim ? 0 : CFlag.NO_HOLE | ((this.flags & TFlag.SEND_FAST_ZERO) !== 0 ? CFlag.FAST_ZERO : 0));
        if ((flags & ~allowed) !== 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'unsupported flags');
        if (!inRange) return this.fail(type, cHi, cLo, trim ? Errno.EINVAL : Errno.ENOSPC, outside(trim ? 'trim' : 'write zeroes'));
        if (length === 0) return this.ok(type, cHi, cLo);
        this.begin(REPLY_BOUND);
        void this.zero(trim, cHi, cLo, flags, offset, length);
        return;
      }
      case Cmd.CACHE:
        // Advisory: the page cache already does what a prefetch would.
        if ((flags & ~fua) !== 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'unsupported flags');
        if (!inRange) return this.fail(type, cHi, cLo, Errno.EINVAL, outside('cache'));
        return this.ok(type, cHi, cLo);
      case Cmd.BLOCK_STATUS:
        if (!this.structured || this.context === null) return this.fail(type, cHi, cLo, Errno.EINVAL, 'no metadata context was selected');
        if ((flags & ~(fua | CFlag.REQ_ONE)) !== 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'unsupported flags');
        if (!inRange) return this.fail(type, cHi, cLo, Errno.EINVAL, outside('block status'));
        if (length === 0) return this.fail(type, cHi, cLo, Errno.EINVAL, 'block status of 0 bytes');
        this.begin(this.blockStatusCharge);
        void this.blockStatus(cHi, cLo, flags, offset, length);
        return;
      default:
        return this.fail(type, cHi, cLo, Errno.EINVAL, 'unknown command');
    }
  }

  /** A BLOCK_STATUS reply: its chunk header, context id and up to maxExtents extents. */
  private get blockStatusCharge(): number {
    return REPLY_BOUND + 8 * this.limits.maxExtents;
  }

  /** A request starts, charged `bytes` (its reply hands the charge on to the bytes it sends). */
  private begin(bytes: number): void {
    this.inFlight++;
    this.charge(bytes);
  }

  /** A request has finished (its reply is queued, or dropped with the connection). */
  private end(): void {
    this.inFlight--;
    if (this.stopping) {
      if (this.inFlight === 0) void this.finish();
    } else if (this.paused) this.pump();
  }

  private charge(n: number): void {
    this.bytesHeld += n;
    this.budget.take(n);
  }

  private release(n: number): void {
    this.bytesHeld -= n;
    this.budget.give(n);
  }

  private async read(cHi: number, cLo: number, flags: number, offset: number, length: number, charge: number): Promise<void> {
    try {
      const dev = this.exp.device;
      let out: Buffer;
      if (!this.structured) {
        out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + length);
        await dev.read(offset, out.subarray(SIMPLE_REPLY_SIZE));
        simpleHeader(out, 0, cHi, cLo);
      } else if ((flags & CFlag.DF) !== 0 || !this.sparseReads) {
        out = await this.readData(cHi, cLo, offset, length);
      } else {
        out = await this.readSparse(cHi, cLo, offset, length);
      }
      this.send(out, charge);
    } catch (e) {
      this.failWith(Cmd.READ, cHi, cLo, e, charge);
    } finally {
      this.end();
    }
  }

  /** One OFFSET_DATA chunk (with DONE) holding the whole range, read straight into the reply. */
  private async readData(cHi: number, cLo: number, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 8 + length);
    await this.exp.device.read(offset, out.subarray(CHUNK_HEADER_SIZE + 8));
    chunkHeader(out, 0, REPLY_FLAG_DONE, Chunk.OFFSET_DATA, cHi, cLo, 8 + length);
    putU64(out, offset, CHUNK_HEADER_SIZE);
    return out;
  }

  /**
   * A READ answered from block status: OFFSET_HOLE chunks for ranges that read as zeros, data
   * chunks (read in parallel, straight into the reply) for the rest; DONE on the last chunk. When
   * the holes are too small to make that shorter than one data chunk, one data chunk it is (so a
   * READ reply never passes its length + 28 bytes).
   */
  private async readSparse(cHi: number, cLo: number, offset: number, length: number): Promise<Buffer> {
    const end = offset + length;
    const extents = await this.exp.device.blockStatus(offset, length);
    const first = extents[0];
    // Most reads lie inside one data extent: one data chunk.
    if (first && first.type === 'data' && first.offset <= offset && first.offset + first.length >= end) {
      return this.readData(cHi, cLo, offset, length);
    }
    // Segments as [start, length, hole] triples, adjacent ones of one kind merged.
    const segs: number[] = [];
    let pos = offset;
    const add = (start: number, n: number, hole: number): void => {
      const k = segs.length;
      if (k > 0 && segs[k - 1] === hole) segs[k - 2]! += n;
      else segs.push(start, n, hole);
    };
    for (const e of extents) {
      if (pos >= end) break;
      const eEnd = Math.min(e.offset + e.length, end);
      if (eEnd <= pos) continue;
      if (e.offset > pos) {
        add(pos, e.offset - pos, 0); // a gap the device did not describe: read it
        pos = e.offset;
      }
      add(pos, eEnd - pos, this.readsAsZero(e) ? 1 : 0);
      pos = eEnd;
    }
    if (pos < end) add(pos, end - pos, 0);

    let total = 0;
    for (let i = 0; i < segs.length; i += 3) total += segs[i + 2] === 1 ? CHUNK_HEADER_SIZE + 12 : CHUNK_HEADER_SIZE + 8 + segs[i + 1]!;
    if (total > CHUNK_HEADER_SIZE + 8 + length) return this.readData(cHi, cLo, offset, length);
    const out = Buffer.allocUnsafe(total);
    const reads: Promise<void>[] = [];
    let at = 0;
    for (let i = 0; i < segs.length; i += 3) {
      const start = segs[i]!;
      const n = segs[i + 1]!;
      const last = i + 3 === segs.length ? REPLY_FLAG_DONE : 0;
      if (segs[i + 2] === 1) {
        chunkHeader(out, at, last, Chunk.OFFSET_HOLE, cHi, cLo, 12);
        putU64(out, start, at + CHUNK_HEADER_SIZE);
        out.writeUInt32BE(n, at + CHUNK_HEADER_SIZE + 8);
        at += CHUNK_HEADER_SIZE + 12;
      } else {
        chunkHeader(out, at, last, Chunk.OFFSET_DATA, cHi, cLo, 8 + n);
        putU64(out, start, at + CHUNK_HEADER_SIZE);
        const body = at + CHUNK_HEADER_SIZE + 8;
        reads.push(this.exp.device.read(start, out.subarray(body, body + n)));
        at = body + n;
      }
    }
    await Promise.all(reads);
    return out;
  }

  private readsAsZero(e: Extent): boolean {
    return (this.extentStatus(e) & STATE_ZERO) !== 0;
  }

  /**
   * An extent's base:allocation flags, as qemu-nbd gives them: data 0; zeros with no storage
   * behind them HOLE|ZERO, zeros that keep their storage (a fixed disk's) ZERO; unallocated
   * ranges that would be a parent's data (a differencing image opened alone) 0.
   */
  private extentStatus(e: Extent): number {
    if (e.type === 'data' || (e.type === 'unallocated' && !this.exp.unallocatedIsZero)) return 0;
    return e.stored ? STATE_ZERO : STATE_HOLE | STATE_ZERO;
  }

  private async write(cHi: number, cLo: number, flags: number, offset: number, data: Buffer, charge: number): Promise<void> {
    try {
      const w = this.exp.writable!;
      const fua = (flags & CFlag.FUA) !== 0;
      await w.write(offset, data, fua && w.can.fua ? { fua: true } : undefined);
      if (fua && !w.can.fua) await w.flush();
      this.dirty = true;
      this.simple(cHi, cLo, 0, charge);
    } catch (e) {
      this.failWith(Cmd.WRITE, cHi, cLo, e, charge);
    } finally {
      this.end();
    }
  }

  private async flush(cHi: number, cLo: number): Promise<void> {
    try {
      this.dirty = false;
      await this.exp.device.flush();
      this.simple(cHi, cLo, 0, REPLY_BOUND);
    } catch (e) {
      this.dirty = true;
      this.failWith(Cmd.FLUSH, cHi, cLo, e, REPLY_BOUND);
    } finally {
      this.end();
    }
  }

  private async zero(trim: boolean, cHi: number, cLo: number, flags: number, offset: number, length: number): Promise<void> {
    try {
      const w = this.exp.writable!;
      if (trim) await w.discard(offset, length);
      else await w.writeZeroes(offset, length, { mayDiscard: (flags & CFlag.NO_HOLE) === 0, fast: (flags & CFlag.FAST_ZERO) !== 0 });
      if ((flags & CFlag.FUA) !== 0) await w.flush();
      this.dirty = true;
      this.simple(cHi, cLo, 0, REPLY_BOUND);
    } catch (e) {
      this.failWith(trim ? Cmd.TRIM : Cmd.WRITE_ZEROES, cHi, cLo, e, REPLY_BOUND);
    } finally {
      this.end();
    }
  }

  /**
   * One BLOCK_STATUS chunk for base:allocation (flags by `extentStatus`). Extents are clamped to the request; with
   * REQ_ONE exactly one is sent.
   */
  private async blockStatus(cHi: number, cLo: number, flags: number, offset: number, length: number): Promise<void> {
    try {
      const dev = this.exp.device;
      const end = offset + length;
      const extents: Extent[] = dev.can.extents ? await dev.blockStatus(offset, length) : [{ offset, length, type: 'data' }];
      const max = (flags & CFlag.REQ_ONE) !== 0 ? 1 : this.limits.maxExtents;
      const pairs: number[] = []; // [length, status] per extent
      let pos = offset;
      const add = (n: number, status: number): boolean => {
        const k = pairs.length;
        if (k > 0 && pairs[k - 1] === status) pairs[k - 2]! += n;
        else if (k / 2 >= max) return false;
        else pairs.push(n, status);
        pos += n;
        return true;
      };
      for (const e of extents) {
        if (pos >= end) break;
        const eEnd = Math.min(e.offset + e.length, end);
        if (eEnd <= pos) continue;
        if (e.offset > pos && !add(e.offset - pos, 0)) break;
        const status = this.extentStatus(e);
        if (!add(eEnd - pos, status)) break;
      }
      if (pairs.length === 0) pairs.push(length, 0);
      const n = pairs.length / 2;
      const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 4 + 8 * n);
      chunkHeader(out, 0, REPLY_FLAG_DONE, Chunk.BLOCK_STATUS, cHi, cLo, 4 + 8 * n);
      out.writeUInt32BE(this.context!, CHUNK_HEADER_SIZE);
      for (let i = 0; i < pairs.length; i++) out.writeUInt32BE(pairs[i]!, CHUNK_HEADER_SIZE + 4 + 4 * i);
      this.send(out, this.blockStatusCharge);
    } catch (e) {
      this.failWith(Cmd.BLOCK_STATUS, cHi, cLo, e, this.blockStatusCharge);
    } finally {
      this.end();
    }
  }

  // Replies: `charged` is what the request was charged (0 for a refusal answered at once, which
  // is charged here, within the step that read its header).

  private ok(type: number, cHi: number, cLo: number): void {
    if (this.structured && type === Cmd.READ) {
      const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
      chunkHeader(out, 0, REPLY_FLAG_DONE, Chunk.NONE, cHi, cLo, 0);
      this.send(out, 0);
    } else this.simple(cHi, cLo, 0, 0);
  }

  private failWith(type: number, cHi: number, cLo: number, e: unknown, charged: number): void {
    const errno = errnoOf(e);
    if (errno === Errno.EIO) this.onError(e);
    this.fail(type, cHi, cLo, errno, e instanceof Error ? e.message : String(e), charged);
  }

  /**
   * Refuse a request. READ and BLOCK_STATUS answers must be structured once structured replies
   * are on; the others may use simple replies, which every client reads.
   */
  private fail(type: number, cHi: number, cLo: number, errno: number, message: string, charged = 0): void {
    if (this.structured && (type === Cmd.READ || type === Cmd.BLOCK_STATUS)) {
      const msg = utf8Prefix(message, MAX_MESSAGE_BYTES);
      const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 6 + msg.length);
      chunkHeader(out, 0, REPLY_FLAG_DONE, Chunk.ERROR, cHi, cLo, 6 + msg.length);
      out.writeUInt32BE(errno, CHUNK_HEADER_SIZE);
      out.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
      msg.copy(out, CHUNK_HEADER_SIZE + 6);
      this.send(out, charged);
    } else this.simple(cHi, cLo, errno, charged);
  }

  private simple(cHi: number, cLo: number, errno: number, charged: number): void {
    const out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    simpleHeader(out, errno, cHi, cLo);
    this.send(out, charged);
  }

  /**
   * Queue a whole reply; from here on the request's charge is the reply's size, until the socket
   * has written it. Replies finished in one turn of the event loop go out together in one writev
   * when the turn ends: one system call for many small replies.
   */
  private send(out: Buffer, charged: number): void {
    if (this.closed || this.socket.destroyed) {
      this.release(charged);
      return;
    }
    if (out.length > charged) this.charge(out.length - charged);
    else this.release(charged - out.length);
    this.outQueue.push(out);
    this.outBytes += out.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushOut);
    }
  }

  private readonly flushOut = (): void => {
    this.flushScheduled = false;
    const q = this.outQueue;
    const n = this.outBytes;
    this.outQueue = [];
    this.outBytes = 0;
    if (this.closed || this.socket.destroyed) {
      this.release(n);
      return;
    }
    if (q.length === 0) return;
    // The callback comes once the kernel has the bytes, or once the socket is destroyed.
    if (q.length === 1) this.socket.write(q[0]!, () => this.written(n));
    else {
      this.socket.cork();
      for (const b of q) this.socket.write(b, () => this.written(b.length));
      this.socket.uncork();
    }
    if (this.stopping && this.inFlight === 0 && this.finishing) this.endSocket();
    else if (this.paused) this.pump();
  };

  private written(n: number): void {
    this.lastActivity = performance.now();
    this.release(n);
    if (this.paused && !this.stopping) this.pump();
  }

  /** A message we cannot step over: hard disconnect (requests in flight still finish). */
  private violation(why: string): void {
    this.onError(new ProtocolViolation(why));
    this.closed = true;
    this.socket.destroy();
    void this.stop();
  }

  /** Every request is answered: flush if this connection wrote since its last flush, then close. */
  private async finish(): Promise<void> {
    if (this.finishing) return;
    this.finishing = true;
    // Clients such as fio and nbdcopy (without --flush) never send FLUSH: commit their writes.
    if (this.dirty && this.exp.writable) {
      try {
        await this.exp.device.flush();
      } catch (e) {
        this.onError(e);
      }
    }
    // Replies still queued go out first (flushOut ends the socket after them).
    if (!this.flushScheduled) this.endSocket();
    this.resolveFinished();
  }

  private endSocket(): void {
    if (!this.closed && !this.socket.destroyed) this.socket.end();
  }
}

/** At most `max` bytes of `text` in UTF-8, cut at a character boundary. */
function utf8Prefix(text: string, max: number): Buffer {
  const b = Buffer.from(text.length > max ? text.slice(0, max) : text);
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // back off to the start of a character
  return b.subarray(0, end);
}

function simpleHeader(out: Buffer, errno: number, cHi: number, cLo: number): void {
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(errno, 4);
  out.writeUInt32BE(cHi, 8);
  out.writeUInt32BE(cLo, 12);
}

function chunkHeader(out: Buffer, at: number, flags: number, type: number, cHi: number, cLo: number, length: number): void {
  out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  out.writeUInt16BE(flags, at + 4);
  out.writeUInt16BE(type, at + 6);
  out.writeUInt32BE(cHi, at + 8);
  out.writeUInt32BE(cLo, at + 12);
  out.writeUInt32BE(length, at + 16);
}
