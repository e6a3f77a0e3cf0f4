/**
 * A read-only source over an HTTP(S) URL, read with single-range GET requests through a transport:
 * the global `fetch` (browsers, workers, Node >= 20), or in Node the one on node:net/node:tls that the
 * Node entry installs as the default (./http-node.ts: no web streams, a fraction of the CPU per
 * byte). Browser-safe: no Node API.
 *
 * - Size: from the first ranged GET's Content-Range (`bytes 0-N/SIZE`); a HEAD request only when
 *   that header is missing or hidden (CORS without Access-Control-Expose-Headers), since
 *   presigned URLs are often valid for GET alone.
 * - Reads: small reads go through a bounded cache of fixed blocks; the blocks missing at one
 *   moment are fetched in runs of adjacent blocks, one single-range request per run, so small
 *   reads issued together (or waiting for a free request slot) share a request. Sequential small
 *   reads grow a read-ahead window. Large reads go straight into the caller's buffer.
 * - At most `maxInFlight` requests at once; network errors, timeouts, 408, 429 and 5xx are retried
 *   with exponential backoff, or after the server's Retry-After.
 * - Consistency: the object is pinned by its strong ETag (weak ones are ignored), else by its
 *   Last-Modified. Every answer's validator and size are compared with the pinned ones, and where
 *   the request may carry them (not cross-origin in a browser, where they would need a CORS
 *   preflight the server may refuse) If-Match / If-Unmodified-Since make the server refuse a
 *   changed object. A change is EIO / SOURCE_CHANGED, never a mix of old and new bytes.
 * - A 200 answer to a range request (a server without byte ranges) is accepted only for an object
 *   of at most `wholeObjectLimit` bytes, which is then held in memory; larger is ENOTSUP / NO_RANGES.
 */
import { VhdxError, type ErrorCode } from '../errors.js';
import type { CopyHint, RandomAccessSource } from './source.js';

/** Counters of what a source (or all the sources sharing the object) sent and received. */
export interface HttpStats {
  /** HTTP requests made: GETs and HEADs, retries included. */
  requests: number;
  /** Body bytes received, including those of answers cut short and retried. */
  bytesReceived: number;
  /** Requests that were repeated after a network error, timeout or retryable status. */
  retries: number;
}

/** Options of {@link HttpSource.open} (and of `openUrl`'s `http`). */
export interface HttpSourceOptions {
  /** Headers sent with every request (Authorization, x-ms-version, ...). */
  headers?: ConstructorParameters<typeof Headers>[0];
  /** The object's size when known: used when the server hides it; a different answer is an error. */
  size?: number;
  /** Cache block size in bytes (default 64 KiB, a power of two from 4 KiB to 1 MiB). */
  blockSize?: number;
  /** Bytes of blocks the cache holds (default 16 MiB). */
  cacheBytes?: number;
  /** Largest read-ahead window for sequential small reads, in bytes (default 1 MiB; 0: none). */
  readAhead?: number;
  /** Bytes the first request asks for, from offset 0 (default 512 KiB). */
  firstRequestBytes?: number;
  /** Largest range one request asks for (default 16 MiB): also the piece a copy reads at once. */
  maxRequestBytes?: number;
  /** Requests in flight at once (default 4). */
  maxInFlight?: number;
  /** Times a failed request is repeated (default 5). */
  retries?: number;
  /** First backoff delay in ms, doubled at each retry, with jitter (default 250). */
  retryDelay?: number;
  /** Longest wait before a retry in ms, Retry-After included (default 30000). */
  maxRetryDelay?: number;
  /** Ms without any progress (answer headers, body bytes) before an attempt is abandoned (default 30000). */
  timeout?: number;
  /** Largest object accepted from a server that ignores ranges (answers 200), held in memory (default 8 MiB). */
  wholeObjectLimit?: number;
  /**
   * Send If-Match / If-Unmodified-Since with each range request. Default: yes, except cross-origin
   * in a browser, where these headers need a CORS preflight (answers are compared either way).
   */
  preconditions?: boolean;
  /** Cancels every request (ECANCELED / ABORTED). */
  signal?: AbortSignal;
  /** Counters to add to (share one object between the images of a chain); default a new one. */
  stats?: HttpStats;
  /**
   * How requests are sent (default: in Node, the node:net/node:tls transport the Node entry installs;
   * elsewhere, or when `fetch` is given, `fetchTransport`).
   */
  transport?: HttpTransport;
  /** The fetch to use when no `transport` is given (default the global one). */
  fetch?: typeof fetch;
}

/** The head of an answer, as HttpSource reads it (a fetch Response is one). */
export interface HttpAnswerHead {
  /** The HTTP status code (206 for a range, 200, 416, ...). */
  readonly status: number;
  /** The status line's text ('' where the protocol has none, as HTTP/2). */
  readonly statusText: string;
  /** The URL that answered, after redirects ('' when not known). */
  readonly url: string;
  /** The answer's headers by name, case-insensitive (null when absent). */
  readonly headers: { get(name: string): string | null };
}

