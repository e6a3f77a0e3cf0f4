/**
 * The HTTP source's transport in Node: HTTP/1.1 on node:net and node:tls sockets, with
 * kept-alive connections. A range answer's body is read by the kernel straight into the
 * caller's buffer (the socket's `onread` with a buffer of ours per read): no chunk objects, no
 * web streams, no copy. Through node:http the same bytes cost about 1.5 CPU seconds per GiB
 * (its parser and a new 64 KiB Buffer per socket read), through fetch 1.5-2; this costs a
 * fraction of that (README, Images over HTTP). Importing this module makes it the default
 * transport of HttpSource (the Node entry and the CLI do).
 *
 * What it speaks: GET and HEAD over HTTP/1.1 (HTTP/1.0 answers too), bodies framed by
 * Content-Length, chunked transfer coding or the connection's end, informational (1xx) answers
 * skipped, redirects followed as fetch does. It is not a general HTTP client: no request bodies,
 * no content codings, no proxies.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { VhdxError } from '../errors.js';
import { bodyTooLong, setDefaultTransport, type HttpAnswer, type HttpTransport } from './http.js';

/** Redirects followed before giving up, as fetch does. */
const MAX_REDIRECTS = 20;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Headers that must not follow a redirect to another origin (fetch drops Authorization too). */
const CREDENTIALS = ['authorization', 'cookie', 'proxy-authorization'];
/** Headers the transport writes itself. */
const OWN_HEADERS = new Set(['connection', 'content-length', 'keep-alive', 'te', 'transfer-encoding', 'upgrade']);
/** Each connection's buffer for answer heads and bodies not read straight into the caller's: also the largest head accepted. */
const SCRATCH = 64 * 1024;
/** The longest chunk-size or trailer line of a chunked body accepted. */
const MAX_LINE = 4096;
/** Idle connections kept per origin. */
const MAX_IDLE = 16;

/** Options of nodeHttpTransport. */
export interface NodeHttpTransportOptions {
  /**
   * TLS options for https: URLs, as node:tls takes them: `ca` to trust a private certificate
   * authority, `rejectUnauthorized: false` to accept any certificate (not advised), client
   * certificates. The server name is the URL's host.
   */
  tls?: Pick<ConnectionOptions, 'ca' | 'cert' | 'key' | 'pfx' | 'passphrase' | 'rejectUnauthorized' | 'minVersion' | 'ciphers'>;
}

/**
 * A transport on node:net and node:tls with its own kept-alive connection pools (one per
 * transport, shared by every source using it; idle connections do not keep the process alive).
 */
export function nodeHttpTransport(options: NodeHttpTransportOptions = {}): HttpTransport {
  const idle = new Map<string, Connection[]>();
  const pool: Pool = {
    park(c) {
      const list = idle.get(c.key) ?? [];
      if (list.length >= MAX_IDLE) return false;
      list.push(c);
      idle.set(c.key, list);
      return true;
    },
    forget(c) {
      const list = idle.get(c.key);
      const i = list?.indexOf(c) ?? -1;
      if (i >= 0) list!.splice(i, 1);
    },
  };

  /** One request on a kept-alive connection if there is one (once more on a new one if that was closed under it). */
  const once = async (url: URL, method: 'GET' | 'HEAD', head: string, signal: AbortSignal): Promise<Answered> => {
    const key = `${url.protocol}//${url.host}`;
    for (;;) {
      const reused = idle.get(key)?.pop();
      const conn = reused ?? new Connection(key, url, options, pool);
      try {
        return await conn.exchange(method, head, signal);
      } catch (e) {
        // A kept-alive connection the server had closed just before: nothing of the request
        // was answered, so it is sent again on a new connection (GET and HEAD are idempotent).
        if (reused && conn.nothingReceived && !signal.aborted) continue;
        throw e;
      }
    }
  };

  return {
    async request(href, { method, headers, signal }) {
      let url = new URL(href);
      const sent = new Map<string, string>();
      headers.forEach((v, k) => {
        if (!OWN_HEADERS.has(k)) sent.set(k, v);
      });
      if ((url.username || url.password) && !sent.has('authorization')) {
        const user = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
        sent.set('authorization', `Basic ${Buffer.from(user).toString('base64')}`);
      }
      for (let redirects = 0; ; redirects++) {
        if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`redirected to a ${url.protocol} URL`);
        if (signal.aborted) throw signal.reason;
        const { conn, head } = await once(url, method, requestHead(method, url, sent), signal);
        const location = head.headers.get('location');
        if (!REDIRECTS.has(head.status) || location === undefined) return answer(conn, head, url.href);
        conn.drop();
        if (redirects >= MAX_REDIRECTS) throw new Error(`more than ${MAX_REDIRECTS} redirects`);
        const next = new URL(location, url);
        if (next.origin !== url.origin) for (const k of CREDENTIALS) sent.delete(k);
        url = next;
      }
    },
  };
}

