// The HTTP source's conformance matrix: one list of cases run by Node (test/http/source.test.ts)
// and, unchanged, inside headless Chromium (test/http/browser.test.ts). Browser-safe: no Node API.
// Each case gets `ctx`: { lib (the library's exports), base and other (the two origins of the test
// server), env ('node' | 'browser'), counts(path) (the server's request counts for an object) }.
// Its imports are types only: the compiled module imports nothing.
import type * as Lib from '../../src/index.js';
import type { VhdxError } from '../../src/index.js';
import type { RequestCounts } from '../helpers/http-server.js';

/** What every case is given (see the top of this file). */
export interface Ctx {
  lib: typeof Lib;
  base: string;
  other: string;
  env: 'node' | 'browser';
  counts(path: string): Promise<RequestCounts>;
}

/** One case of the matrix. */
export interface Case {
  name: string;
  run(ctx: Ctx): Promise<void>;
}

/** Deterministic bytes (xorshift32) for the served objects, the same on both sides. */
export function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x;
    out[i + 1] = x >>> 8;
    out[i + 2] = x >>> 16;
    out[i + 3] = x >>> 24;
  }
  return out;
}

export const BLOB_SIZE = 3 * 1024 * 1024 + 777;
export const SMALL_SIZE = 100_000;
const MiB = 1024 * 1024;

/** The objects the server holds for the matrix (the VHDX images are made by the Node side). */
export function matrixObjects(): Record<string, Uint8Array> {
  return { 'blob.bin': pattern(BLOB_SIZE, 1), 'small.bin': pattern(SMALL_SIZE, 2), 'empty.bin': new Uint8Array(0) };
}

/** The virtual disk of disk.vhdx: pattern data in two places, zeros elsewhere. */
export function diskContent(): Uint8Array {
  const d = new Uint8Array(16 * MiB);
  d.set(pattern(2 * MiB, 3), 1 * MiB);
  d.set(pattern(MiB / 2, 4), 9.5 * MiB);
  return d;
}

/** The virtual disk of chain/child.vhdx: the base's content with the child's writes over it. */
export function chainContent(): Uint8Array {
  const d = diskContent();
  d.set(pattern(MiB, 5), 2 * MiB + 4096);
  d.set(pattern(8192, 6), 12 * MiB);
  return d;
}

function fail(msg: string): never {
  throw new Error(msg);
}

function equalBytes(a: Uint8Array, b: Uint8Array, what: string): void {
  if (a.length !== b.length) fail(`${what}: ${a.length} bytes, expected ${b.length}`);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) fail(`${what}: byte ${i} is ${a[i]}, expected ${b[i]}`);
}

function eq<T>(actual: T, expected: T, what: string): void {
  if (actual !== expected) fail(`${what}: ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}

/** Whether `e` is a VhdxError, by its name (the library may be another copy than the caller's). */
function isVhdxError(e: unknown): e is VhdxError {
  return e instanceof Error && e.name === 'VhdxError';
}

/** Run `fn`, which must fail with a VhdxError of `reason` (and `code`, when given). */
async function rejects(fn: () => Promise<unknown>, reason: string, code?: string): Promise<VhdxError> {
  try {
    await fn();
  } catch (e) {
    if (!isVhdxError(e)) fail(`expected a VhdxError ${reason}, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    eq(e.reason, reason, `reason of "${e.message}"`);
    if (code) eq(e.code, code, `code of "${e.message}"`);
    return e;
  }
  fail(`expected a VhdxError ${reason}, but it succeeded`);
}

async function readAt(src: { read(offset: number, into: Uint8Array): Promise<number> }, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  const n = await src.read(offset, b);
  return b.subarray(0, n);
}

/**
 * Options for tests: short backoff. The timeout stays long enough that a loaded machine never
 * times out an answer that is coming; only the stall cases shorten it (see there).
 */
const FAST = { retryDelay: 1, maxRetryDelay: 50, timeout: 5000 };