/** An answer whose body is still to come. */
export interface HttpAnswer extends HttpAnswerHead {
  /**
   * Hand the body to `each` chunk by chunk (the chunks are the callee's to keep). Resolves at its
   * end; rejects on a network error, an abort of the request's signal, or what `each` throws (the
   * connection is then dropped).
   */
  body(each: (chunk: Uint8Array) => void): Promise<void>;
  /**
   * Where the transport can (Node's does): read the body straight into `into`, calling
   * `progress` with the bytes of each read. Resolves with the body's length at its end; rejects
   * as body() does, and with BAD_RESPONSE when the body is longer than `into`.
   */
  bodyInto?(into: Uint8Array, progress: (bytes: number) => void): Promise<number>;
  /** Drop the answer without reading its body (or the rest of it). */
  cancel(): void;
}

/**
 * What HttpSource sends its requests through: one request, redirects followed (as fetch does:
 * at most 20, Authorization dropped when they lead to another origin), resolved once the answer's
 * head is in. The signal aborts the request and its body.
 */
export interface HttpTransport {
  /** Send one GET or HEAD with these headers; resolves when the answer's head has arrived, rejects on a network error or an abort of `signal`. */
  request(url: string, init: { method: 'GET' | 'HEAD'; headers: Headers; signal: AbortSignal }): Promise<HttpAnswer>;
}

/** The transport on `fetch` (default the global one): browsers, workers, and Node's fallback. */
export function fetchTransport(fetchFn: typeof fetch = (input, init) => fetch(input, init)): HttpTransport {
  return {
    async request(url, { method, headers, signal }) {
      // no-store: the source caches what it needs; the browser's cache would only hold stale
      // ranges (and serialises concurrent range requests to one entry). Node's types lack `cache`.
      const init = { method, headers, signal, cache: 'no-store', redirect: 'follow' } as RequestInit;
      const response = await fetchFn(url, init);
      let consumed = false;
      return {
        status: response.status,
        statusText: response.statusText,
        url: response.url,
        headers: response.headers,
        async body(each) {
          consumed = true;
          const body = response.body;
          if (!body) return;
          const reader = body.getReader();
          try {
            for (;;) {
              const { done, value } = await reader.read();
              if (done) return;
              each(value);
            }
          } catch (e) {
            await reader.cancel().catch(() => {});
            throw e;
          }
        },
        cancel() {
          if (!consumed) void response.body?.cancel().catch(() => {});
        },
      };
    },
  };
}

let defaultTransport: HttpTransport | null = null;

/**
 * Make `t` the transport of sources given neither `transport` nor `fetch`: the Node entry
 * installs its node:net/node:tls one (./http-node.ts). Not part of the public API.
 * @internal
 */
export function setDefaultTransport(t: HttpTransport): void {
  defaultTransport = t;
}

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * The error of a body longer than the buffer it is read into (BAD_RESPONSE), for HttpSource and
 * the transports that read into a buffer. Not part of the public API.
 * @internal
 */
export function bodyTooLong(url: string, room: number): VhdxError {
  return new VhdxError('EIO', 'BAD_RESPONSE', `${redactUrl(url)} sent more than the ${room} bytes asked for`);
}

/** What pins the object: the strong ETag, else Last-Modified, else nothing (a change goes unseen). */
export type HttpValidator = { etag: string } | { lastModified: string } | null;

interface Deferred {
  promise: Promise<Uint8Array>;
  resolve(b: Uint8Array): void;
  reject(e: unknown): void;
}

function deferred(): Deferred {
  let resolve!: (b: Uint8Array) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<Uint8Array>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A read-ahead block nobody waits for may fail: that is not an unhandled rejection.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** A failure worth another attempt (network error, timeout, 408/429/5xx), with the server's wish. */
class Retryable extends Error {
  constructor(
    message: string,
    readonly final: { code: ErrorCode; reason: 'IO_ERROR' | 'TIMED_OUT' | 'HTTP_STATUS' },
    readonly retryAfterMs: number | null = null,
    options?: { cause: unknown },
  ) {
    super(message, options);
  }
}

/** `scheme://host/path` with the query (tokens, signatures) elided: safe for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}${u.search ? '?…' : ''}`;
  } catch {
    return '(invalid URL)';
  }
}

/** Content-Range of a byte answer (RFC 9110 §14.4): `bytes F-L/N`, `bytes F-L/*` or `bytes *\/N`. */
export function parseContentRange(v: string | null): { first: number; last: number; size: number | null } | { unsatisfied: number } | null {
  if (v === null) return null;
  const m = /^\s*bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+|\*)\s*$/i.exec(v);
  if (!m) return null;
  const size = m[3] === '*' ? null : Number(m[3]);
  if (size !== null && !Number.isSafeInteger(size)) return null;
  if (m[1] === undefined) return size === null ? null : { unsatisfied: size };
  const first = Number(m[1]);
  const last = Number(m[2]);
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || last < first || (size !== null && last >= size)) return null;
  return { first, last, size };
}

