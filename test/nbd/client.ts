// A small hand-written NBD client for the protocol tests: raw bytes in and out, no cleverness,
// so the tests can send anything (including what a well-behaved client never would).
import { createConnection, type Socket } from 'node:net';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_MAGIC = 0x67446698;
export const CHUNK_MAGIC = 0x668e33ef;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, PEEK_EXPORT: 4, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11 };
export const REP = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 };
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 };
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const CF = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 0x10 };
export const TF = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 0x20, SEND_WRITE_ZEROES: 0x40, SEND_DF: 0x80, CAN_MULTI_CONN: 0x100, SEND_CACHE: 0x400, SEND_FAST_ZERO: 0x800 };
export const CHUNK = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001 };
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95 };

/** Where to connect: a Unix socket path, or a TCP port (on 127.0.0.1 unless told). */
export type Where = { path: string } | { port: number; host?: string };

/** One option reply of the handshake. */
export interface OptionReply {
  magic: bigint;
  opt: number;
  type: number;
  data: Buffer;
}

/** One structured reply chunk. */
export interface Chunk {
  flags: number;
  type: number;
  payload: Buffer;
}

/** A request's whole reply: `data` for a simple READ, `chunks` for structured replies. */
export interface Reply {
  error: number;
  data?: Buffer | undefined;
  chunks: Chunk[];
  simple?: boolean;
  message?: string | undefined;
}

/** The fields of a request header (and its payload) that a test may set, wrong ones included. */
export interface RequestOptions {
  flags?: number;
  offset?: number | bigint;
  length?: number;
  data?: Buffer | Uint8Array;
  cookie?: number | bigint;
  magic?: number;
}

/** A BLOCK_STATUS answer: its error, or the context id, the extents and the number of chunks. */
export type BlockStatusReply =
  | { error: number; contextId?: undefined; extents?: undefined; chunks?: undefined }
  | { error?: undefined; contextId: number; extents: { length: number; flags: number }[]; chunks: number };

/** What INFO replies said, as parseInfos reads them. */
export interface Infos {
  exportLength?: number;
  size?: number;
  flags?: number;
  name?: string;
  description?: string;
  /** Minimum, preferred and maximum block size, then the reply's length. */
  blockSize?: [number, number, number, number];
}

interface Pending {
  type: number;
  length: number;
  resolve(r: Reply): void;
  reject(e: unknown): void;
  chunks: Chunk[];
}

interface Waiter {
  n: number;
  resolve(b: Buffer): void;
  reject(e: Error): void;
}

export class NbdTestClient {
  readonly socket: Socket;
  chunks: Buffer[];
  have: number;
  waiter: Waiter | null;
  ended: boolean;
  readonly closed: Promise<unknown>;
  cookie: bigint;
  readonly pending: Map<bigint, Pending>;
  structured: boolean;
  loop?: Promise<void>;