let unique = 0;
/** An object path with `switches`, unique so the server's per-path counters start at zero. */
function path(switches: string, name: string): string {
  unique++;
  return `/o/${switches ? `${switches},n=${unique}` : `n=${unique}`}/${name}`;
}

export const cases: Case[] = [
  {
    name: '206: any range reads byte-exact, the size comes from Content-Range, no HEAD is made',
    async run({ lib, base, counts }: Ctx) {
      const p = path('', 'blob.bin');
      const src = await lib.HttpSource.open(base + p, FAST);
      const expect = pattern(BLOB_SIZE, 1);
      eq(src.size, BLOB_SIZE, 'size');
      eq('etag' in (src.validator ?? {}), true, 'pinned by ETag');
      for (const [o, n] of [[0, 10], [65530, 20], [BLOB_SIZE - 5, 5], [1234567, 200000], [100, 2 * MiB], [BLOB_SIZE - 100, 1000]] as const) {
        const got = await readAt(src, o, n);
        equalBytes(got, expect.subarray(o, Math.min(BLOB_SIZE, o + n)), `read ${o}+${n}`);
      }
      eq((await readAt(src, BLOB_SIZE, 10)).length, 0, 'read at the end');
      const c = await counts(p);
      eq(c.HEAD, 0, 'HEAD requests');
      eq(src.stats.requests, c.GET, 'requests counted = requests the server saw');
      await src.close();
      await rejects(() => readAt(src, 0, 1), 'CLOSED');
    },
  },
  {
    name: 'small reads together share a request; sequential small reads read ahead; cached bytes cost nothing',
    async run({ lib, base }: Ctx) {
      const src = await lib.HttpSource.open(base + path('', 'blob.bin'), { ...FAST, firstRequestBytes: 4096 });
      const expect = pattern(BLOB_SIZE, 1);
      // 16 adjacent 4 KiB reads issued at once, past the first request: one more request.
      const reads = Array.from({ length: 16 }, (_, i) => readAt(src, MiB + i * 4096, 4096));
      const got = await Promise.all(reads);
      got.forEach((g, i) => equalBytes(g, expect.subarray(MiB + i * 4096, MiB + (i + 1) * 4096), `piece ${i}`));
      eq(src.stats.requests, 2, 'requests after 16 adjacent reads');
      // 64 sequential 4 KiB reads (256 KiB) from 2 MiB: read-ahead makes them far fewer requests.
      const before = src.stats.requests;
      for (let i = 0; i < 64; i++) equalBytes(await readAt(src, 2 * MiB + i * 4096, 4096), expect.subarray(2 * MiB + i * 4096, 2 * MiB + (i + 1) * 4096), `seq ${i}`);
      const sequential = src.stats.requests - before;
      if (sequential > 6) fail(`64 sequential reads took ${sequential} requests`);
      const again = src.stats.requests;
      await readAt(src, MiB, 4096);
      eq(src.stats.requests, again, 'a cached read made a request');
      await src.close();
    },
  },
  {
    name: 'a table read and then its few small items (VHDX metadata) asks for no read-ahead',
    async run({ lib, base }: Ctx) {
      const src = await lib.HttpSource.open(base + path('', 'blob.bin'), { ...FAST, firstRequestBytes: 4096 });
      const expect = pattern(BLOB_SIZE, 1);
      const B = 64 * 1024;
      // The metadata table (one block), then its items just after it, each continuing the last.
      equalBytes(await readAt(src, 2 * MiB, B), expect.subarray(2 * MiB, 2 * MiB + B), 'table');
      let at = 2 * MiB + B;
      for (const n of [8, 8, 16, 4, 4]) {
        equalBytes(await readAt(src, at, n), expect.subarray(at, at + n), `item at ${at}`);
        at += n;
      }
      eq(src.stats.requests, 3, 'requests: the first, the table block, the items block');
      eq(src.stats.bytesReceived, 4096 + 2 * B, 'bytes received');
      await src.close();
    },
  },
  {
    name: 'the cache holds at most cacheBytes; large reads split into requests of maxRequestBytes, at most maxInFlight at once',
    async run({ lib, base, counts }: Ctx) {
      const p = path('', 'blob.bin');
      const B = 64 * 1024;
      const src = await lib.HttpSource.open(base + p, { ...FAST, firstRequestBytes: B, cacheBytes: 4 * B, maxRequestBytes: 256 * 1024, maxInFlight: 2 });
      const expect = pattern(BLOB_SIZE, 1);
      // Blocks 5, 13, ..., 45 (not in sequence: no read-ahead), then block 5 again: evicted.
      for (let b = 5; b <= 45; b += 8) await readAt(src, b * B, 100);
      const before = src.stats.requests;
      eq(before, 7, 'requests for the first block and 6 more');
      await readAt(src, 45 * B, 100);
      eq(src.stats.requests, before, 'the newest block is cached');
      await readAt(src, 5 * B, 100);
      eq(src.stats.requests, before + 1, 'the oldest block was evicted');
      const start = src.stats.requests;
      equalBytes(await readAt(src, 0, 3 * MiB), expect.subarray(0, 3 * MiB), 'large read');
      eq(src.stats.requests - start, 12, 'requests of 256 KiB for 3 MiB');
      const c = await counts(p);
      if ((c.maxInFlight ?? 0) > 2) fail(`${c.maxInFlight} requests in flight at once`);
      await src.close();
    },
  },
  {
    name: 'a server without ranges (200): a small object is read whole, a large one is NO_RANGES',
    async run({ lib, base }: Ctx) {
      const src = await lib.HttpSource.open(base + path('no-ranges', 'small.bin'), FAST);
      eq(src.size, SMALL_SIZE, 'size');
      equalBytes(await readAt(src, 5000, 3000), pattern(SMALL_SIZE, 2).subarray(5000, 8000), 'bytes');
      eq(src.stats.requests, 1, 'requests');
      await src.close();
      const e = await rejects(() => lib.HttpSource.open(base + path('no-ranges', 'blob.bin'), { ...FAST, wholeObjectLimit: MiB }), 'NO_RANGES', 'ENOTSUP');
      if (!/does not serve byte ranges/.test(e.message)) fail(`message: ${e.message}`);
    },
  },
  {
    name: '416: a short object is read after the 416 names its size; an empty object has size 0',
    async run({ lib, base }: Ctx) {
      const src = await lib.HttpSource.open(base + path('short416', 'small.bin'), { ...FAST, firstRequestBytes: 256 * 1024 });
      eq(src.size, SMALL_SIZE, 'size');
      equalBytes(await readAt(src, 0, SMALL_SIZE), pattern(SMALL_SIZE, 2), 'bytes');
      await src.close();
      const empty = await lib.HttpSource.open(base + path('', 'empty.bin'), FAST);
      eq(empty.size, 0, 'empty size');
      eq((await readAt(empty, 0, 10)).length, 0, 'empty read');
      await empty.close();
    },
  },
  {
    name: 'an object that changes mid-read is SOURCE_CHANGED: by If-Match (412), by comparing ETags, by Last-Modified',
    async run({ lib, base, counts }: Ctx) {
      for (const sw of ['change=1', 'change=1,ignore-if-match', 'change=1,weak-etag', 'change=1,weak-etag,ignore-if-match']) {
        const p = path(sw, 'blob.bin');
        const src = await lib.HttpSource.open(base + p, { ...FAST, firstRequestBytes: 4096 });
        await rejects(() => readAt(src, MiB, 4096), 'SOURCE_CHANGED', 'EIO');
        await rejects(() => readAt(src, 2 * MiB, MiB), 'SOURCE_CHANGED', 'EIO');
        await src.close();
        if (sw === 'change=1') eq((await counts(p)).ifMatch > 0, true, 'If-Match sent');
      }
    },
  },
  {
    name: 'Content-Range and ETag missing (hidden by CORS): size from HEAD, pinned by Last-Modified; without HEAD, SIZE_UNKNOWN unless the size is given',
    async run({ lib, base }: Ctx) {
      const p = path('hide-headers', 'blob.bin');
      const src = await lib.HttpSource.open(base + p, FAST);
      eq(src.size, BLOB_SIZE, 'size');
      eq('lastModified' in (src.validator ?? {}), true, 'pinned by Last-Modified');
      equalBytes(await readAt(src, MiB, 5000), pattern(BLOB_SIZE, 1).subarray(MiB, MiB + 5000), 'bytes');
      await src.close();
      await rejects(() => lib.HttpSource.open(base + path('hide-headers,no-head', 'blob.bin'), FAST), 'SIZE_UNKNOWN');
      const sized = await lib.HttpSource.open(base + path('hide-headers,no-head', 'blob.bin'), { ...FAST, size: BLOB_SIZE });
      equalBytes(await readAt(sized, BLOB_SIZE - 10, 10), pattern(BLOB_SIZE, 1).subarray(BLOB_SIZE - 10), 'bytes at the end');
      await sized.close();
      // A short object needs no HEAD even then: the answer is shorter than the request.
      const small = await lib.HttpSource.open(base + path('hide-headers,no-head', 'small.bin'), FAST);
      eq(small.size, SMALL_SIZE, 'small size');
      await small.close();
    },
  },
  {
    name: 'HEAD forbidden (presigned GET URL): opening needs no HEAD',
    async run({ lib, base }: Ctx) {
      const src = await lib.HttpSource.open(base + path('no-head', 'blob.bin'), FAST);
      eq(src.size, BLOB_SIZE, 'size');
      await src.close();
    },
  },
  {
    name: 'connection reset mid-body: retried to exact bytes; resets on every attempt end as IO_ERROR',
    async run({ lib, base }: Ctx) {
      const src = await lib.HttpSource.open(base + path('reset=2', 'blob.bin'), FAST);
      equalBytes(await readAt(src, 0, 200000), pattern(BLOB_SIZE, 1).subarray(0, 200000), 'bytes');
      eq(src.stats.retries, 2, 'retries');
      await src.close();
      await rejects(() => lib.HttpSource.open(base + path('reset=99', 'blob.bin'), { ...FAST, retries: 2 }), 'IO_ERROR', 'EIO');
    },
  },
  {
    name: 'a slow server: a stalled answer or body times out and is retried; stalling forever is TIMED_OUT',
    async run({ lib, base }: Ctx) {
      for (const sw of ['stall=1', 'stall-body=1']) {
        // The stalled attempt costs the whole timeout. (On a loaded machine a later attempt
        // might time out too: that is one retry more, not a failure.)
        const src = await lib.HttpSource.open(base + path(sw, 'blob.bin'), { ...FAST, timeout: 500 });
        equalBytes(await readAt(src, 0, 1000), pattern(BLOB_SIZE, 1).subarray(0, 1000), `${sw} bytes`);
        if (src.stats.retries < 1) fail(`${sw}: no retry`);
        await src.close();
      }
      await rejects(() => lib.HttpSource.open(base + path('stall=99', 'blob.bin'), { ...FAST, timeout: 200, retries: 1 }), 'TIMED_OUT', 'EIO');
    },
  },
  {
    name: '503 and 429 are retried (Retry-After honoured); a Retry-After beyond the limit, 404 and 403 are not',
    async run({ lib, base }: Ctx) {
      for (const sw of ['status=503:2', 'status=429:1']) {
        const src = await lib.HttpSource.open(base + path(sw, 'small.bin'), FAST);
        eq(src.size, SMALL_SIZE, `${sw} size`);
        await src.close();
      }
      const e = await rejects(() => lib.HttpSource.open(base + path('status=503:1,retry-after=3600', 'small.bin'), FAST), 'HTTP_STATUS', 'EIO');
      if (!/retry after 3600 s/.test(e.message)) fail(`message: ${e.message}`);
      await rejects(() => lib.HttpSource.open(base + path('', 'missing.bin'), FAST), 'HTTP_STATUS', 'ENOENT');
      await rejects(() => lib.HttpSource.open(base + path('sig=abc', 'small.bin'), FAST), 'HTTP_STATUS', 'EPERM');
    },
  },
  {
    name: 'caller headers and query strings (SAS tokens, presigned URLs) reach the server; messages hide the query',
    async run({ lib, base }: Ctx) {
      const p = path('sig=s3cr3t,auth=tok', 'small.bin');
      const e = await rejects(() => lib.HttpSource.open(`${base}${p}?sig=s3cr3t`, FAST), 'HTTP_STATUS', 'EPERM');
      if (e.message.includes('?sig=')) fail(`the message shows the query: ${e.message}`);
      const src = await lib.HttpSource.open(`${base}${p}?sig=s3cr3t`, { ...FAST, headers: { Authorization: 'Bearer tok' } });
      equalBytes(await readAt(src, 0, SMALL_SIZE), pattern(SMALL_SIZE, 2), 'bytes');
      await src.close();
    },
  },
  {
    name: 'a VHDX image opens over HTTP read-only and reads its virtual disk; a writable open is refused',
    async run({ lib, base }: Ctx) {
      const url = base + path('', 'disk.vhdx');
      const img = await lib.openUrl(url, { http: FAST });
      const expect = diskContent();
      eq(img.size, expect.length, 'virtual size');
      const got = new Uint8Array(expect.length);
      await img.read(0, got);
      equalBytes(got, expect, 'virtual disk');
      await img.close();
      await rejects(() => lib.openUrl(url, { http: FAST, readOnly: false }), 'READ_ONLY', 'EROFS');
      const src = await lib.HttpSource.open(url, FAST);
      await rejects(() => lib.VhdxImage.open(src, { readOnly: false }), 'READ_ONLY', 'EROFS');
      await src.close();
    },
  },
  {
    name: "a differencing image's parent is found beside it (with the child's query), never on another origin unless allowed",
    async run({ lib, base, other, counts }: Ctx) {
      const expect = chainContent();
      const p = path('sig=t', 'chain/child.vhdx');
      const stats = { requests: 0, bytesReceived: 0, retries: 0 };
      const img = await lib.openUrl(`${base}${p}?sig=t`, { http: { ...FAST, stats } });
      eq(img.parent !== null, true, 'parent opened');
      const got = new Uint8Array(expect.length);
      await img.read(0, got);
      equalBytes(got, expect, 'chain content');
      await img.close();
      const child = (await counts(p)).GET;
      const parent = (await counts(p.replace('child.vhdx', 'base.vhdx'))).GET;
      if (!(child > 0 && parent > 0 && stats.requests >= child + parent)) fail(`stats count ${stats.requests} requests, the server saw ${child} + ${parent}`);
      // The resolver alone, for an image opened from a source of one's own.
      const own = await lib.VhdxImage.open(await lib.HttpSource.open(`${base}${p}?sig=t`, FAST), { parent: lib.urlParentResolver(`${base}${p}?sig=t`, { http: FAST }) });
      eq(own.parent?.size, expect.length, 'parent through urlParentResolver');
      await own.close();
      await rejects(() => lib.openUrl(`${base}${p}?sig=t`, { http: FAST, parentQuery: 'none' }), 'HTTP_STATUS', 'EPERM');
      await rejects(() => lib.openUrl(base + path('', 'orphan/child.vhdx'), { http: FAST }), 'PARENT_NOT_FOUND', 'ENOENT');
      const port = new URL(other).port;
      await rejects(() => lib.openUrl(base + path(`redirect-parent=${port}`, 'chain/child.vhdx'), { http: FAST }), 'PARENT_NOT_ALLOWED', 'EPERM');
      const any = await lib.openUrl(base + path(`redirect-parent=${port}`, 'chain/child.vhdx'), { http: FAST, parents: 'any' });
      await any.read(0, got);
      equalBytes(got, expect, 'chain content through another origin');
      await any.close();
      const alone = await lib.openUrl(base + path('', 'chain/child.vhdx'), { http: FAST, parents: 'none' });
      eq(alone.parent, null, 'no parent with parents none');
      await alone.close();
    },
  },
  {
    name: 'an aborted signal cancels the reads (ECANCELED)',
    async run({ lib, base }: Ctx) {
      const ctrl = new AbortController();
      const src = await lib.HttpSource.open(base + path('stall-body=9,skip=1', 'blob.bin'), { ...FAST, firstRequestBytes: 4096, signal: ctrl.signal, timeout: 60_000 });
      const pending = readAt(src, MiB, MiB);
      setTimeout(() => ctrl.abort(), 50);
      await rejects(() => pending, 'ABORTED', 'ECANCELED');
      await src.close();
    },
  },
];

