/**
 * An NBD server: exports block devices over TCP or a Unix socket (or any socket handed to
 * `handle`), with many connections and many requests in flight per connection.
 *
 * Every connection to an export uses the one device object given, so CAN_MULTI_CONN is honest
 * for our devices: there is no per-connection cache, reads on any connection see every completed
 * write, and a FLUSH (or FUA) on any connection commits every write completed before it on all
 * connections (VhdxImage.flush commits the shared BAT changes and fsyncs the one file).
 *
 * Places: at most `maxConnections` clients are in transmission at once; a place is claimed by GO
 * (or EXPORT_NAME). When none is free, a client idle for `idleTimeoutMs` is let go to make room,
 * else the GO gets ERR_POLICY with a message. Connections still in the handshake have their own
 * limit, `maxHandshakes`, and their own deadline. Every refusal and every client dropped for a
 * timeout is reported to onError as a ClientDropped.
 *
 * Shutdown (`close`): stop accepting, drop connections still in the handshake, stop reading new
 * requests, answer those in flight, flush writable devices, close the sockets. The devices stay
 * open: they belong to the caller.
 */
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { ExportTable, resolveExport, type NbdExportOptions, type NbdExportSpec } from './export.js';
import { ClientDropped, negotiate, ProtocolViolation, type HandshakeIo, type HandshakeLimits } from './handshake.js';
import { InputBuffer } from './input.js';
import { ByteBudget, REPLY_BOUND, Transmission, type TransmissionLimits } from './transmission.js';
import type { BlockDevice } from '../device/block-device.js';

const MiB = 1024 * 1024;

/** The server's limits on connections, handshakes, timeouts and memory; every one has a default. */
export interface NbdLimits {
  /**
   * Clients in transmission at once (default 16). A client that asks for an export (GO) when all
   * are taken gets ERR_POLICY with a message, unless one of them has been idle for idleTimeoutMs:
   * that one is disconnected to make room.
   */
  maxConnections?: number;
  /** Connections in the handshake at once (default 32); more are closed on accept and reported. */
  maxHandshakes?: number;
  /** Time a client has to finish the handshake, in ms (default 10000; 0: no limit). */
  handshakeTimeoutMs?: number;
  /**
   * A client in transmission with nothing in flight and nothing sent or read for this long, in ms,
   * is disconnected when the server is full and another client asks for a place (default 60000;
   * 0: never). A server that is not full keeps idle clients (a mounted device may be idle for hours).
   */
  idleTimeoutMs?: number;
  /**
   * A client that leaves a request half sent, or leaves its replies unread, with no progress at
   * all for this long, in ms, is disconnected (default 30000; 0: never). Its requests and the
   * memory its replies hold would otherwise stay forever.
   */
  ioTimeoutMs?: number;
  /** Longest option data (default 65536 bytes); longer options end the connection. */
  maxOptionLength?: number;
  /** Options per handshake (default 64). */
  maxOptions?: number;
  /** Largest READ/WRITE payload, advertised as the maximum block size (default 32 MiB). */
  maxPayload?: number;
  /** Oversized WRITEs up to this length are drained and refused with EINVAL; longer ones disconnect (default 128 MiB). */
  drainLimit?: number;
  /** Requests in flight per connection (default 128). */
  maxRequestsPerConnection?: number;
  /**
   * Bytes held per connection before its requests stop being read (default 64 MiB): payloads,
   * read buffers and replies not yet handed to the kernel.
   */
  maxBytesPerConnection?: number;
  /** Unsent reply bytes per connection before its requests stop being read (default 8 MiB). */
  maxOutputPerConnection?: number;
  /**
   * Bytes held by all connections together before requests stop being read (default 512 MiB),
   * counted as for maxBytesPerConnection. The total never passes this + maxPayload + 256.
   */
  maxBytesInFlight?: number;
  /** Most extents in one BLOCK_STATUS reply (default 1024, at most maxPayload / 8). */
  maxExtents?: number;
}