/** The request's head: its line, Host and the headers given (names lowercase, as Headers gives them). */
function requestHead(method: string, url: URL, headers: Map<string, string>): string {
  let head = `${method} ${url.pathname || '/'}${url.search} HTTP/1.1\r\n`;
  if (!headers.has('host')) head += `host: ${url.host}\r\n`;
  for (const [k, v] of headers) {
    if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new Error(`header ${JSON.stringify(k)} holds a line break`);
    head += `${k}: ${v}\r\n`;
  }
  return `${head}\r\n`;
}

function answer(conn: Connection, head: Head, url: string): HttpAnswer {
  return {
    status: head.status,
    statusText: head.statusText,
    url,
    headers: { get: (name) => head.headers.get(name.toLowerCase()) ?? null },
    body: (each) => conn.body(each).then(() => {}),
    bodyInto: (into, progress) => conn.bodyInto(into, progress, url),
    cancel: () => conn.drop(),
  };
}

/** An answer's status line and headers (names lowercase; repeated ones joined with ", "). */
interface Head {
  status: number;
  statusText: string;
  headers: Map<string, string>;
}

interface Answered {
  conn: Connection;
  head: Head;
}

interface Pool {
  /** Keep an idle connection for reuse; false when the pool for its origin is full. */
  park(c: Connection): boolean;
  forget(c: Connection): void;
}

/** How the body of the answer being read ends. */
type Framing = { kind: 'none' } | { kind: 'length'; left: number } | { kind: 'chunked' } | { kind: 'close' };

/** Where a chunked body's reader is: a chunk's size line, its data, the line end after it, the trailer. */
type ChunkState = 'size' | 'data' | 'crlf' | 'trailer';

interface Waiter<T> {
  resolve(v: T): void;
  reject(e: unknown): void;
}

/**
 * One connection: one exchange at a time (no pipelining). Its phases: `idle` (in the pool, or
 * new), `head` (request sent, answer's head awaited), `held` (head in, body not yet asked for:
 * reading stops), `body`, `dead` (closed or failed; never used again).
 *
 * Reads go into a buffer chosen per read (the socket's `onread` calls `nextBuffer` after each
 * one): the caller's own, where a body of known length is read into it, else `scratch`, whose
 * bytes `s`..`e` are received and not yet taken.
 */
class Connection {
  private readonly socket: Socket;
  private readonly scratch = Buffer.allocUnsafe(SCRATCH);
  private s = 0;
  private e = 0;
  private phase: 'idle' | 'head' | 'held' | 'body' | 'dead' = 'idle';
  private method: 'GET' | 'HEAD' = 'GET';
  private keepAlive = true;
  private framing: Framing = { kind: 'none' };
  private chunkState: ChunkState = 'size';
  private chunkLeft = 0;
  /** How much of the head being received (from `s`) was searched for its end already. */
  private headScanned = 0;
  /** Where the body goes: each received piece (a view of scratch, to be copied at once). */
  private sink: ((piece: Uint8Array) => void) | null = null;
  /** The caller's buffer a body of known length is read into, and how much of it is filled. */
  private direct: Uint8Array | null = null;
  private directAt = 0;
  private progress: ((bytes: number) => void) | null = null;
  private bodyLength = 0;
  private headWaiter: Waiter<Answered> | null = null;
  private bodyWaiter: Waiter<number> | null = null;
  private failure: unknown = null;
  /** The server ended the connection while the answer was held (its body may be all in scratch). */
  private eof = false;
  private forgetSignal: () => void = () => {};
  /** No byte has arrived since the request was sent. */
  nothingReceived = true;

