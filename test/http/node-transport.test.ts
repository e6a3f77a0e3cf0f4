// Node's HTTP transport (src/io/http-node.ts, HTTP/1.1 on node:net and node:tls) against a
// scripted server that writes answers byte for byte: the framings (Content-Length, chunked, the
// connection's end), informational answers, HTTP/1.0, kept-alive connections and one the server
// closed, bodies read straight into the caller's buffer across many reads, malformed answers,
// aborts, and TLS with a private certificate authority. The conformance matrix itself runs
// through this transport in source.test.ts and transports.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import type { AddressInfo } from 'node:net';
import * as lib from '../../src/node.js';
import type { HttpAnswer, HttpTransport } from '../../src/node.js';
import { TEST_TLS_CERT, TEST_TLS_KEY } from '../helpers/tls.js';

/** What the scripted server does with a request: write these pieces (a delay in ms between them where a number), then maybe close. */
type Script = (path: string, method: string, headers: Map<string, string>) => { pieces: (string | Uint8Array | number)[]; close?: boolean };

/** Every server-side socket, destroyed at the end (the transports' idle connections would keep the servers open). */
const allSockets = new Set<Socket>();
let script: Script = () => ({ pieces: [] });
let connections = 0;
const requestsSeen: { path: string; headers: Map<string, string> }[] = [];

/** Read requests off a socket one at a time and answer each by the current script. */
function serve(sock: Socket): void {
  connections++;
  allSockets.add(sock);
  sock.on('close', () => allSockets.delete(sock));
  let buf = '';
  let busy = false;
  const next = async (): Promise<void> => {
    if (busy) return;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    busy = true;
    const [line = '', ...rest] = buf.slice(0, end).split('\r\n');
    buf = buf.slice(end + 4);
    const [method = '', path = ''] = line.split(' ');
    const headers = new Map(rest.map((h) => [h.slice(0, h.indexOf(':')).toLowerCase(), h.slice(h.indexOf(':') + 1).trim()] as [string, string]));
    requestsSeen.push({ path, headers });
    const { pieces, close } = script(path, method, headers);
    for (const p of pieces) {
      if (typeof p === 'number') await new Promise((r) => setTimeout(r, p));
      else if (!sock.destroyed) sock.write(p);
    }
    if (close) sock.end();
    busy = false;
    void next();
  };
  sock.on('data', (d) => {
    buf += d.toString('latin1');
    void next();
  });
  sock.on('error', () => {});
}

let plain: Server;
let secure: Server;
let origin = '';
let secureOrigin = '';

before(async () => {
  plain = createNetServer(serve);
  secure = createTlsServer({ cert: TEST_TLS_CERT, key: TEST_TLS_KEY }, serve);
  await Promise.all([plain, secure].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))));
  origin = `http://127.0.0.1:${(plain.address() as AddressInfo).port}`;
  secureOrigin = `https://127.0.0.1:${(secure.address() as AddressInfo).port}`;
});

after(async () => {
  for (const s of allSockets) s.destroy();
  for (const s of [plain, secure]) await new Promise((r) => s.close(r));
});

/** `n` bytes of a pattern. */
function bytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7 + (i >> 9)) & 255;
  return out;
}