/** What the server holds now (see NbdServer.stats). */
export interface NbdServerStats {
  /** Connections open (in the handshake, in transmission, or closing). */
  connections: number;
  /** Clients holding a place in transmission. */
  clients: number;
  /** Bytes charged to requests and unwritten replies now, over all connections. */
  bytesHeld: number;
  /** The most bytesHeld has been since the server was made. */
  peakBytesHeld: number;
  /** The bound bytesHeld never passes: maxBytesInFlight + maxPayload + 256. */
  bytesBound: number;
}

/** Options of an {@link NbdServer}: its limits and where its errors go. */
export interface NbdServerOptions extends NbdLimits {
  /**
   * Told about device errors (EIO), protocol violations, failed flushes at disconnect, and every
   * client refused or dropped by a limit or a timeout (ClientDropped, with its reason).
   * Default: ignore them (the client gets its error reply).
   */
  onError?: (e: unknown) => void;
}

/** Where {@link NbdServer.listen} listens: a TCP port (default 10809) and host (default 127.0.0.1), or a Unix socket path. */
export type NbdListen = { port?: number; host?: string } | { path: string };

/** Options of {@link serveNbd}: the server's, the export's, and where to listen. */
export interface ServeOptions extends NbdServerOptions, NbdExportOptions {
  /** TCP port (default 10809; 0 picks a free one). Ignored with `path`. */
  port?: number;
  /** Address to bind (default 127.0.0.1). */
  host?: string;
  /** Listen on this Unix socket instead of TCP. A stale socket file left there is replaced. */
  path?: string;
}

/** The NBD port the server listens on when none is given (IANA's, 10809). */
export const DEFAULT_PORT = 10809;

/** Exports `exports` to every connection handed to it or accepted by `listen`. */
export class NbdServer {
  private readonly exports: ExportTable;
  private readonly hs: HandshakeLimits;
  private readonly tx: TransmissionLimits;
  private readonly budget: ByteBudget;
  private readonly maxConnections: number;
  private readonly maxHandshakes: number;
  private readonly timeouts: Timeouts;
  private readonly idleTimeoutMs: number;
  private readonly onError: (e: unknown) => void;
  private readonly conns = new Set<Connection>();
  /** Connections holding a place in transmission. */
  private readonly places = new Set<Connection>();
  private readonly servers: Server[] = [];
  private listening: { port: number; host: string } | { path: string } | null = null;
  private closing: Promise<void> | null = null;

  constructor(exports: NbdExportSpec | NbdExportSpec[], opts: NbdServerOptions = {}) {
    this.exports = new ExportTable((Array.isArray(exports) ? exports : [exports]).map(resolveExport));
    const maxPayload = opts.maxPayload ?? 32 * MiB;
    if (!(maxPayload >= 4096 && maxPayload <= 0x7fffffff && (maxPayload & (maxPayload - 1)) === 0)) {
      throw new TypeError(`maxPayload ${maxPayload} is not a power of two from 4096 to 1 GiB`);
    }
    this.hs = {
      maxOptionLength: opts.maxOptionLength ?? 65536,
      maxOptions: opts.maxOptions ?? 64,
      minimumBlockSize: 1,
      preferredBlockSize: 4096,
      maximumPayload: maxPayload,
    };
    this.tx = {
      maxPayload,
      drainLimit: Math.max(maxPayload, opts.drainLimit ?? 128 * MiB),
      maxRequests: opts.maxRequestsPerConnection ?? 128,
      maxBytes: opts.maxBytesPerConnection ?? 64 * MiB,
      maxOutput: opts.maxOutputPerConnection ?? 8 * MiB,
      maxExtents: opts.maxExtents ?? 1024,
    };
    if (!(this.tx.maxExtents >= 1 && this.tx.maxExtents <= maxPayload / 8)) {
      throw new TypeError(`maxExtents ${this.tx.maxExtents} is not from 1 to maxPayload / 8`);
    }
    this.budget = new ByteBudget(opts.maxBytesInFlight ?? 512 * MiB);
    this.maxConnections = opts.maxConnections ?? 16;
    this.maxHandshakes = opts.maxHandshakes ?? 32;
    this.timeouts = {
      handshake: millis('handshakeTimeoutMs', opts.handshakeTimeoutMs ?? 10_000),
      io: millis('ioTimeoutMs', opts.ioTimeoutMs ?? 30_000),
    };
    this.idleTimeoutMs = millis('idleTimeoutMs', opts.idleTimeoutMs ?? 60_000);
    this.onError = opts.onError ?? (() => undefined);
  }