  constructor(
    readonly key: string,
    url: URL,
    options: NodeHttpTransportOptions,
    private readonly pool: Pool,
  ) {
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const https = url.protocol === 'https:';
    const port = Number(url.port) || (https ? 443 : 80);
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number, buf: Uint8Array) => this.onRead(n, buf) };
    // node:tls takes onread as node:net does (Node's types do not say so).
    const tlsOptions: ConnectionOptions & { onread: typeof onread } = { ...options.tls, host, port, servername: isIP(host) ? undefined : host, onread };
    this.socket = https ? tlsConnect(tlsOptions) : netConnect({ host, port, onread });
    this.socket.setNoDelay(true);
    this.socket.on('error', (e) => this.fail(e));
    this.socket.on('end', () => this.ended());
    this.socket.on('close', () => this.ended());
  }

  /** Send a request's head and wait for its answer's head. */
  exchange(method: 'GET' | 'HEAD', head: string, signal: AbortSignal): Promise<Answered> {
    if (this.phase !== 'idle') return Promise.reject(new Error('connection busy'));
    this.method = method;
    this.phase = 'head';
    this.nothingReceived = true;
    this.eof = false;
    this.headScanned = 0;
    this.socket.ref();
    const onAbort = (): void => this.fail(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    this.forgetSignal = () => signal.removeEventListener('abort', onAbort);
    return new Promise<Answered>((resolve, reject) => {
      this.headWaiter = { resolve, reject };
      if (signal.aborted) return this.fail(signal.reason);
      this.socket.write(head, 'latin1');
      this.socket.resume();
    });
  }

  /** The body, handed to `each` piece by piece (each piece a copy, the callee's to keep). */
  body(each: (chunk: Uint8Array) => void): Promise<number> {
    // A copy (scratch is a Buffer, whose slice() would be a view).
    return this.startBody((piece) => each(new Uint8Array(piece)), null, null);
  }

  /** The body read into `into` (straight from the socket when its length is known); more than `into` holds is BAD_RESPONSE. */
  bodyInto(into: Uint8Array, progress: (bytes: number) => void, url: string): Promise<number> {
    const tooLong = (): VhdxError => bodyTooLong(url, into.length);
    if (this.phase === 'held' && this.framing.kind === 'length' && this.framing.left > into.length) {
      const e = tooLong();
      this.fail(e);
      return Promise.reject(e);
    }
    const sink = (piece: Uint8Array): void => {
      const at = this.directAt;
      if (at + piece.length > into.length) throw tooLong();
      into.set(piece, at);
      this.directAt = at + piece.length;
      progress(piece.length);
    };
    return this.startBody(sink, into, progress);
  }

  /** Let go of the answer: its connection is kept when the whole body is already in, else closed. */
  drop(): void {
    if (this.phase !== 'held') {
      if (this.phase === 'body') this.fail(new Error('the answer was dropped'));
      return;
    }
    const f = this.framing;
    const have = this.e - this.s;
    if (f.kind === 'none' || (f.kind === 'length' && f.left <= have)) {
      if (f.kind === 'length') this.s += f.left;
      this.finish();
    } else this.fail(new Error('the answer was dropped'));
  }

  private startBody(sink: (piece: Uint8Array) => void, direct: Uint8Array | null, progress: ((bytes: number) => void) | null): Promise<number> {
    if (this.phase !== 'held') return Promise.reject(this.failure ?? new Error('the answer body was already read'));
    this.phase = 'body';
    this.sink = sink;
    this.direct = direct;
    this.directAt = 0;
    this.progress = progress;
    this.bodyLength = 0;
    return new Promise<number>((resolve, reject) => {
      this.bodyWaiter = { resolve, reject };
      try {
        this.take();
        if (this.phase === 'body' && this.eof) this.ended();
      } catch (e) {
        this.fail(e);
      }
      if (this.phase === 'body') this.socket.resume();
    });
  }

  /** The buffer the next read goes into: the rest of the caller's, when the body goes there and nothing waits in scratch. */
  private nextBuffer(): Uint8Array {
    const f = this.framing;
    if (this.phase === 'body' && this.direct && f.kind === 'length' && f.left > 0 && this.s === this.e) {
      return this.direct.subarray(this.directAt, this.directAt + f.left);
    }
    if (this.s === this.e) this.s = this.e = 0;
    else if (this.e === SCRATCH && this.s > 0) {
      this.scratch.copyWithin(0, this.s, this.e);
      this.e -= this.s;
      this.s = 0;
    }
    // A full scratch here is a head too large, failed by onRead before this is asked again.
    return this.e < SCRATCH ? this.scratch.subarray(this.e) : this.scratch;
  }

  /** A read of `n` bytes into `buf` (from nextBuffer). Returns false to stop reading until the body is asked for. */
  private onRead(n: number, buf: Uint8Array): boolean {
    if (this.phase === 'dead') return false;
    this.nothingReceived = false;
    try {
      if (buf.buffer !== this.scratch.buffer) {
        // Straight into the caller's buffer: nextBuffer gave at most what the body still holds.
        const f = this.framing as { kind: 'length'; left: number };
        this.directAt += n;
        this.bodyLength += n;
        f.left -= n;
        this.progress?.(n);
        if (f.left === 0) this.finish();
        return true;
      }
      this.e = buf.byteOffset - this.scratch.byteOffset + n;
      this.take();
    } catch (e) {
      this.fail(e);
    }
    return this.reading();
  }

  /** Whether the socket should go on reading (not while an answer is held, nor once dead). */
  private reading(): boolean {
    return this.phase !== 'held' && this.phase !== 'dead';
  }

  /** Take what scratch holds as far as the phase allows. */
  private take(): void {
    for (;;) {
      if (this.phase === 'idle') {
        if (this.s < this.e) throw new Error('the server sent bytes nobody asked for');
        return;
      }
      if (this.phase === 'head') {
        if (!this.takeHead()) return;
        continue;
      }
      if (this.phase !== 'body') return;
      const f = this.framing;
      if (f.kind === 'none') return this.finish();
      if (f.kind === 'length') {
        const n = Math.min(f.left, this.e - this.s);
        if (n > 0) this.give(n);
        f.left -= n;
        if (f.left === 0) return this.finish();
        return;
      }
      if (f.kind === 'close') {
        if (this.e > this.s) this.give(this.e - this.s);
        return;
      }
      if (!this.takeChunked()) return;
    }
  }

  /** Hand `n` bytes of scratch to the body's sink. */
  private give(n: number): void {
    const piece = this.scratch.subarray(this.s, this.s + n);
    this.s += n;
    this.bodyLength += n;
    this.sink!(piece);
  }

  /** Parse an answer's head if scratch holds all of it; true when the phase moved on. */
  private takeHead(): boolean {
    // Search only what earlier reads did not (a head trickling in is not scanned again and again).
    const end = this.scratch.subarray(0, this.e).indexOf('\r\n\r\n', this.s + Math.max(0, this.headScanned - 3), 'latin1');
    if (end < 0) {
      if (this.e - this.s >= SCRATCH) throw new Error(`the answer's head is larger than ${SCRATCH} bytes`);
      this.headScanned = this.e - this.s;
      return false;
    }
    this.headScanned = 0;
    const text = this.scratch.toString('latin1', this.s, end);
    this.s = end + 4;
    // RFC 9110 §5.5: a field value holding NUL is invalid (fetch refuses such an answer too); one
    // taken as it is would go back in a request's If-Match, where Headers throws.
    if (text.includes('\0')) throw new Error('a NUL byte in the answer\'s head');
    const lines = text.split('\r\n');
    const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
    if (!m) throw new Error(`not an HTTP/1 answer: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
    const status = Number(m[2]);
    const headers = new Map<string, string>();
    let last = '';
    for (const line of lines.slice(1)) {
      if ((line.startsWith(' ') || line.startsWith('\t')) && last) {
        headers.set(last, `${headers.get(last)} ${line.trim()}`);
        continue;
      }
      const h = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*$/.exec(line);
      if (!h) throw new Error(`an unreadable header line in the answer: ${JSON.stringify(line.slice(0, 80))}`);
      last = h[1]!.toLowerCase();
      const had = headers.get(last);
      headers.set(last, had === undefined ? h[2]! : `${had}, ${h[2]}`);
    }
    if (status >= 100 && status < 200) {
      if (status === 101) throw new Error('the server switched protocols');
      return true; // an informational answer: the real one follows
    }
    const tokens = (name: string): string[] => (headers.get(name) ?? '').toLowerCase().split(',').map((t) => t.trim());
    const connection = tokens('connection');
    this.keepAlive = m[1] === '1' ? !connection.includes('close') : connection.includes('keep-alive');
    this.framing = this.framingOf(status, headers, tokens);
    this.chunkState = 'size';
    this.phase = 'held';
    const w = this.headWaiter;
    this.headWaiter = null;
    w?.resolve({ conn: this, head: { status, statusText: m[3] ?? '', headers } });
    return true;
  }

  /** How the body ends (RFC 9112 §6.3). */
  private framingOf(status: number, headers: Map<string, string>, tokens: (name: string) => string[]): Framing {
    if (this.method === 'HEAD' || status === 204 || status === 304) return { kind: 'none' };
    if (headers.has('transfer-encoding')) {
      // Both framings named: the connection is not to be trusted with another request (RFC 9112 §6.1).
      if (headers.has('content-length')) this.keepAlive = false;
      return tokens('transfer-encoding').at(-1) === 'chunked' ? { kind: 'chunked' } : { kind: 'close' };
    }
    const cl = headers.get('content-length');
    if (cl === undefined) return { kind: 'close' };
    const values = new Set(cl.split(',').map((v) => v.trim()));
    const [v] = values;
    const n = values.size === 1 && v !== undefined && /^\d{1,16}$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n)) throw new Error(`an unreadable Content-Length: ${JSON.stringify(cl.slice(0, 80))}`);
    return n === 0 ? { kind: 'none' } : { kind: 'length', left: n };
  }

  /** Take what scratch holds of a chunked body; true when the phase moved on (the body ended). */
  private takeChunked(): boolean {
    while (this.s < this.e) {
      if (this.chunkState === 'data') {
        const n = Math.min(this.chunkLeft, this.e - this.s);
        this.give(n);
        this.chunkLeft -= n;
        if (this.chunkLeft === 0) this.chunkState = 'crlf';
        continue;
      }
      if (this.chunkState === 'crlf') {
        if (this.e - this.s < 2) return false;
        if (this.scratch[this.s] !== 13 || this.scratch[this.s + 1] !== 10) throw new Error('a chunk of the answer does not end where its size says');
        this.s += 2;
        this.chunkState = 'size';
        continue;
      }
      const eol = this.scratch.subarray(0, this.e).indexOf('\r\n', this.s, 'latin1');
      if (eol < 0) {
        if (this.e - this.s > MAX_LINE) throw new Error('a line of the chunked answer is too long');
        return false;
      }
      const line = this.scratch.toString('latin1', this.s, eol);
      this.s = eol + 2;
      if (this.chunkState === 'trailer') {
        if (line === '') {
          this.finish();
          return true;
        }
        continue;
      }
      const size = line.split(';')[0]!.trim();
      if (!/^[0-9a-fA-F]{1,12}$/.test(size)) throw new Error(`an unreadable chunk size: ${JSON.stringify(line.slice(0, 40))}`);
      this.chunkLeft = parseInt(size, 16);
      this.chunkState = this.chunkLeft === 0 ? 'trailer' : 'data';
    }
    return false;
  }

  /** The body has ended: the connection goes back to the pool (or is closed), the reader is told. */
  private finish(): void {
    const w = this.bodyWaiter;
    const length = this.bodyLength;
    this.bodyWaiter = null;
    this.sink = null;
    this.direct = null;
    this.progress = null;
    this.forgetSignal();
    this.phase = 'idle';
    if (this.keepAlive && !this.eof && this.framing.kind !== 'close' && this.s === this.e && this.pool.park(this)) this.socket.unref();
    else this.close();
    w?.resolve(length);
  }

  /** The socket ended or closed: the end of a body that runs to it, else a failure. */
  private ended(): void {
    if (this.phase === 'body' && this.framing.kind === 'close') return this.finish();
    if (this.phase === 'idle') return this.close();
    if (this.phase === 'held') {
      this.eof = true;
      return;
    }
    this.fail(new Error('the connection closed before the answer ended'));
  }

  private fail(e: unknown): void {
    if (this.phase === 'dead') return;
    this.failure = e;
    this.close();
    this.forgetSignal();
    const head = this.headWaiter;
    const body = this.bodyWaiter;
    this.headWaiter = this.bodyWaiter = null;
    head?.reject(e);
    body?.reject(e);
  }

  private close(): void {
    this.phase = 'dead';
    this.pool.forget(this);
    this.socket.destroy();
  }
}

setDefaultTransport(nodeHttpTransport());
