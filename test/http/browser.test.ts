// The HTTP source and the web page in real headless Chromium (Debian's chromium, driven by
// playwright-core): the conformance matrix of test/http/matrix.ts run inside a page, the CORS cases
// against a second origin, a corpus image read over HTTP to its raw SHA-256, and the page itself:
// a corpus image opened by drop (from the server and from file://) and by URL, its type, size and
// partitions shown, a raw copy saved through the File System Access API and as a download, both
// hashed; and the page as `vhdx web` serves it. One browser for the file; a screenshot of the page is kept in a temp folder.
// The functions given to page.evaluate run in the page: the DOM's types check them.
/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startRangeServer, type RangeServer } from '../helpers/http-server.js';
import { corpusFile, corpusManifest, repoRoot } from '../helpers/env.js';
import { matrixObjects, type Ctx } from './matrix.js';
import { makeMatrixImages } from '../helpers/http-images.js';
import { startVhdxWeb } from '../helpers/web.js';
import type { BrowserContext, Page } from 'playwright-core';

/** The picker of the File System Access API, as the page looks for it. */
interface SavePicker {
  showSaveFilePicker?: (opts: { suggestedName: string }) => Promise<FileSystemFileHandle>;
}

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
let playwright: typeof import('playwright-core') | null = null;
try {
  playwright = await import('playwright-core');
} catch {
  playwright = null;
}
const skip = !existsSync(CHROMIUM) ? `no Chromium at ${CHROMIUM}` : !playwright ? 'playwright-core is not installed' : false;

const manifest = corpusManifest();
const fixed = manifest?.find((e) => e.file === 'fixed.vhdx.gz');
const dynamic = manifest?.find((e) => e.file === 'config2_base.vhdx.gz');
const noCorpus = skip || (fixed && dynamic ? false : 'corpus (fixed.vhdx, config2_base.vhdx) not present beside the repository');

// Set by before() when the browser tests run (each test skips otherwise).
let server!: RangeServer;
let dir: string | undefined;
let context: BrowserContext | undefined;
let page!: Page;

before(async () => {
  if (skip || !playwright) return;
  server = await startRangeServer();
  dir = mkdtempSync(join(tmpdir(), 'vhdx-browser-'));
  for (const [name, bytes] of Object.entries(matrixObjects())) server.objects.set(name, { bytes });
  for (const [name, o] of Object.entries(await makeMatrixImages(dir))) server.objects.set(name, o);
  if (!noCorpus) {
    server.objects.set('corpus/fixed.vhdx', { path: await corpusFile(fixed!.file) });
    server.objects.set('corpus/config2_base.vhdx', { path: await corpusFile(dynamic!.file) });
  }
  context = await playwright.chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = context.pages()[0] ?? (await context.newPage());
});

after(async () => {
  await context?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the conformance matrix passes in Chromium, CORS cases included', { skip }, async (t) => {
  await page.goto(`${server.origin}/blank`);
  const results = await page.evaluate(async ({ base, other }) => {
    const lib = (await import(`${base}/s/dist/index.js`)) as Ctx['lib'];
    // matrix.js: the server compiles it from matrix.ts.
    const m = (await import(`${base}/s/test/http/matrix.js`)) as typeof import('./matrix.js');
    const ctx: Ctx = { lib, base, other, env: 'browser', counts: async (p) => (await fetch(`${base}/count${p}`)).json() };
    return [...(await m.runAll(ctx, m.cases)), ...(await m.runAll(ctx, m.corsCases))];
  }, { base: server.origin, other: server.origin2 });
  assert.ok(results.length >= 16, `${results.length} cases ran`);
  for (const r of results) await t.test(r.name, () => assert.equal(r.error, null));
});

test('a corpus image read over HTTP in Chromium has its raw SHA-256', { skip: noCorpus }, async () => {
  await page.goto(`${server.origin}/blank`);
  const hex = await page.evaluate(async (url) => {
    const lib = (await import(`${location.origin}/s/dist/index.js`)) as Ctx['lib'];
    const img = await lib.openUrl(url);
    const all = new Uint8Array(img.size);
    await img.read(0, all);
    await img.close();
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
    return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
  }, `${server.origin2}/o/-/corpus/fixed.vhdx`);
  assert.equal(hex, fixed?.rawSha256);
});