  /** Connections open now (in the handshake or in transmission). */
  get connections(): number {
    return this.conns.size;
  }

  /** What the server holds now: connections, places taken, bytes charged and their bound. */
  get stats(): NbdServerStats {
    return {
      connections: this.conns.size,
      clients: this.places.size,
      bytesHeld: this.budget.used,
      peakBytesHeld: this.budget.peak,
      bytesBound: this.budget.limit + this.tx.maxPayload + REPLY_BOUND,
    };
  }

  /** The address `listen` bound, as an NBD URI for the first export (e.g. nbd://127.0.0.1:10809/). */
  get uri(): string {
    const l = this.listening;
    if (!l) throw new Error('the NBD server is not listening');
    const name = encodeURIComponent(this.exports.all[0]!.name);
    if ('path' in l) return `nbd+unix:///${name}?socket=${encodeURI(l.path)}`;
    const host = l.host.includes(':') ? `[${l.host}]` : l.host;
    return `nbd://${host}:${l.port}/${name}`;
  }

  /** Serve one connection (any connected socket). */
  handle(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    let negotiating = 0;
    for (const c of this.conns) if (c.negotiating) negotiating++;
    if (negotiating >= this.maxHandshakes) {
      socket.destroy();
      this.onError(new ClientDropped('TOO_MANY_HANDSHAKES', `connection closed at once: ${negotiating} clients are in the handshake already`));
      return;
    }
    const c: Connection = new Connection(socket, {
      exports: this.exports,
      hs: this.hs,
      tx: this.tx,
      budget: this.budget,
      timeouts: this.timeouts,
      onError: this.onError,
      admit: () => this.admit(c),
    });
    this.conns.add(c);
    void c.closed.then(() => {
      this.conns.delete(c);
      this.places.delete(c);
    });
  }

  /**
   * Give `c` a place in transmission: a free one, else the one of the client idle longest if
   * that is past the idle timeout. Returns null when `c` has its place, else why not.
   */
  private admit(c: Connection): string | null {
    if (this.places.size < this.maxConnections) {
      this.places.add(c);
      return null;
    }
    let idlest: Connection | null = null;
    let since = Infinity;
    for (const p of this.places) {
      const t = p.idleSince();
      if (t !== null && t < since) {
        since = t;
        idlest = p;
      }
    }
    const idle = performance.now() - since;
    if (idlest && this.idleTimeoutMs > 0 && idle >= this.idleTimeoutMs) {
      this.places.delete(idlest);
      this.onError(new ClientDropped('IDLE', `disconnected a client idle for ${Math.round(idle / 1000)} s to make room for a new one`));
      void idlest.shutdown();
      this.places.add(c);
      return null;
    }
    const n = this.maxConnections;
    const message = `the server is full (${n} client${n === 1 ? '' : 's'} connected); try again later`;
    this.onError(new ClientDropped('SERVER_FULL', `refused a client: ${message}`));
    return message;
  }

  /** Listen on a TCP port or a Unix socket; resolves once listening. */
  async listen(where: NbdListen = {}): Promise<void> {
    if (this.closing) throw new Error('the NBD server is closed');
    // allowHalfOpen: libnbd half-closes after DISC and still expects the replies in flight.
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (s) => this.handle(s));
    if ('path' in where) await removeStaleSocket(where.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (): void => {
        server.off('error', reject);
        resolve();
      };
      if ('path' in where) server.listen(where.path, done);
      else server.listen(where.port ?? DEFAULT_PORT, where.host ?? '127.0.0.1', done);
    });
    // Errors after listening (accept failures such as EMFILE) are reported, not thrown.
    server.on('error', (e) => this.onError(e));
    this.servers.push(server);
    if ('path' in where) this.listening = { path: where.path };
    else {
      const a = server.address() as AddressInfo;
      this.listening = { port: a.port, host: a.address };
    }
  }

  /**
   * Stop: no new connections, handshakes dropped, requests in flight answered, writable devices
   * flushed (unless `flush: false`), sockets closed. The devices are left open.
   */
  close(opts: { flush?: boolean } = {}): Promise<void> {
    this.closing ??= (async () => {
      const stopped = this.servers.map((s) => new Promise<void>((r) => s.close(() => r())));
      await Promise.all([...this.conns].map((c) => c.shutdown()));
      await Promise.all(stopped);
      if (opts.flush !== false) {
        for (const e of this.exports.all) if (e.writable) await e.device.flush();
      }
    })();
    return this.closing;
  }
}