  constructor(socket: Socket) {
    this.socket = socket;
    this.chunks = [];
    this.have = 0;
    this.waiter = null;
    this.ended = false;
    this.closed = new Promise((r) => socket.once('close', r));
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.wakeReader();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wakeReader();
    });
    socket.on('error', () => {
      this.ended = true;
      this.wakeReader();
    });
    this.cookie = 1n;
    this.pending = new Map();
    this.structured = false;
  }

  /** Connect to { path } or { port, host }. */
  static connect(where: Where): Promise<NbdTestClient> {
    return new Promise((resolve, reject) => {
      const s = 'path' in where ? createConnection(where.path) : createConnection(where.port, where.host ?? '127.0.0.1');
      s.once('connect', () => resolve(new NbdTestClient(s)));
      s.once('error', reject);
    });
  }

  wakeReader() {
    if (this.waiter && (this.have >= this.waiter.n || this.ended)) {
      const w = this.waiter;
      this.waiter = null;
      if (this.have >= w.n) w.resolve(this.take(w.n));
      else w.reject(new Error(`connection ended with ${this.have} of ${w.n} bytes`));
    }
  }

  take(n: number): Buffer {
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const c = this.chunks[0]!;
      if (c.length <= need) {
        parts.push(c);
        need -= c.length;
        this.chunks.shift();
      } else {
        parts.push(c.subarray(0, need));
        this.chunks[0] = c.subarray(need);
        need = 0;
      }
    }
    this.have -= n;
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Exactly n bytes; rejects when the server closes first. */
  read(n: number): Promise<Buffer> {
    if (this.have >= n) return Promise.resolve(this.take(n));
    if (this.ended) return Promise.reject(new Error(`connection ended with ${this.have} of ${n} bytes`));
    return new Promise((resolve, reject) => (this.waiter = { n, resolve, reject }));
  }

  /** Resolves true if the server closes the connection within `ms`, false otherwise. */
  async closedWithin(ms = 2000): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.closed.then(() => true), new Promise<boolean>((res) => (t = setTimeout(() => res(false), ms)))]);
    clearTimeout(t);
    return r;
  }

  write(buf: Uint8Array): void {
    this.socket.write(buf);
  }

  destroy() {
    this.socket.destroy();
  }

  // ---- handshake ----

  async greeting() {
    const g = await this.read(18);
    return { magic: g.readBigUInt64BE(0), optMagic: g.readBigUInt64BE(8), flags: g.readUInt16BE(16) };
  }

  sendFlags(flags: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags >>> 0);
    this.write(b);
  }

  /** Greeting, then client flags FIXED_NEWSTYLE|NO_ZEROES (or those given). */
  async start(flags = 3) {
    const g = await this.greeting();
    this.sendFlags(flags);
    return g;
  }

  sendOption(opt: number, data: Buffer = Buffer.alloc(0), { magic = IHAVEOPT, length = data.length }: { magic?: bigint; length?: number } = {}): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(magic, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    const length = h.readUInt32BE(16);
    return { magic: h.readBigUInt64BE(0), opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) };
  }

  /** Send an option and collect its replies up to the final one (ACK or an error). */
  async option(opt: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(opt, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      replies.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return replies;
    }
  }

  async structuredReplies(): Promise<OptionReply> {
    const r = (await this.option(OPT.STRUCTURED_REPLY))[0]!;
    if (r.type === REP.ACK) this.structured = true;
    return r;
  }

  /** SET/LIST_META_CONTEXT with the given queries; returns the replies. */
  metaContext(opt: number, name: string, queries: string[]): Promise<OptionReply[]> {
    return this.option(opt, contextData(name, queries));
  }

  /**
   * A usual negotiation: structured replies, base:allocation, GO asking for NAME, DESCRIPTION
   * and BLOCK_SIZE. Returns { size, flags, contextId, infos }.
   */
  async negotiate({ name = '', structured = true, context = true, flags = 3 }: { name?: string; structured?: boolean; context?: boolean; flags?: number } = {}): Promise<{ size: number; flags: number; contextId: number | null; infos: Infos }> {
    await this.start(flags);
    let contextId: number | null = null;
    if (structured) {
      const r = await this.structuredReplies();
      if (r.type !== REP.ACK) throw new Error(`STRUCTURED_REPLY refused: ${r.type}`);
      if (context) {
        const rs = await this.metaContext(OPT.SET_META_CONTEXT, name, ['base:allocation']);
        const m = rs.find((x) => x.type === REP.META_CONTEXT);
        if (m) contextId = m.data.readUInt32BE(0);
      }
    }
    const rs = await this.option(OPT.GO, infoData(name, [INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
    const last = rs[rs.length - 1]!;
    if (last.type !== REP.ACK) throw new Error(`GO refused: 0x${last.type.toString(16)} ${last.data}`);
    const infos = parseInfos(rs);
    if (infos.size === undefined || infos.flags === undefined) throw new Error('GO acknowledged without an EXPORT info');
    this.startReplyLoop();
    return { size: infos.size, flags: infos.flags, contextId, infos };
  }

  // ---- transmission ----

  /** Send a request; returns its cookie. */
  send(type: number, { flags = 0, offset = 0, length, data, cookie, magic = REQUEST_MAGIC }: RequestOptions = {}): number | bigint {
    const h = Buffer.alloc(28);
    const c = cookie ?? this.cookie++;
    h.writeUInt32BE(magic, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt.asUintN(64, BigInt(c)), 8);
    h.writeBigUInt64BE(BigInt.asUintN(64, BigInt(offset)), 16);
    const len = length ?? (data ? data.length : 0);
    h.writeUInt32BE(len, 24);
    this.write(data ? Buffer.concat([h, data]) : h);
    return c;
  }

  /**
   * A request and its whole reply: { error, data (simple READ), chunks [{ flags, type, payload }] }.
   * Replies are matched by cookie, so many may be in flight.
   */
  request(type: number, opts: RequestOptions = {}): Promise<Reply> {
    const cookie = opts.cookie ?? this.cookie++;
    const p = new Promise<Reply>((resolve, reject) => this.pending.set(BigInt.asUintN(64, BigInt(cookie)), { type, length: opts.length ?? opts.data?.length ?? 0, resolve, reject, chunks: [] }));
    this.send(type, { ...opts, cookie });
    return p;
  }

  startReplyLoop(): void {
    if (this.loop) return;
    this.loop = (async () => {
      try {
        for (;;) {
          const m = (await this.read(4)).readUInt32BE(0);
          if (m === SIMPLE_MAGIC) {
            const h = await this.read(12);
            const error = h.readUInt32BE(0);
            const cookie = h.readBigUInt64BE(4);
            const p = this.pending.get(cookie);
            if (!p) throw new Error(`simple reply for unknown cookie ${cookie}`);
            let data: Buffer | undefined;
            if (error === 0 && p.type === CMD.READ) data = await this.read(p.length);
            this.pending.delete(cookie);
            p.resolve({ error, data, chunks: [], simple: true });
          } else if (m === CHUNK_MAGIC) {
            const h = await this.read(16);
            const flags = h.readUInt16BE(0);
            const type = h.readUInt16BE(2);
            const cookie = h.readBigUInt64BE(4);
            const payload = await this.read(h.readUInt32BE(12));
            const p = this.pending.get(cookie);
            if (!p) throw new Error(`chunk for unknown cookie ${cookie}`);
            p.chunks.push({ flags, type, payload });
            if (flags & 1) {
              this.pending.delete(cookie);
              const err = p.chunks.find((c) => c.type & 0x8000);
              p.resolve({ error: err ? err.payload.readUInt32BE(0) : 0, chunks: p.chunks, message: err ? err.payload.subarray(6, 6 + err.payload.readUInt16BE(4)).toString() : undefined });
            }
          } else throw new Error(`bad reply magic 0x${m.toString(16)}`);
        }
      } catch (e) {
        for (const p of this.pending.values()) p.reject(e);
        this.pending.clear();
      }
    })();
  }

  /** READ and assemble the bytes from DATA and HOLE chunks (or the simple reply). */
  async readBytes(offset: number, length: number, flags = 0): Promise<{ bytes: Buffer; chunks: Chunk[] }> {
    const r = await this.request(CMD.READ, { offset, length, flags });
    if (r.error) throw Object.assign(new Error(`READ failed: ${r.error} ${r.message ?? ''}`), { errno: r.error });
    if (r.simple) return { bytes: r.data!, chunks: [] };
    const out = Buffer.alloc(length, 0xee);
    let covered = 0;
    for (const c of r.chunks) {
      if (c.type === CHUNK.OFFSET_DATA) {
        const at = Number(c.payload.readBigUInt64BE(0)) - offset;
        c.payload.copy(out, at, 8);
        covered += c.payload.length - 8;
      } else if (c.type === CHUNK.OFFSET_HOLE) {
        const at = Number(c.payload.readBigUInt64BE(0)) - offset;
        const n = c.payload.readUInt32BE(8);
        out.fill(0, at, at + n);
        covered += n;
      }
    }
    if (covered !== length) throw new Error(`READ chunks cover ${covered} of ${length} bytes`);
    return { bytes: out, chunks: r.chunks };
  }

  /** BLOCK_STATUS: [{ length, flags }] and the context id. */
  async blockStatus(offset: number, length: number, flags = 0): Promise<BlockStatusReply> {
    const r = await this.request(CMD.BLOCK_STATUS, { offset, length, flags });
    if (r.error) return { error: r.error };
    const c = r.chunks.find((x) => x.type === CHUNK.BLOCK_STATUS);
    if (!c) throw new Error('BLOCK_STATUS reply without a BLOCK_STATUS chunk');
    const extents = [];
    for (let i = 4; i < c.payload.length; i += 8) extents.push({ length: c.payload.readUInt32BE(i), flags: c.payload.readUInt32BE(i + 4) });
    return { contextId: c.payload.readUInt32BE(0), extents, chunks: r.chunks.length };
  }

  /** DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    this.send(CMD.DISC);
    this.socket.end();
    await this.closed;
  }
}

export function infoData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((v, i) => b.writeUInt16BE(v, 6 + n.length + 2 * i));
  return b;
}

export function contextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length);
  parts.push(head, n);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const q of queries) {
    const qb = Buffer.from(q);
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

/** INFO replies of an INFO/GO answer as { size, flags, name, description, blockSize }. */
export function parseInfos(replies: OptionReply[]): Infos {
  const out: Infos = {};
  for (const r of replies) {
    if (r.type !== REP.INFO) continue;
    const t = r.data.readUInt16BE(0);
    if (t === INFO.EXPORT) {
      out.exportLength = r.data.length;
      out.size = Number(r.data.readBigUInt64BE(2));
      out.flags = r.data.readUInt16BE(10);
    } else if (t === INFO.NAME) out.name = r.data.subarray(2).toString();
    else if (t === INFO.DESCRIPTION) out.description = r.data.subarray(2).toString();
    else if (t === INFO.BLOCK_SIZE) out.blockSize = [r.data.readUInt32BE(2), r.data.readUInt32BE(6), r.data.readUInt32BE(10), r.data.length];
  }
  return out;
}