/** Drop files on the page, as a user dragging them in would: [url their bytes come from, name]. */
async function drop(...files: [string, string][]): Promise<void> {
  await page.evaluate(async (files) => {
    const dt = new DataTransfer();
    for (const [url, name] of files) dt.items.add(new File([await (await fetch(url)).arrayBuffer()], name));
    document.getElementById('drop')!.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, files);
}

async function shown(): Promise<{ type: string | null | undefined; size: string | null | undefined; filesystems: (string | null)[] }> {
  await page.waitForSelector('#partitions tr.partition', { timeout: 20_000 });
  return page.evaluate(() => ({
    type: document.getElementById('image-type')?.textContent,
    size: document.getElementById('virtual-size')?.textContent,
    filesystems: [...document.querySelectorAll('#partitions tr.partition .fs-type')].map((e) => e.textContent),
  }));
}

test('the page, opened from a file, shows a dropped image', { skip: noCorpus }, async () => {
  await page.goto(pathToFileURL(join(repoRoot, 'dist', 'web', 'index.html')).href);
  await drop([`${server.origin}/o/-/corpus/fixed.vhdx`, 'fixed.vhdx']);
  const s = await shown();
  assert.equal(s.type, 'fixed');
  assert.match(s.size ?? '', /\(10485760 bytes\)/);
  assert.deepEqual(s.filesystems, ['ntfs']);
});

test('the page shows a dropped image and saves its raw disk to a picked file and as a download', { skip: noCorpus }, async (t) => {
  await page.goto(`${server.origin}/s/dist/web/index.html`);
  await drop([`${server.origin}/o/-/corpus/fixed.vhdx`, 'fixed.vhdx']);
  const s = await shown();
  assert.equal(s.type, 'fixed');
  assert.deepEqual(s.filesystems, ['ntfs']);
  await page.waitForFunction(() => /per cell/.test(document.getElementById('map-state')?.textContent ?? ''));

  // The File System Access API, with the picker answered by a file in the origin's private storage.
  await page.evaluate(() => {
    // The File System Access API's picker: not in TypeScript's DOM types (web/app.ts declares it the same way).
    (window as unknown as SavePicker).showSaveFilePicker = async () => (await navigator.storage.getDirectory()).getFileHandle('fixed.raw', { create: true });
  });
  await page.click('#save-disk');
  await page.waitForFunction(() => document.getElementById('saved')?.textContent === 'fixed.raw 10485760', null, { timeout: 20_000 });
  const picked = await page.evaluate(async () => {
    const f = await (await (await navigator.storage.getDirectory()).getFileHandle('fixed.raw')).getFile();
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await f.arrayBuffer()));
    return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
  });
  assert.equal(picked, fixed?.rawSha256, 'raw copy through the File System Access API');

  // Without the API: a download.
  await page.evaluate(() => {
    (window as unknown as SavePicker).showSaveFilePicker = undefined;
  });
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 20_000 }), page.click('#save-disk')]);
  assert.equal(download.suggestedFilename(), 'fixed.raw');
  const raw = readFileSync(await download.path());
  assert.equal(createHash('sha256').update(raw).digest('hex'), fixed?.rawSha256, 'raw copy as a download');

  // A partition: the bytes of its range of the disk.
  const [part] = await Promise.all([page.waitForEvent('download', { timeout: 20_000 }), page.click('#partitions .save-partition')]);
  assert.equal(part.suggestedFilename(), 'fixed-p1.raw');
  const start = Number(await page.textContent('#partitions tr.partition td:nth-child(2)'));
  const got = readFileSync(await part.path());
  assert.ok(got.length > 0 && start > 0);
  assert.ok(got.equals(raw.subarray(start, start + got.length)), 'the partition saved is its range of the disk');

  const shot = join(mkdtempSync(join(tmpdir(), 'vhdx-page-')), 'page.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`screenshot: ${shot}`);
});

/** Open the page at `pageUrl`, have it open the corpus's dynamic image from the other origin, and check what it shows. */
async function openDynamicByUrl(pageUrl: string): Promise<void> {
  await page.goto(pageUrl);
  await page.fill('#url', `${server.origin2}/o/-/corpus/config2_base.vhdx`);
  await page.click('#url-form button[type=submit]');
  const s = await shown();
  assert.equal(s.type, 'dynamic');
  assert.match(s.size ?? '', /\(104857600 bytes\)/);
  assert.deepEqual(s.filesystems, ['fat32']);
}

test('the page opens an image by URL from another origin and counts its requests', { skip: noCorpus }, async () => {
  await openDynamicByUrl(`${server.origin}/s/dist/web/index.html`);
  assert.match((await page.textContent('#stats')) ?? '', /\d+ HTTP requests/);
});

test('the page opens a child dropped together with its parent as one chain', { skip }, async () => {
  await page.goto(`${server.origin}/s/dist/web/index.html`);
  // The parent first: the page finds which file is the child.
  await drop([`${server.origin}/o/-/chain/base.vhdx`, 'base.vhdx'], [`${server.origin}/o/-/chain/child.vhdx`, 'child.vhdx']);
  await page.waitForSelector('#chain li', { timeout: 20_000 });
  assert.equal(await page.textContent('#image-type'), 'differencing');
  const levels = await page.$$eval('#chain li', (lis) => lis.map((li) => li.textContent));
  assert.equal(levels.length, 2);
  assert.match(levels[0] ?? '', /^child\.vhdx: differencing/);
  assert.match(levels[1] ?? '', /^base\.vhdx: dynamic/);
  // Alone, the child opens without its parent and says why.
  await page.goto(`${server.origin}/s/dist/web/index.html`);
  await drop([`${server.origin}/o/-/chain/child.vhdx`, 'child.vhdx']);
  await page.waitForSelector('#chain .error', { timeout: 20_000 });
  assert.match((await page.textContent('#chain .error')) ?? '', /base\.vhdx is not among the dropped files/);
});

test('the page served by vhdx web opens an image by URL from another origin', { skip: noCorpus }, async () => {
  const web = await startVhdxWeb();
  try {
    await openDynamicByUrl(web.url);
  } finally {
    assert.equal((await web.stop()).code, 0);
  }
});