/**
 * Export `device` on a TCP port (default 127.0.0.1:10809) or a Unix socket; resolves to the
 * listening server. `server.close()` stops it (the device stays open).
 */
export async function serveNbd(device: BlockDevice, opts: ServeOptions = {}): Promise<NbdServer> {
  const { port, host, path, name, description, readOnly, multiConn, unallocatedIsZero, ...rest } = opts;
  const spec: NbdExportSpec = { device };
  if (name !== undefined) spec.name = name;
  if (description !== undefined) spec.description = description;
  if (readOnly !== undefined) spec.readOnly = readOnly;
  if (multiConn !== undefined) spec.multiConn = multiConn;
  if (unallocatedIsZero !== undefined) spec.unallocatedIsZero = unallocatedIsZero;
  const server = new NbdServer(spec, rest);
  const where: NbdListen = path !== undefined ? { path } : { ...(port !== undefined ? { port } : {}), ...(host !== undefined ? { host } : {}) };
  await server.listen(where);
  return server;
}

/** A socket file left by a server that died: remove it so listen() can bind. A live one is kept. */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => null);
  if (!st?.isSocket()) return;
  const live = await new Promise<boolean>((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (!live) await unlink(path).catch(() => undefined);
}

/** 0 (none) or a whole number of ms that setTimeout can take. */
function millis(name: string, ms: number): number {
  if (!(Number.isInteger(ms) && ms >= 0 && ms <= 0x7fffffff)) throw new TypeError(`${name} ${ms} is not a whole number of ms from 0 to 2^31 - 1`);
  return ms;
}

interface Timeouts {
  handshake: number;
  io: number;
}

/** What a connection gets from its server. */
interface ConnectionContext {
  exports: ExportTable;
  hs: HandshakeLimits;
  tx: TransmissionLimits;
  budget: ByteBudget;
  timeouts: Timeouts;
  onError: (e: unknown) => void;
  /** Claim a place in transmission (see NbdServer.admit). */
  admit: () => string | null;
}

/** One client: the handshake, then transmission. */
class Connection {
  private readonly input = new InputBuffer();
  private want = 0;
  private waiter: { resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;
  private inputPaused = false;
  private tx: Transmission | null = null;
  /** The handshake is over (transmission started, or the connection is ending). */
  private negotiated = false;
  /** Every request of the transmission has been answered and the socket ended. */
  private txDone = false;
  private readonly timer: NodeJS.Timeout | null = null;
  private resolveClosed!: () => void;
  /** Resolves when the socket has closed and every request of the connection has finished. */
  readonly closed: Promise<void>;
  private readonly socketClosed: Promise<void>;
  private readonly onError: (e: unknown) => void;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: ConnectionContext,
  ) {
    this.onError = ctx.onError;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.socketClosed = new Promise((r) => socket.once('close', () => r()));
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd(new Error('the client closed the connection')));
    socket.on('error', (e) => {
      this.onEnd(e);
      socket.destroy();
    });
    socket.on('close', () => {
      this.onEnd(new Error('connection closed'));
      this.tx?.socketClosed();
    });
    socket.on('drain', () => this.tx?.pump());
    socket.on('timeout', () => this.onIoTimeout());
    const limit = ctx.timeouts.handshake;
    if (limit > 0) {
      this.timer = setTimeout(() => {
        if (this.negotiated || socket.destroyed) return;
        this.onError(new ClientDropped('HANDSHAKE_TIMEOUT', `closed a connection that did not finish its handshake in ${limit / 1000} s`));
        socket.destroy();
      }, limit);
      this.timer.unref();
    }
    void this.run();
  }

  /** Still in the handshake (counts against maxHandshakes). */
  get negotiating(): boolean {
    return !this.negotiated;
  }

  /** See Transmission.idleSince; null before transmission. */
  idleSince(): number | null {
    return this.tx?.idleSince() ?? null;
  }

  /**
   * The socket saw no traffic and no write progress for the I/O timeout. A client that holds the
   * connection up (unread replies, a half-sent request) is dropped; one that is idle, or waiting
   * for us, is left alone; one that was answered in full and never closed its side is closed.
   */
  private onIoTimeout(): void {
    const tx = this.tx;
    if (!tx || this.socket.destroyed) return;
    const why = tx.stalled();
    if (why !== null || this.txDone) {
      const seconds = this.ctx.timeouts.io / 1000;
      if (why === 'replies') this.onError(new ClientDropped('UNREAD_REPLIES', `disconnected a client that read none of its replies for ${seconds} s`));
      else if (why === 'request') this.onError(new ClientDropped('STALLED_REQUEST', `disconnected a client that left a request half sent for ${seconds} s`));
      this.socket.destroy();
      return;
    }
    this.socket.setTimeout(this.ctx.timeouts.io); // idle or waiting on us: look again later
  }

  /** Server shutdown: drop a handshake; stop a transmission after its requests in flight. */
  async shutdown(): Promise<void> {
    if (this.tx) await this.tx.stop();
    else this.socket.destroy();
    // A client that does not close its side within a second is cut off.
    const t = setTimeout(() => this.socket.destroy(), 1000);
    t.unref();
    await this.closed;
    clearTimeout(t);
  }

  private async run(): Promise<void> {
    const ctx = this.ctx;
    try {
      const io: HandshakeIo = {
        read: (n) => this.read(n),
        write: (b) => void (this.socket.destroyed || this.socket.write(b)),
        admit: () => ctx.admit(),
      };
      const negotiated = await negotiate(io, ctx.exports, ctx.hs);
      this.negotiated = true;
      if (this.timer) clearTimeout(this.timer);
      if (negotiated === null || this.socket.destroyed) {
        this.socket.end();
      } else {
        const tx = new Transmission(this.socket, this.input, negotiated, ctx.tx, ctx.budget, this.onError);
        this.tx = tx;
        if (ctx.timeouts.io > 0) this.socket.setTimeout(ctx.timeouts.io);
        if (this.inputPaused) this.socket.resume();
        if (this.ended) tx.endOfInput();
        else tx.pump(); // requests that arrived with the last option
        if (this.socket.destroyed) tx.socketClosed();
        await tx.finished;
        this.txDone = true;
      }
    } catch (e) {
      if (e instanceof ProtocolViolation) this.onError(e);
      this.socket.destroy();
    } finally {
      this.negotiated = true;
      if (this.timer) clearTimeout(this.timer);
      await this.socketClosed;
      this.resolveClosed();
    }
  }

  private onData(chunk: Buffer): void {
    this.input.push(chunk);
    if (this.tx) {
      this.tx.received();
      return;
    }
    if (this.waiter && this.input.available >= this.want) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(this.input.take(this.want));
    }
    // A client that floods the handshake is not read further until its options are handled.
    if (!this.inputPaused && this.input.available > this.ctx.hs.maxOptionLength + 65536) {
      this.inputPaused = true;
      this.socket.pause();
    }
  }

  private onEnd(e: Error): void {
    if (this.ended) return;
    this.ended = e;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(e);
    }
    this.tx?.endOfInput();
  }

  /** Handshake reads: exactly n bytes. */
  private read(n: number): Promise<Buffer> {
    if (this.input.available >= n) {
      const b = this.input.take(n);
      this.resumeHandshakeInput();
      return Promise.resolve(b);
    }
    if (this.ended) return Promise.reject(this.ended);
    this.want = n;
    this.resumeHandshakeInput();
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  private resumeHandshakeInput(): void {
    if (this.inputPaused && this.input.available <= this.ctx.hs.maxOptionLength + 65536) {
      this.inputPaused = false;
      this.socket.resume();
    }
  }
}
