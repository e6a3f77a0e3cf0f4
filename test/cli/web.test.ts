// `vhdx web`: the page's static server gives the built page with the right content types, answers
// GET and HEAD only, and never a file outside dist/web (a traversal, encoded or not, is refused);
// the command prints its URL and stops cleanly on SIGTERM. (The page it serves opening an image
// in Chromium is in test/http/browser.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request, type IncomingHttpHeaders } from 'node:http';
import { startVhdxWeb } from '../helpers/web.js';
import { vhdxInProcess } from '../helpers/tools.js';
import { fileURLToPath } from 'node:url';
import { filePath, startWebServer } from '../../src/cli/web.js';

/** The page the build made (the installed command finds it beside itself: webRoot). */
const builtPage = fileURLToPath(new URL('../../dist/web/', import.meta.url));

/** One request with the path sent as written (fetch would normalise `..` away). */
function raw(url: string, path: string, method = 'GET'): Promise<{ status: number | undefined; headers: IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), { method, path }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('the web server gives the built page with its content types, HEAD without a body, and 404/405 for the rest', async () => {
  const web = await startWebServer(builtPage, '127.0.0.1', 0);
  try {
    assert.match(web.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const index = await raw(web.url, '/');
    assert.equal(index.status, 200);
    assert.equal(index.headers['content-type'], 'text/html; charset=utf-8');
    assert.match(index.body.toString(), /<title>vhdx/);
    const app = await raw(web.url, '/app.js?v=1');
    assert.equal(app.status, 200);
    assert.equal(app.headers['content-type'], 'text/javascript; charset=utf-8');
    assert.equal(app.headers['x-content-type-options'], 'nosniff');
    const head = await raw(web.url, '/index.html', 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(Number(head.headers['content-length']), index.body.length);
    assert.equal(head.body.length, 0);
    assert.equal((await raw(web.url, '/missing.js')).status, 404);
    const post = await raw(web.url, '/', 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
  } finally {
    await web.close();
  }
});

test('the web server refuses every path that leaves its folder, however it is spelled', async () => {
  const web = await startWebServer(builtPage, '127.0.0.1', 0);
  try {
    for (const p of ['/../package.json', '/../../package.json', '/%2e%2e/package.json', '/..%2fpackage.json', '/%2E%2E%2F%2E%2E%2Fpackage.json', '/..%5cpackage.json', '/./index.html', '/%00', '/%ff']) {
      const r = await raw(web.url, p);
      assert.equal(r.status, 403, `${p} answered ${r.status}`);
      assert.doesNotMatch(r.body.toString(), /"name": "vhdx"/);
    }
  } finally {
    await web.close();
  }
  assert.equal(filePath('/srv/web', '/a/b.js'), '/srv/web/a/b.js');
  assert.equal(filePath('/srv/web', '/'), '/srv/web/index.html');
  assert.equal(filePath('/srv/web', '/a/../../etc/passwd'), null);
  assert.equal(filePath('/srv/web', '//etc/passwd'), null, 'an empty first element is not a way to the root');
});

test('vhdx web prints its URL, serves the page, and exits 0 on SIGTERM and on SIGINT', async () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const web = await startVhdxWeb();
    assert.match(web.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const r = await fetch(web.url);
    assert.equal(r.status, 200);
    assert.match(await r.text(), /<title>vhdx/);
    assert.deepEqual(await web.stop(signal), { code: 0, signal: null, stderr: '' }, signal);
  }
});

test('vhdx web refuses operands and a bad port', async () => {
  for (const args of [['web', 'file.vhdx'], ['web', '--port', '70000'], ['web', '--port', 'x']]) {
    const r = await vhdxInProcess(args);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, /^vhdx: (vhdx web takes no operands|invalid port)/);
  }
});
