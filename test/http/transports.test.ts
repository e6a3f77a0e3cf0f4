// The HTTP source's two transports in Node. source.test.ts runs the conformance matrix with the
// default one, node:http(s) (src/io/http-node.ts, installed by the Node entry); this file runs the
// same matrix through fetch (fetchTransport: the browser's, and Node's fallback), and checks what
// the node transport does by itself: redirects as fetch follows them (credentials dropped on the
// way to another origin), kept-alive connections, and an answer dropped unread.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as lib from '../../src/node.js';
import type { HttpSourceOptions, HttpTransport, OpenUrlOptions } from '../../src/node.js';
import { startRangeServer, type RangeServer } from '../helpers/http-server.js';
import { makeMatrixImages } from '../helpers/http-images.js';
import { cases, matrixObjects, pattern, SMALL_SIZE, type Ctx } from './matrix.js';

let server: RangeServer;
let dir: string;

before(async () => {
  server = await startRangeServer();
  dir = mkdtempSync(join(tmpdir(), 'vhdx-http-t-'));
  for (const [name, bytes] of Object.entries(matrixObjects())) server.objects.set(name, { bytes });
  for (const [name, o] of Object.entries(await makeMatrixImages(dir))) server.objects.set(name, o);
});

after(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The library as the matrix uses it, with every HTTP source on `transport`. */
function libWith(transport: HttpTransport): typeof lib {
  const http = (o: OpenUrlOptions = {}): OpenUrlOptions => ({ ...o, http: { transport, ...o.http } });
  const HttpSource = { open: (url: string, o: HttpSourceOptions = {}) => lib.HttpSource.open(url, { transport, ...o }) };
  return {
    ...lib,
    HttpSource: HttpSource as typeof lib.HttpSource,
    openUrl: (url: string, o?: OpenUrlOptions) => lib.openUrl(url, http(o)),
    urlParentResolver: (url: string, o?: OpenUrlOptions) => lib.urlParentResolver(url, http(o)),
  };
}

let fetched = 0;
const fetchLib = libWith(
  lib.fetchTransport((input, init) => {
    fetched++;
    return fetch(input, init);
  }),
);
const ctx = (): Ctx => ({ lib: fetchLib, base: server.origin, other: server.origin2, env: 'node', counts: async (p: string) => server.counts(p) });
for (const c of cases) {
  test(`fetch transport: ${c.name}`, async () => {
    const before = fetched;
    await c.run(ctx());
    assert.ok(fetched > before, 'the requests went through fetch');
  });
}

let unique = 0;
const objectPath = (switches: string, name: string): string => `/o/${switches},t=${++unique}/${name}`;
const FAST = { retryDelay: 1, maxRetryDelay: 50, timeout: 5000 };

for (const [name, transport] of [['node', lib.nodeHttpTransport()], ['fetch', lib.fetchTransport()]] as const) {
  test(`${name} transport: a redirect is followed; Authorization goes along to the same origin, not to another`, async () => {
    const port = (origin: string): string => new URL(origin).port;
    const same = await lib.HttpSource.open(server.origin + objectPath(`redirect=${port(server.origin)},auth=tok`, 'small.bin'), { ...FAST, transport, headers: { Authorization: 'Bearer tok' } });
    const got = new Uint8Array(SMALL_SIZE);
    assert.equal(await same.read(0, got), SMALL_SIZE);
    assert.deepEqual(got, pattern(SMALL_SIZE, 2));
    assert.ok(!same.finalUrl.includes('redirect='), `the URL after the redirect: ${same.finalUrl}`);
    await same.close();
    const other = server.origin + objectPath(`redirect=${port(server.origin2)},auth=tok`, 'small.bin');
    await assert.rejects(lib.HttpSource.open(other, { ...FAST, transport, headers: { Authorization: 'Bearer tok' } }), { name: 'VhdxError', reason: 'HTTP_STATUS', code: 'EPERM' });
  });
}

test('node transport: reads reuse one kept-alive connection; a 412 answer is dropped unread and the source fails as it should', async () => {
  const transport = lib.nodeHttpTransport();
  const before = server.connections();
  const p = objectPath('change=3', 'small.bin');
  const src = await lib.HttpSource.open(server.origin + p, { ...FAST, transport, firstRequestBytes: 4096, blockSize: 4096, readAhead: 0 });
  const want = pattern(SMALL_SIZE, 2);
  for (const at of [8192, 40960]) {
    const b = new Uint8Array(100);
    await src.read(at, b);
    assert.deepEqual(b, want.subarray(at, at + 100));
  }
  assert.equal(server.connections() - before, 1, 'three requests over one connection');
  // The object changes after the third GET: the fourth is refused (412) and read as such.
  await assert.rejects(src.read(81920, new Uint8Array(100)), { name: 'VhdxError', reason: 'SOURCE_CHANGED' });
  await src.close();
  const c = server.counts(p);
  assert.equal(c.GET, 4);
  const other = await lib.HttpSource.open(server.origin + objectPath('', 'small.bin'), { ...FAST, transport });
  assert.equal(other.size, SMALL_SIZE);
  await other.close();
});