/** Retry-After (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, as ms from now; null if absent or unreadable. */
export function parseRetryAfter(v: string | null, now = Date.now()): number | null {
  if (v === null) return null;
  const t = v.trim();
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const at = Date.parse(t);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** Is `url` cross-origin from the page or worker running this (false outside browsers)? */
function crossOriginInBrowser(url: string): boolean {
  const here = (globalThis as { location?: { origin?: unknown } }).location?.origin;
  if (typeof here !== 'string') return false;
  return here === 'null' || new URL(url).origin !== here;
}

function checkPositive(name: string, v: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `HTTP source option ${name} must be a whole number from ${min} to ${max}, not ${v}`);
  }
  return v;
}

/**
 * Wait `ms`, unless `onStop` (see HttpSource.whileOpen) stops the wait first with a reason.
 */
function sleep(ms: number, onStop: (stop: (reason: unknown) => void) => () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const forget = onStop((reason) => {
      clearTimeout(t);
      reject(reason);
    });
    const t = setTimeout(() => {
      forget();
      resolve();
    }, ms);
  });
}

/**
 * A read-only source over an HTTP(S) URL, read with single-range GET requests: cached, retried,
 * and pinned to one version of the object (a change is EIO / SOURCE_CHANGED). Open with
 * {@link HttpSource.open}.
 */
export class HttpSource implements RandomAccessSource {
  /** Always true. */
  readonly readOnly = true;
  /** What this source (and those sharing the object) sent and received. */
  readonly stats: HttpStats;
  /**
   * A copy reads pieces of maxRequestBytes, maxInFlight at once: one request per piece, and
   * enough of them to keep the connection busy through each one's round trip.
   */
  readonly copyHint: CopyHint;
  /** The URL as given (with its query). */
  readonly url: string;
  /** The URL the first answer came from, after redirects (to check where a chain leads). */
  finalUrl: string;
  /** What pins the object (see HttpValidator). */
  validator: HttpValidator = null;

  private objectSize = 0;
  private readonly headers: Headers;
  private readonly transport: HttpTransport;
  private readonly blockSize: number;
  private readonly cacheBlocks: number;
  private readonly readAheadMax: number;
  private readonly firstBytes: number;
  private readonly maxRequest: number;
  private readonly maxInFlight: number;
  private readonly retries: number;
  private readonly retryDelay: number;
  private readonly maxRetryDelay: number;
  private readonly timeout: number;
  private readonly wholeLimit: number;
  private readonly preconditions: boolean;
  private readonly knownSize: number | undefined;
  /** Aborted by close() and by the caller's signal: ends every request and wait. */
  private readonly life = new AbortController();
  private closed = false;

  /** The whole object, when the server answered 200 for a small object. */
  private whole: Uint8Array | null = null;
  /** Block index -> bytes, least recently used first. */
  private readonly cache = new Map<number, Uint8Array>();
  /** Blocks requested and not yet arrived (queued or in flight). */
  private readonly pending = new Map<number, Promise<Uint8Array>>();
  /** Blocks waiting for a request slot, merged into runs when one frees. */
  private readonly queue = new Map<number, Deferred>();
  private pumping = false;
  private active = 0;
  private readonly slotWaiters: (() => void)[] = [];
  /**
   * What close() or the caller's signal must stop: requests in flight, waits for a slot, backoff
   * sleeps. One listener on `life` for all of them (a listener each passed Node's limit of 10
   * per signal, and a warning went to stderr, with a few requests queued).
   */
  private readonly stoppers = new Set<(reason: unknown) => void>();
  /**
   * End of the last small read, where the run of small reads continuing each other began, the
   * read-ahead window grown by that run, and the last block asked for ahead.
   */
  private lastEnd = -1;
  private runStart = -1;
  private window = 0;
  private aheadEnd = -1;