/** CORS cases: only a browser enforces CORS, so only it runs these (against the other origin). */
export const corsCases: Case[] = [
  {
    name: 'CORS: a cross-origin range read needs no preflight, and reads exact bytes pinned by the exposed ETag',
    async run({ lib, other, counts }: Ctx) {
      const p = path('', 'blob.bin');
      const src = await lib.HttpSource.open(other + p, FAST);
      eq(src.size, BLOB_SIZE, 'size');
      eq('etag' in (src.validator ?? {}), true, 'pinned by ETag');
      equalBytes(await readAt(src, MiB, 300000), pattern(BLOB_SIZE, 1).subarray(MiB, MiB + 300000), 'bytes');
      const c = await counts(p);
      eq(c.OPTIONS, 0, 'preflights');
      eq(c.ifMatch, 0, 'If-Match sent cross-origin');
      await src.close();
      const changed = await lib.HttpSource.open(other + path('change=1', 'blob.bin'), { ...FAST, firstRequestBytes: 4096 });
      await rejects(() => readAt(changed, MiB, 4096), 'SOURCE_CHANGED', 'EIO');
      await changed.close();
    },
  },
  {
    name: 'CORS without exposed Content-Range/ETag: size from HEAD, pinned by Last-Modified; with HEAD forbidden too, SIZE_UNKNOWN',
    async run({ lib, other }: Ctx) {
      const src = await lib.HttpSource.open(other + path('no-expose', 'blob.bin'), FAST);
      eq(src.size, BLOB_SIZE, 'size');
      eq('lastModified' in (src.validator ?? {}), true, 'pinned by Last-Modified');
      equalBytes(await readAt(src, BLOB_SIZE - 3000, 3000), pattern(BLOB_SIZE, 1).subarray(BLOB_SIZE - 3000), 'bytes');
      await src.close();
      await rejects(() => lib.HttpSource.open(other + path('no-expose,no-head', 'blob.bin'), FAST), 'SIZE_UNKNOWN');
      const changed = await lib.HttpSource.open(other + path('no-expose,change=1', 'blob.bin'), { ...FAST, firstRequestBytes: 4096 });
      await rejects(() => readAt(changed, MiB, 4096), 'SOURCE_CHANGED', 'EIO');
      await changed.close();
    },
  },
];

/** Run every case (in a browser page); returns one { name, error } per case. */
export async function runAll(ctx: Ctx, list: readonly Case[]): Promise<{ name: string; error: string | null }[]> {
  const out: { name: string; error: string | null }[] = [];
  for (const c of list) {
    try {
      await c.run(ctx);
      out.push({ name: c.name, error: null });
    } catch (e) {
      out.push({ name: c.name, error: e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e) });
    }
  }
  return out;
}