function head(status: string, headers: Record<string, string | number>, version = '1.1'): string {
  return `HTTP/${version} ${status}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
}

const GET = (t: HttpTransport, url: string, signal = new AbortController().signal): Promise<HttpAnswer> => t.request(url, { method: 'GET', headers: new Headers({ range: 'bytes=0-' }), signal });

async function chunks(a: HttpAnswer): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await a.body((c) => parts.push(c));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test('a Content-Length body sent in many pieces is read straight into the buffer, over one kept-alive connection', async () => {
  const t = lib.nodeHttpTransport();
  const body = bytes(3 * 1024 * 1024 + 17);
  const pieces: (Uint8Array | number)[] = [];
  for (let at = 0; at < body.length; at += 200_000) pieces.push(body.subarray(at, at + 200_000), 1);
  script = () => ({ pieces: [head('206 Partial Content', { 'Content-Length': body.length, 'Content-Range': `bytes 0-${body.length - 1}/${body.length}` }), ...pieces] });
  const before = connections;
  for (let i = 0; i < 3; i++) {
    const a = await GET(t, `${origin}/x`);
    assert.equal(a.status, 206);
    assert.equal(a.headers.get('content-range'), `bytes 0-${body.length - 1}/${body.length}`);
    const into = new Uint8Array(body.length + 100);
    let progressed = 0;
    assert.equal(await a.bodyInto!(into, (n) => (progressed += n)), body.length);
    assert.equal(progressed, body.length, 'progress counts every byte');
    assert.deepEqual(into.subarray(0, body.length), body);
  }
  assert.equal(connections - before, 1, 'three requests, one connection');
  // The same answer read in chunks.
  const a = await GET(t, `${origin}/x`);
  assert.deepEqual(await chunks(a), body);
});

test('a chunked body (with extensions and a trailer) and a body that runs to the connection\'s end', async () => {
  const t = lib.nodeHttpTransport();
  const body = bytes(100_000, 2);
  script = () => ({
    pieces: [
      head('200 OK', { 'Transfer-Encoding': 'chunked' }),
      `${(70_000).toString(16)};ext=1\r\n`,
      body.subarray(0, 30_000),
      2,
      body.subarray(30_000, 70_000),
      `\r\n${(30_000).toString(16).toUpperCase()}\r\n`,
      body.subarray(70_000),
      '\r\n0\r\nX-Trailer: yes\r\n\r\n',
    ],
  });
  assert.deepEqual(await chunks(await GET(t, `${origin}/c`)), body);
  const into = new Uint8Array(200_000);
  assert.equal(await (await GET(t, `${origin}/c`)).bodyInto!(into, () => {}), body.length);
  assert.deepEqual(into.subarray(0, body.length), body);
  // Longer than the buffer: BAD_RESPONSE.
  await assert.rejects((await GET(t, `${origin}/c`)).bodyInto!(new Uint8Array(99_999), () => {}), { name: 'VhdxError', reason: 'BAD_RESPONSE' });

  script = () => ({ pieces: [head('200 OK', { Connection: 'close' }), body.subarray(0, 50_000), 5, body.subarray(50_000)], close: true });
  const before = connections;
  assert.deepEqual(await chunks(await GET(t, `${origin}/e`)), body);
  assert.deepEqual(await chunks(await GET(t, `${origin}/e`)), body);
  assert.equal(connections - before, 2, 'a connection that closes is not reused');
});

test('informational answers are skipped; HTTP/1.0 answers close unless kept alive; HEAD, 204 and 304 have no body', async () => {
  const t = lib.nodeHttpTransport();
  const body = bytes(5000, 3);
  script = (path, method) => {
    if (path === '/continue') return { pieces: [head('100 Continue', {}), head('103 Early Hints', { Link: '</x>' }), head('206 Partial Content', { 'Content-Length': body.length }), body] };
    if (path === '/old') return { pieces: [head('200 OK', { 'Content-Length': body.length }, '1.0'), body] };
    if (path === '/old-kept') return { pieces: [head('200 OK', { 'Content-Length': body.length, Connection: 'keep-alive' }, '1.0'), body] };
    if (path === '/204') return { pieces: [head('204 No Content', {})] };
    return { pieces: [head('200 OK', { 'Content-Length': method === 'HEAD' ? 12345 : body.length }), ...(method === 'HEAD' ? [] : [body])] };
  };
  const a = await GET(t, `${origin}/continue`);
  assert.equal(a.status, 206);
  assert.deepEqual(await chunks(a), body);
  // The first goes on the kept-alive connection, which the HTTP/1.0 answer then closes.
  let before = connections;
  await chunks(await GET(t, `${origin}/old`));
  await chunks(await GET(t, `${origin}/old`));
  await chunks(await GET(t, `${origin}/old-kept`));
  await chunks(await GET(t, `${origin}/old-kept`));
  assert.equal(connections - before, 2, 'HTTP/1.0: closed after each answer unless kept alive');
  before = connections;
  const h = await t.request(`${origin}/head`, { method: 'HEAD', headers: new Headers(), signal: new AbortController().signal });
  assert.equal(h.headers.get('Content-Length'), '12345');
  assert.equal((await chunks(h)).length, 0);
  const n = await GET(t, `${origin}/204`);
  assert.equal(n.status, 204);
  assert.equal((await chunks(n)).length, 0);
  assert.deepEqual(await chunks(await GET(t, `${origin}/after`)), body);
  assert.equal(connections - before, 0, 'bodiless answers keep the (HTTP/1.0 kept-alive) connection');
});

/** The server's sockets, to close them as a server's keep-alive timeout does. */
const serverSockets = new Set<Socket>();
before(() => {
  plain.on('connection', (s: Socket) => {
    serverSockets.add(s);
    s.on('close', () => serverSockets.delete(s));
  });
});

test('a kept-alive connection the server closed is replaced without an error; an answer dropped unread keeps its connection', async () => {
  const t = lib.nodeHttpTransport();
  const body = bytes(1000, 4);
  script = () => ({ pieces: [Buffer.concat([Buffer.from(head('200 OK', { 'Content-Length': body.length })), body])] });
  assert.deepEqual(await chunks(await GET(t, `${origin}/a`)), body);
  for (const s of serverSockets) s.end();
  await new Promise((r) => setTimeout(r, 50));
  let before = connections;
  assert.deepEqual(await chunks(await GET(t, `${origin}/b`)), body);
  assert.equal(connections - before, 1, 'a new connection');
  // The server closes it just as it is reused: the request goes again on a new one.
  before = connections;
  const closing = [...serverSockets];
  const next = GET(t, `${origin}/c`);
  for (const s of closing) s.destroy();
  assert.deepEqual(await chunks(await next), body);
  assert.ok(connections - before >= 1);
  // An answer dropped unread whose body is all in: the connection is kept.
  before = connections;
  const dropped = await GET(t, `${origin}/d`);
  await new Promise((r) => setTimeout(r, 20));
  dropped.cancel();
  assert.deepEqual(await chunks(await GET(t, `${origin}/e`)), body);
  assert.equal(connections - before, 0, 'the dropped answer\'s connection served the next request');
});

test('malformed answers are errors: status line, header line, Content-Length, chunk size, a head over 64 KiB, a body longer than asked, a cut body', async () => {
  const t = lib.nodeHttpTransport();
  const cases: [string, (string | Uint8Array | number)[], RegExp][] = [
    ['/status', ['HTTP/2 200 OK\r\n\r\n'], /not an HTTP\/1 answer/],
    ['/line', ['HTTP/1.1 200 OK\r\nno colon here\r\n\r\n'], /unreadable header/],
    ['/length', [head('200 OK', { 'Content-Length': '12, 13' })], /unreadable Content-Length/],
    ['/huge', [`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`], /larger than 65536/],
  ];
  for (const [path, pieces, message] of cases) {
    script = () => ({ pieces });
    await assert.rejects(GET(t, origin + path), message, path);
  }
  script = () => ({ pieces: [head('200 OK', { 'Transfer-Encoding': 'chunked' }), 'zz\r\n'] });
  await assert.rejects(chunks(await GET(t, `${origin}/chunk`)), /unreadable chunk size/);
  script = () => ({ pieces: [head('206 Partial Content', { 'Content-Length': 5000 }), bytes(5000)] });
  await assert.rejects((await GET(t, `${origin}/long`)).bodyInto!(new Uint8Array(4000), () => {}), { name: 'VhdxError', reason: 'BAD_RESPONSE' });
  script = () => ({ pieces: [head('206 Partial Content', { 'Content-Length': 5000 }), bytes(3000)], close: true });
  await assert.rejects((await GET(t, `${origin}/cut`)).bodyInto!(new Uint8Array(5000), () => {}), /closed before the answer ended/);
});

test('an abort ends the request and its body; caller headers go out, Authorization from URL credentials', async () => {
  const t = lib.nodeHttpTransport();
  script = () => ({ pieces: [head('206 Partial Content', { 'Content-Length': 10_000 }), bytes(1000), 300] });
  const ctrl = new AbortController();
  const a = await GET(t, `${origin}/slow`, ctrl.signal);
  const reading = a.bodyInto!(new Uint8Array(10_000), () => ctrl.abort(new Error('stop')));
  await assert.rejects(reading, /stop/);
  const early = new AbortController();
  early.abort(new Error('before'));
  await assert.rejects(GET(t, `${origin}/slow`, early.signal), /before/);

  script = () => ({ pieces: [head('200 OK', { 'Content-Length': 0 })] });
  requestsSeen.length = 0;
  await t.request(`http://us%40r:p%3Ass@127.0.0.1:${new URL(origin).port}/q?sig=1`, { method: 'GET', headers: new Headers({ 'x-ms-version': '2021', connection: 'close' }), signal: new AbortController().signal });
  const seen = requestsSeen[0]!;
  assert.equal(seen.path, '/q?sig=1');
  assert.equal(seen.headers.get('x-ms-version'), '2021');
  assert.equal(seen.headers.get('host'), `127.0.0.1:${new URL(origin).port}`);
  assert.equal(seen.headers.get('authorization'), `Basic ${Buffer.from('us@r:p:ss').toString('base64')}`);
  assert.equal(seen.headers.get('connection'), undefined, 'the transport keeps its own connection handling');
});

