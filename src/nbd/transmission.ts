/**
 * The transmission phase of one connection: flow control and dispatch. Request headers are read
 * from the input as it arrives and decoded (decode.ts); each request is started at once with the
 * device capability it needs (execute.ts), many in flight, answered in whatever order they
 * finish; replies (encode.ts) are queued whole, so they never interleave inside a message.
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
import type { NbdExport } from './export.js';
import type { InputBuffer } from './input.js';
import { ProtocolViolation, type Negotiated } from './handshake.js';
import { changesDisk, decodeRequest, type Refusal, type Request, type RequestRules } from './decode.js';
import { errorReply, successReply } from './encode.js';
import * as execute from './execute.js';
import { Cmd, Errno, REQUEST_HEADER_SIZE, errnoOf } from './protocol.js';
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


/**
 * Bytes charged to every request for its reply beyond the payload: a simple reply (16), a data
 * chunk's header and offset (28), an error chunk (26 + a message of at most MAX_MESSAGE_BYTES) all fit.
 */
export const REPLY_BOUND = 256;

export class Transmission {
  private readonly exp: NbdExport;
  private readonly rules: RequestRules;
  private readonly form: execute.ReplyForm;
  /** What a BLOCK_STATUS request is charged: its chunk with up to maxExtents extents. */
  private readonly blockStatusCharge: number;

  /** The WRITE whose payload is being gathered. */
  private gathering: Request | null = null;
  private parts: Buffer[] = [];
  private got = 0;
  /** The refused WRITE whose payload is being read and dropped. */
  private draining: Refusal | null = null;
  private drainLeft = 0;
  /** What the WRITE being gathered or drained was charged. */
  private pCharge = 0;

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
    const context = negotiated.allocationContext;
    this.rules = { size: this.exp.size, flags: negotiated.flags, context, maxPayload: limits.maxPayload, drainLimit: limits.drainLimit };
    this.form = { structured: negotiated.structured, unallocatedIsZero: this.exp.unallocatedIsZero, context, maxExtents: limits.maxExtents };
    this.blockStatusCharge = REPLY_BOUND + execute.blockStatusBound(this.form);
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
    if (this.stopping || this.inFlight > 0 || this.midRequest || this.input.available > 0 || this.bytesHeld > 0) return null;
    return this.lastActivity;
  }

  /**
   * Why the client, rather than the server, is holding this connection up: replies it does not
   * read, or a request it started and does not finish sending. Null when it is not (idle, or
   * waiting for the device or the server's budget).
   */
  stalled(): 'replies' | 'request' | null {
    if (this.socket.writableLength > 0) return 'replies';
    if (!this.stopping && !this.paused && (this.midRequest || this.input.available > 0)) return 'request';
    return null;
  }

  /** A WRITE's payload is being gathered or drained. */
  private get midRequest(): boolean {
    return this.gathering !== null || this.draining !== null;
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
      if (this.midRequest) {
        // A write whose payload will never be complete (or be drained): give back its charge.
        if (this.gathering) this.inFlight--;
        this.gathering = null;
        this.draining = null;
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
      const g = this.gathering;
      if (g) {
        if (input.available === 0) return this.needInput();
        const piece = input.takeSome(g.length - this.got);
        this.parts.push(piece);
        this.got += piece.length;
        if (this.got === g.length) {
          this.gathering = null;
          const data = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, g.length);
          this.parts = [];
          void this.settle(g, this.pCharge, execute.write(this.exp, g, data));
        }
        continue;
      }
      const d = this.draining;
      if (d) {
        this.drainLeft -= input.skip(this.drainLeft);
        if (this.drainLeft > 0) return this.needInput();
        this.draining = null;
        this.refuse(d, this.pCharge);
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

  /** Decode one request header and act on it. */
  private request(h: Buffer): void {
    const d = decodeRequest(h, this.rules);
    switch (d.kind) {
      case 'request':
        return this.dispatch(d);
      case 'done':
        return this.send(successReply(d.command, d.cookie, this.form.structured), 0);
      case 'refusal':
        if (d.drain === 0) return this.refuse(d, 0);
        // Keep the stream in step: read and drop the payload, then refuse. Only the reply is held.
        this.draining = d;
        this.drainLeft = d.drain;
        this.pCharge = REPLY_BOUND;
        this.charge(REPLY_BOUND);
        return;
      case 'violation':
        return this.violation(d.message);
    }
  }

  /**
   * Start a request: charge what it can come to hold, and run it on the device capability it
   * needs (see execute.ts). A WRITE first gathers its payload.
   */
  private dispatch(req: Request): void {
    const dev = this.exp.device;
    switch (req.command) {
      case Cmd.READ:
        return this.start(req, req.length + REPLY_BOUND, execute.read(dev, req, this.form));
      case Cmd.WRITE:
        this.pCharge = req.length + REPLY_BOUND;
        this.begin(this.pCharge);
        this.gathering = req;
        this.got = 0;
        return;
      case Cmd.FLUSH:
        this.dirty = false;
        return this.start(req, REPLY_BOUND, execute.flush(dev, req));
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
        return this.start(req, REPLY_BOUND, execute.zero(this.exp, req));
      case Cmd.BLOCK_STATUS:
        return this.start(req, this.blockStatusCharge, execute.blockStatus(dev, req, this.form));
      case Cmd.CACHE:
        // Advisory: the page cache already does what a prefetch would.
        return this.send(successReply(req.command, req.cookie, this.form.structured), 0);
      case Cmd.DISC:
        void this.stop();
        return;
    }
  }

  /** A request starts, charged `charge`, with its work under way. */
  private start(req: Request, charge: number, work: Promise<Buffer>): void {
    this.begin(charge);
    void this.settle(req, charge, work);
  }

  /** Send a request's reply, or its error; a write marks the connection dirty, a failed flush too. */
  private async settle(req: Request, charge: number, reply: Promise<Buffer>): Promise<void> {
    try {
      const out = await reply;
      if (changesDisk(req.command)) this.dirty = true;
      this.send(out, charge);
    } catch (e) {
      if (req.command === Cmd.FLUSH) this.dirty = true;
      const errno = errnoOf(e);
      if (errno === Errno.EIO) this.onError(e);
      this.send(errorReply(req.command, req.cookie, errno, e instanceof Error ? e.message : String(e), this.form.structured), charge);
    } finally {
      this.end();
    }
  }

  private refuse(r: Refusal, charged: number): void {
    this.send(errorReply(r.command, r.cookie, r.errno, r.message, this.form.structured), charged);
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

  /**
   * Queue a whole reply; from here on the request's charge is the reply's size, until the socket
   * has written it. Replies finished in one turn of the event loop go out together in one writev
   * when the turn ends: one system call for many small replies. `charged` is what the request
   * was charged (0 for a reply sent in the step that read its header: charged here).
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