  private constructor(url: string, opts: HttpSourceOptions) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch (e) {
      throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `not a URL: ${JSON.stringify(url)}`, { cause: e });
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `only http: and https: URLs can be read, not ${parsed.protocol}`);
    }
    this.url = url;
    this.finalUrl = url;
    this.headers = new Headers(opts.headers);
    this.transport = opts.transport ?? (opts.fetch ? fetchTransport(opts.fetch) : (defaultTransport ?? fetchTransport()));
    this.blockSize = checkPositive('blockSize', opts.blockSize ?? 64 * KiB, 4 * KiB, MiB);
    if ((this.blockSize & (this.blockSize - 1)) !== 0) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `HTTP source blockSize must be a power of two, not ${this.blockSize}`);
    this.cacheBlocks = Math.max(1, Math.floor(checkPositive('cacheBytes', opts.cacheBytes ?? 16 * MiB, 0) / this.blockSize));
    this.readAheadMax = Math.floor(checkPositive('readAhead', opts.readAhead ?? MiB, 0) / this.blockSize);
    this.firstBytes = checkPositive('firstRequestBytes', opts.firstRequestBytes ?? 512 * KiB, 1);
    this.maxRequest = Math.max(this.blockSize, checkPositive('maxRequestBytes', opts.maxRequestBytes ?? 16 * MiB, 1));
    this.maxInFlight = checkPositive('maxInFlight', opts.maxInFlight ?? 4, 1, 64);
    this.copyHint = { chunkSize: Math.min(this.maxRequest, 64 * MiB), parallel: this.maxInFlight };
    this.retries = checkPositive('retries', opts.retries ?? 5, 0, 100);
    this.retryDelay = checkPositive('retryDelay', opts.retryDelay ?? 250, 0);
    this.maxRetryDelay = checkPositive('maxRetryDelay', opts.maxRetryDelay ?? 30_000, 0);
    this.timeout = checkPositive('timeout', opts.timeout ?? 30_000, 1);
    this.wholeLimit = checkPositive('wholeObjectLimit', opts.wholeObjectLimit ?? 8 * MiB, 0);
    this.preconditions = opts.preconditions ?? !crossOriginInBrowser(url);
    if (opts.size !== undefined) checkPositive('size', opts.size, 0);
    this.knownSize = opts.size;
    this.stats = opts.stats ?? { requests: 0, bytesReceived: 0, retries: 0 };
    this.life.signal.addEventListener(
      'abort',
      () => {
        for (const stop of [...this.stoppers]) stop(this.life.signal.reason);
        this.stoppers.clear();
      },
      { once: true },
    );
    const signal = opts.signal;
    if (signal) {
      const stop = (): void => this.life.abort(new VhdxError('ECANCELED', 'ABORTED', `reading ${redactUrl(url)} cancelled`, { cause: signal.reason }));
      if (signal.aborted) stop();
      else signal.addEventListener('abort', stop, { once: true });
    }
  }

  /**
   * Open the object at `url`: one ranged GET of its first bytes gives its size and validator
   * (and fills the cache). Fails with a VhdxError naming the URL without its query.
   */
  static async open(url: string, opts: HttpSourceOptions = {}): Promise<HttpSource> {
    const src = new HttpSource(url, opts);
    await src.start();
    return src;
  }

  /** Size of the object in bytes. */
  get size(): number {
    return this.objectSize;
  }

  /**
   * Read up to `into.length` bytes at `offset` (short only at the end of the object). Fails with
   * the VhdxError of the HTTP failure (HTTP_STATUS, TIMED_OUT, SOURCE_CHANGED, ...) or CLOSED.
   */
  async read(offset: number, into: Uint8Array): Promise<number> {
    this.checkOpen();
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `read at offset ${offset} of ${redactUrl(this.url)}: offsets are whole numbers from 0`);
    }
    if (offset >= this.objectSize || into.length === 0) return 0;
    const n = Math.min(into.length, this.objectSize - offset);
    const out = into.subarray(0, n);
    if (this.whole) {
      out.set(this.whole.subarray(offset, offset + n));
      return n;
    }
    const B = this.blockSize;
    const first = Math.floor(offset / B);
    const last = Math.floor((offset + n - 1) / B);
    let allCached = true;
    for (let b = first; b <= last && allCached; b++) allCached = this.cache.has(b);
    if (!allCached && n >= 4 * B) {
      // Large reads (payload copies) go straight into the caller's buffer, uncached.
      this.lastEnd = -1;
      await this.readDirect(offset, out);
      return n;
    }
    // Small reads: through the block cache, with read-ahead while they follow each other.
    const waits: Promise<Uint8Array>[] = [];
    for (let b = first; b <= last; b++) waits.push(this.block(b));
    this.readAhead(offset, n, last);
    const blocks = await Promise.all(waits);
    for (let i = 0; i < blocks.length; i++) {
      const base = (first + i) * B;
      const from = Math.max(offset, base);
      const to = Math.min(offset + n, base + blocks[i]!.length);
      out.set(blocks[i]!.subarray(from - base, to - base), from - offset);
    }
    return n;
  }

  /**
   * Grow the read-ahead window while small reads continue each other (2 blocks, doubling up to
   * readAhead), and once less than half a window is left ahead of the reader, ask for the next
   * window at once: read-ahead goes out in runs of half a window or more, not block by block.
   * A run starts reading ahead only once it has covered two blocks: a structure read as a table
   * and then its few small items (a VHDX's metadata, a GPT header and its entries) continues
   * itself without streaming, and reading ahead for it cost `vhdx info` over HTTP two requests
   * and 576 KiB more for the metadata region alone.
   */
  private readAhead(offset: number, n: number, last: number): void {
    const sequential = offset === this.lastEnd;
    this.lastEnd = offset + n;
    if (!sequential) {
      this.runStart = offset;
      this.window = 0;
      this.aheadEnd = last;
      return;
    }
    if (offset + n - this.runStart < 2 * this.blockSize) return;
    this.window = Math.min(this.readAheadMax, Math.max(2, this.window * 2));
    if (this.aheadEnd - last >= this.window / 2) return;
    const to = Math.min(Math.floor((this.objectSize - 1) / this.blockSize), last + this.window);
    for (let b = Math.max(last, this.aheadEnd) + 1; b <= to; b++) void this.block(b);
    this.aheadEnd = Math.max(this.aheadEnd, to);
  }

  /** End every request in flight (they fail with CLOSED) and drop the cache. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.life.abort(new VhdxError('EINVAL', 'CLOSED', `${redactUrl(this.url)} is closed`));
    this.cache.clear();
    this.whole = null;
  }

  private checkOpen(): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', `${redactUrl(this.url)} is closed`);
    if (this.life.signal.aborted) throw this.life.signal.reason;
  }

  // --- opening -------------------------------------------------------------------------------

  private async start(): Promise<void> {
    const want = this.knownSize !== undefined ? Math.min(this.firstBytes, this.knownSize) : this.firstBytes;
    if (want === 0) {
      this.objectSize = 0;
      return;
    }
    const first = await this.withRetries(() => this.probe(want));
    if (first.whole) {
      this.objectSize = first.data.length;
      this.whole = first.data;
    } else {
      let size = first.size;
      // The server hides or omits the total: an answer shorter than asked for ends at the end.
      if (size === null && first.data.length < want) size = first.data.length;
      if (size === null) size = await this.headSize();
      if (size === null) size = this.knownSize ?? null;
      if (size === null) {
        throw new VhdxError(
          'EIO',
          'SIZE_UNKNOWN',
          `cannot learn the size of ${redactUrl(this.url)}: its range answer gives no total (a cross-origin server must list Content-Range in Access-Control-Expose-Headers) and HEAD gives no Content-Length; pass the size`,
        );
      }
      this.objectSize = size;
      this.fill(0, first.data);
    }
    if (this.knownSize !== undefined && this.knownSize !== this.objectSize) {
      throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${redactUrl(this.url)} is ${this.objectSize} bytes, not the ${this.knownSize} bytes given`);
    }
  }

  /**
   * The first request: GET bytes=0-(want-1). A 206 gives the first bytes (and the size, when its
   * Content-Range is visible); a 200 the whole object (when small enough); a 416 the size, and
   * the request is made again for what exists.
   */
  private async probe(want: number): Promise<{ whole: boolean; data: Uint8Array; size: number | null }> {
    const res = await this.send('GET', { Range: `bytes=0-${want - 1}` });
    this.finalUrl = res.response.url || this.url;
    const r = res.response;
    try {
      if (r.status === 416) {
        const cr = parseContentRange(r.headers.get('Content-Range'));
        this.pin(r, false);
        let size = cr && 'unsatisfied' in cr ? cr.unsatisfied : null;
        if (size === null) size = await this.headSize();
        if (size === null) throw this.statusError(r);
        if (size === 0) return { whole: false, data: new Uint8Array(0), size: 0 };
        if (size >= want) throw new VhdxError('EIO', 'BAD_RESPONSE', `${redactUrl(this.url)} refused bytes 0-${want - 1} of its ${size} bytes (416)`);
        return await this.probe(size);
      }
      if (r.status === 200) {
        this.pin(r, false);
        return { whole: true, data: await this.readWhole(res), size: null };
      }
      if (r.status !== 206) throw this.statusError(r);
      this.pin(r, false);
      const cr = this.checkRange(r, 0, want, true);
      // The length the answer must have, when it says: its range, else its Content-Length.
      const len = r.headers.get('Content-Length');
      const expected = cr ? cr.last + 1 : len !== null && /^\d+$/.test(len.trim()) ? Number(len) : null;
      if (expected !== null && expected > want) throw new VhdxError('EIO', 'BAD_RESPONSE', `${redactUrl(this.url)} announced ${expected} bytes for a request of ${want}`);
      const data = await this.readBody(res, new Uint8Array(want), expected);
      return { whole: false, data, size: cr?.size ?? null };
    } finally {
      res.done();
    }
  }

  /** The size from a HEAD request's Content-Length, or null when HEAD is refused or says nothing. */
  private async headSize(): Promise<number | null> {
    let res: Exchange;
    try {
      res = await this.send('HEAD', {});
    } catch (e) {
      if (e instanceof VhdxError && (e.reason === 'CLOSED' || e.reason === 'ABORTED')) throw e;
      return null;
    }
    try {
      const r = res.response;
      if (r.status < 200 || r.status > 299) return null;
      this.pin(r, true);
      const len = r.headers.get('Content-Length');
      const n = len !== null && /^\d+$/.test(len.trim()) ? Number(len) : NaN;
      return Number.isSafeInteger(n) ? n : null;
    } finally {
      res.done();
    }
  }

  /**
   * Record the object's validator from its first answer, or (`compare`) check a later answer's
   * against it: a different strong ETag, or a different Last-Modified when that is the pin, is
   * SOURCE_CHANGED. Headers a CORS answer hides read as null and are not compared.
   */
  private pin(r: HttpAnswerHead, compare: boolean): void {
    const etagHeader = r.headers.get('ETag');
    const etag = etagHeader !== null && !etagHeader.trim().startsWith('W/') ? etagHeader.trim() : null;
    const lastModified = r.headers.get('Last-Modified')?.trim() ?? null;
    if (!compare && this.validator === null) {
      this.validator = etag !== null ? { etag } : lastModified !== null ? { lastModified } : null;
      return;
    }
    const v = this.validator;
    if (v === null) return;
    if ('etag' in v && etag !== null && etag !== v.etag) throw this.changed(`its ETag is now ${etag}, was ${v.etag}`);
    if ('lastModified' in v && lastModified !== null && lastModified !== v.lastModified) {
      throw this.changed(`its Last-Modified is now ${lastModified}, was ${v.lastModified}`);
    }
  }

  private changed(why: string): VhdxError {
    return new VhdxError('EIO', 'SOURCE_CHANGED', `${redactUrl(this.url)} changed while it was being read: ${why}`);
  }

  // --- reading ---------------------------------------------------------------------------------

  /** The bytes of block `b`: cached, on their way, or queued for the next request. */
  private block(b: number): Promise<Uint8Array> {
    const hit = this.cache.get(b);
    if (hit) {
      this.cache.delete(b);
      this.cache.set(b, hit);
      return Promise.resolve(hit);
    }
    const p = this.pending.get(b);
    if (p) return p;
    const d = deferred();
    this.pending.set(b, d.promise);
    this.queue.set(b, d);
    void this.pump();
    return d.promise;
  }

  /**
   * Send the queued blocks, a run of adjacent blocks per request, as request slots free. Runs are
   * taken only once a slot is free, so blocks queued meanwhile join them.
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      // Let the reads issued in this turn queue their blocks before the first run is cut.
      await Promise.resolve();
      while (this.queue.size > 0) {
        await this.acquire();
        const run = this.takeRun();
        if (run.length === 0) {
          this.release();
          break;
        }
        void this.fetchRun(run).finally(() => this.release());
      }
    } catch (e) {
      // Closed or cancelled while waiting for a slot: fail whatever is still queued.
      for (const [b, d] of this.queue) {
        this.pending.delete(b);
        d.reject(e);
      }
      this.queue.clear();
    } finally {
      this.pumping = false;
    }
  }

  /** The lowest queued block and the queued blocks adjacent to it, up to maxRequestBytes. */
  private takeRun(): number[] {
    let lo = Infinity;
    for (const b of this.queue.keys()) if (b < lo) lo = b;
    const run: number[] = [];
    const most = Math.max(1, Math.floor(this.maxRequest / this.blockSize));
    for (let b = lo; this.queue.has(b) && run.length < most; b++) run.push(b);
    return run;
  }

  private async fetchRun(run: number[]): Promise<void> {
    const ds = run.map((b) => this.queue.get(b)!);
    for (const b of run) this.queue.delete(b);
    const B = this.blockSize;
    const offset = run[0]! * B;
    const length = Math.min(run.length * B, this.objectSize - offset);
    try {
      const data = new Uint8Array(length);
      await this.withRetries(() => this.fetchRange(offset, data));
      this.fill(offset, data);
      run.forEach((b, i) => ds[i]!.resolve(this.cache.get(b) ?? data.subarray(i * B, Math.min(length, (i + 1) * B))));
    } catch (e) {
      for (const d of ds) d.reject(e);
    } finally {
      for (const b of run) this.pending.delete(b);
    }
  }

  /**
   * Put bytes read at `offset` (block-aligned) into the cache, a copy per block, evicting the
   * oldest. A partial block is kept only where the object ends.
   */
  private fill(offset: number, data: Uint8Array): void {
    const B = this.blockSize;
    for (let at = 0; at < data.length; at += B) {
      const b = (offset + at) / B;
      const end = Math.min(data.length, at + B);
      if (end - at < B && offset + end !== this.objectSize) break;
      const bytes = data.length <= B ? data : data.slice(at, end);
      this.cache.delete(b);
      this.cache.set(b, bytes);
      if (this.cache.size > this.cacheBlocks) this.cache.delete(this.cache.keys().next().value!);
    }
  }

  /** A large read: pieces of at most maxRequestBytes, each a request of its own, in parallel. */
  private async readDirect(offset: number, out: Uint8Array): Promise<void> {
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < out.length; at += this.maxRequest) {
      const piece = out.subarray(at, Math.min(out.length, at + this.maxRequest));
      pieces.push(
        (async () => {
          await this.acquire();
          try {
            await this.withRetries(() => this.fetchRange(offset + at, piece));
          } finally {
            this.release();
          }
        })(),
      );
    }
    const results = await Promise.allSettled(pieces);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * Have `stop` called with the reason when the source is closed or cancelled (at once if it
   * already is). Returns the function that forgets it.
   */
  private whileOpen(stop: (reason: unknown) => void): () => void {
    if (this.life.signal.aborted) {
      stop(this.life.signal.reason);
      return () => {};
    }
    this.stoppers.add(stop);
    return () => this.stoppers.delete(stop);
  }

  private async acquire(): Promise<void> {
    while (this.active >= this.maxInFlight) {
      await new Promise<void>((resolve, reject) => {
        const forget = this.whileOpen(reject);
        this.slotWaiters.push(() => {
          forget();
          resolve();
        });
      });
    }
    this.checkOpen();
    this.active++;
  }

  private release(): void {
    this.active--;
    this.slotWaiters.shift()?.();
  }

  /** One attempt at `into.length` bytes at `offset`: a 206 with exactly those bytes, or an error. */
  private async fetchRange(offset: number, into: Uint8Array): Promise<void> {
    const end = offset + into.length - 1;
    const extra: Record<string, string> = { Range: `bytes=${offset}-${end}` };
    const v = this.validator;
    if (this.preconditions && v !== null) {
      if ('etag' in v) extra['If-Match'] = v.etag;
      else extra['If-Unmodified-Since'] = v.lastModified;
    }
    const res = await this.send('GET', extra);
    const r = res.response;
    try {
      if (r.status === 412) throw this.changed('the server refused the request made for the pinned version (412)');
      if (r.status === 416) {
        const cr = parseContentRange(r.headers.get('Content-Range'));
        const now = cr && 'unsatisfied' in cr ? `; it is now ${cr.unsatisfied} bytes` : '';
        throw this.changed(`bytes ${offset}-${end} of ${this.objectSize} are no longer there (416)${now}`);
      }
      if (r.status === 200) {
        // A server that stopped serving ranges: usable only for a small object, read whole.
        this.pin(r, true);
        const whole = await this.readWhole(res);
        if (whole.length !== this.objectSize) throw this.changed(`it is now ${whole.length} bytes, was ${this.objectSize}`);
        this.whole = whole;
        into.set(whole.subarray(offset, offset + into.length));
        return;
      }
      if (r.status !== 206) throw this.statusError(r);
      this.pin(r, true);
      this.checkRange(r, offset, into.length, false);
      await this.readBody(res, into, into.length);
    } finally {
      res.done();
    }
  }

  /**
   * Check a 206 answer's Content-Range against the request: it starts at `offset` and holds the
   * asked bytes (fewer only when `probing`, at the object's end); its total is the pinned size.
   * Returns it, or null when the header is absent or hidden.
   */
  private checkRange(r: HttpAnswerHead, offset: number, length: number, probing: boolean): { first: number; last: number; size: number | null } | null {
    if ((r.headers.get('Content-Type') ?? '').toLowerCase().startsWith('multipart/')) {
      throw new VhdxError('EIO', 'BAD_RESPONSE', `${redactUrl(this.url)} answered a single range with a multipart body`);
    }
    const raw = r.headers.get('Content-Range');
    if (raw === null) return null;
    const cr = parseContentRange(raw);
    if (cr === null || 'unsatisfied' in cr) throw new VhdxError('EIO', 'BAD_RESPONSE', `${redactUrl(this.url)} answered with an unreadable Content-Range ${JSON.stringify(raw)}`);
    if (!probing && cr.size !== null && cr.size !== this.objectSize) throw this.changed(`it is now ${cr.size} bytes, was ${this.objectSize}`);
    const wantLast = offset + length - 1;
    if (cr.first !== offset || cr.last > wantLast || (cr.last < wantLast && !(probing && (cr.size === null || cr.last === cr.size - 1)))) {
      throw new VhdxError('EIO', 'BAD_RESPONSE', `${redactUrl(this.url)} answered bytes ${cr.first}-${cr.last} to a request for ${offset}-${wantLast}`);
    }
    return cr;
  }

  /**
   * Read a range answer's body into `into`: `expected` bytes (or, when null, as many as come, at
   * most `into.length`). More bytes than that is BAD_RESPONSE; a body cut short is retried.
   */
  private async readBody(res: Exchange, into: Uint8Array, expected: number | null): Promise<Uint8Array> {
    const got = await res.into(into);
    if (expected !== null && got !== expected) {
      throw new Retryable(`${redactUrl(this.url)}: the answer ended after ${got} of ${expected} bytes`, { code: 'EIO', reason: 'IO_ERROR' });
    }
    return into.subarray(0, got);
  }

  /** A 200 answer: the whole object, accepted up to wholeObjectLimit bytes, else NO_RANGES. */
  private async readWhole(res: Exchange): Promise<Uint8Array> {
    const noRanges = (): VhdxError =>
      new VhdxError(
        'ENOTSUP',
        'NO_RANGES',
        `${redactUrl(this.url)}: the server does not serve byte ranges (it answered a range request with the whole object), and the object is larger than the ${this.wholeLimit} bytes read whole`,
      );
    const len = res.response.headers.get('Content-Length');
    if (len !== null && Number(len) > this.wholeLimit) throw noRanges();
    const parts: Uint8Array[] = [];
    let got = 0;
    await res.chunks((chunk) => {
      got += chunk.length;
      if (got > this.wholeLimit) throw noRanges();
      parts.push(chunk);
    });
    if (len !== null && /^\d+$/.test(len.trim()) && Number(len) !== got) {
      throw new Retryable(`${redactUrl(this.url)}: the answer ended after ${got} of ${len} bytes`, { code: 'EIO', reason: 'IO_ERROR' });
    }
    const whole = new Uint8Array(got);
    let at = 0;
    for (const p of parts) {
      whole.set(p, at);
      at += p.length;
    }
    return whole;
  }

  private statusError(r: HttpAnswerHead): VhdxError | Retryable {
    const what = `${redactUrl(this.url)} answered ${r.status}${r.statusText ? ` ${r.statusText}` : ''}`;
    const s = r.status;
    if (s === 408 || s === 429 || (s >= 500 && s !== 501 && s !== 505)) {
      return new Retryable(what, { code: 'EIO', reason: 'HTTP_STATUS' }, parseRetryAfter(r.headers.get('Retry-After')));
    }
    const code: ErrorCode = s === 404 || s === 410 ? 'ENOENT' : s === 401 || s === 403 ? 'EPERM' : 'EIO';
    return new VhdxError(code, 'HTTP_STATUS', what);
  }

  // --- requests ----------------------------------------------------------------------------------

  /**
   * Send one request with the caller's headers and `extra`; resolves once the answer's headers
   * are in. The attempt is abandoned (a Retryable timeout) when nothing arrives for `timeout` ms,
   * headers or body. `done()` releases the connection when the body was not read to its end.
   */
  private async send(method: 'GET' | 'HEAD', extra: Record<string, string>): Promise<Exchange> {
    this.checkOpen();
    const headers = new Headers(this.headers);
    for (const [k, v] of Object.entries(extra)) headers.set(k, v);
    const ctrl = new AbortController();
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = true;
        ctrl.abort();
      }, this.timeout);
    };
    const life = this.life.signal;
    const forget = this.whileOpen(() => ctrl.abort());
    const done = (): void => {
      clearTimeout(timer);
      forget();
    };
    const failure = (e: unknown): unknown => {
      done();
      if (life.aborted) return life.reason;
      if (e instanceof VhdxError || e instanceof Retryable) return e;
      if (timedOut) return new Retryable(`${redactUrl(this.url)}: no answer for ${this.timeout} ms`, { code: 'EIO', reason: 'TIMED_OUT' });
      return new Retryable(`${redactUrl(this.url)}: ${(e as Error)?.message ?? String(e)}`, { code: 'EIO', reason: 'IO_ERROR' }, null, { cause: e });
    };
    arm();
    this.stats.requests++;
    let answer: HttpAnswer;
    try {
      answer = await this.transport.request(this.url, { method, headers, signal: ctrl.signal });
    } catch (e) {
      throw failure(e);
    }
    arm();
    const stats = this.stats;
    const url = this.url;
    let consumed = false;
    return {
      response: answer,
      async chunks(each: (chunk: Uint8Array) => void): Promise<void> {
        consumed = true;
        try {
          await answer.body((chunk) => {
            arm();
            stats.bytesReceived += chunk.length;
            each(chunk);
          });
        } catch (e) {
          throw failure(e);
        }
      },
      async into(into: Uint8Array): Promise<number> {
        consumed = true;
        try {
          if (answer.bodyInto) {
            return await answer.bodyInto(into, (bytes) => {
              arm();
              stats.bytesReceived += bytes;
            });
          }
          // A transport without bodyInto (fetch): its chunks copied in, bounded by `into`.
          let got = 0;
          await answer.body((chunk) => {
            arm();
            stats.bytesReceived += chunk.length;
            if (got + chunk.length > into.length) throw bodyTooLong(url, into.length);
            into.set(chunk, got);
            got += chunk.length;
          });
          return got;
        } catch (e) {
          throw failure(e);
        }
      },
      done(): void {
        done();
        if (!consumed) answer.cancel();
      },
    };
  }

  /** Run `attempt` until it succeeds, retrying Retryable failures with backoff (or Retry-After). */
  private async withRetries<T>(attempt: () => Promise<T>): Promise<T> {
    for (let n = 0; ; n++) {
      try {
        return await attempt();
      } catch (e) {
        if (!(e instanceof Retryable)) throw e;
        const tries = `${n + 1} attempt${n === 0 ? '' : 's'}`;
        if (n >= this.retries) throw new VhdxError(e.final.code, e.final.reason, `${e.message} (gave up after ${tries})`, { cause: e.cause });
        const backoff = Math.min(this.maxRetryDelay, this.retryDelay * 2 ** n) * (0.5 + Math.random() / 2);
        if (e.retryAfterMs !== null && e.retryAfterMs > this.maxRetryDelay) {
          throw new VhdxError(e.final.code, e.final.reason, `${e.message}: the server asks to retry after ${Math.ceil(e.retryAfterMs / 1000)} s, longer than the ${this.maxRetryDelay} ms allowed`);
        }
        this.stats.retries++;
        await sleep(e.retryAfterMs ?? backoff, (stop) => this.whileOpen(stop));
      }
    }
  }
}

/** One request's answer: its headers, its body read chunk by chunk, and the release of both. */
interface Exchange {
  response: HttpAnswerHead;
  chunks(each: (chunk: Uint8Array) => void): Promise<void>;
  /** The body read into a buffer (straight from the socket where the transport can): its length; more than the buffer holds is BAD_RESPONSE. */
  into(into: Uint8Array): Promise<number>;
  done(): void;
}