test('https: a private certificate authority through the tls option; an untrusted certificate is refused', async () => {
  const body = bytes(300_000, 5);
  script = () => ({ pieces: [head('206 Partial Content', { 'Content-Length': body.length, 'Content-Range': `bytes 0-${body.length - 1}/${body.length}`, ETag: '"v1"' }), body.subarray(0, 100_000), 2, body.subarray(100_000)] });
  const t = lib.nodeHttpTransport({ tls: { ca: TEST_TLS_CERT } });
  const into = new Uint8Array(body.length);
  assert.equal(await (await GET(t, `${secureOrigin}/s`)).bodyInto!(into, () => {}), body.length);
  assert.deepEqual(into, body);
  // Through the source, with the transport given.
  const src = await lib.HttpSource.open(`${secureOrigin}/s`, { transport: t, firstRequestBytes: body.length, retries: 0 });
  const got = new Uint8Array(1000);
  await src.read(5000, got);
  assert.deepEqual(got, body.subarray(5000, 6000));
  await src.close();
  await assert.rejects(GET(lib.nodeHttpTransport(), `${secureOrigin}/s`), /self-signed|certificate/);
});

test('a NUL in an answer\'s head is refused, as fetch refuses it: an ETag holding one never reaches the If-Match of the next request', async () => {
  // Found by the http-wire fuzz target (fuzz/crashes/http-wire/untyped-TypeError-b2e04d60.gz):
  // the source sent the validator back in If-Match, where Headers threw a TypeError.
  const t = lib.nodeHttpTransport();
  for (const [path, line] of [['/etag', 'ETag: "a\0b"'], ['/fold', 'X-A: a\r\n \0'], ['/status', 'X-B: b']] as const) {
    const status = path === '/status' ? '206 Part\0ial' : '206 Partial Content';
    script = () => ({ pieces: [`HTTP/1.1 ${status}\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n${line}\r\n\r\n0123456789`] });
    await assert.rejects(GET(t, origin + path), /NUL/, path);
  }
  // Through the source: the first range's ETag would go back in the If-Match of the second.
  const block = bytes(4096, 6);
  script = (_path, _method, headers) => {
    const from = Number(/bytes=(\d+)-/.exec(headers.get('range') ?? '')?.[1] ?? 0);
    return { pieces: [`HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${from}-${from + 4095}/65536\r\nContent-Length: 4096\r\nETag: "a\0b"\r\n\r\n`, block] };
  };
  const reading = (async () => {
    const src = await lib.HttpSource.open(`${origin}/src`, { transport: t, retries: 0, blockSize: 4096, firstRequestBytes: 4096 });
    try {
      await src.read(8192, new Uint8Array(100));
    } finally {
      await src.close();
    }
  })();
  await assert.rejects(reading, { name: 'VhdxError' });
});

test('a head trickling in a few bytes at a time is read; an answer naming both framings does not keep its connection', async () => {
  const t = lib.nodeHttpTransport();
  const body = bytes(3000, 6);
  const h = head('200 OK', { 'Content-Length': body.length, 'X-Pad': 'p'.repeat(200) });
  const pieces: (string | number)[] = [];
  for (let at = 0; at < h.length; at += 7) pieces.push(h.slice(at, at + 7), 0);
  script = () => ({ pieces: [...pieces, Buffer.from(body) as Uint8Array] });
  assert.deepEqual(await chunks(await GET(t, `${origin}/trickle`)), body);
  const chunked = `${body.length.toString(16)}\r\n`;
  script = () => ({ pieces: [head('200 OK', { 'Transfer-Encoding': 'chunked', 'Content-Length': 5 }), chunked, body, '\r\n0\r\n\r\n'] });
  const before = connections;
  assert.deepEqual(await chunks(await GET(t, `${origin}/both`)), body);
  assert.deepEqual(await chunks(await GET(t, `${origin}/both`)), body);
  // The first goes on the kept-alive connection of the trickled answer, which it then closes.
  assert.equal(connections - before, 1, 'the chunked framing read, the connection not reused');
});
