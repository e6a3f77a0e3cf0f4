// exFAT driver: label, serial and state from volumes made by mkfs.exfat (exfatprogs), and the
// used map from the allocation bitmap against dump.exfat's free cluster count and the bits the
// test sets itself (exfatprogs has no tool to add files without a mount, so "files" are bits
// set in the bitmap); damaged boot regions, bitmaps and chains never free space.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exfatDriver } from '../../src/inspect/exfat.js';
import type { FilesystemInfo, Region, Run } from '../../src/index.js';
import { collectUsed, deviceOf, freeSpans, fuzzDriver, needTool, sbinEnv } from '../helpers/fs-fixtures.js';
import { must, shmScratch } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const missing = (await needTool('mkfs.exfat', 'exfatprogs')) || (await needTool('dump.exfat', 'exfatprogs')) || (await needTool('tune.exfat', 'exfatprogs'));
// Only used when the tools are there (every test skips otherwise).
const dir = missing ? '' : shmScratch('vhdx-inspect-exfat-');
let count = 0;

/** An 8 MiB exFAT volume with 512-byte clusters (a bitmap of 3 clusters): { img, bytes, geo }. */
async function mkexfat({ label = 'Données', serial = '0x1234abcd' } = {}): Promise<{ img: string; bytes: Uint8Array; geo: Geometry }> {
  const img = join(dir, `x${count++}.img`);
  await must('truncate', ['-s', '8M', img]);
  await must('mkfs.exfat', ['-c', '512', '-L', label, img], sbinEnv);
  await must('tune.exfat', ['-I', serial, img], sbinEnv);
  return { img, bytes: new Uint8Array(readFileSync(img)), geo: await dumpExfat(img) };
}

/** What dumpExfat reads. */
interface Geometry {
  heapAt: number;
  fatAt: number;
  clusterSize: number;
  clusters: number;
  free: number;
  bitmapCluster: number;
  rootCluster: number;
}

/** dump.exfat's geometry and free cluster count. */
async function dumpExfat(img: string): Promise<Geometry> {
  const out = await must('dump.exfat', [img], sbinEnv);
  const num = (re: RegExp) => Number(re.exec(out)![1]);
  const sector = 2 ** num(/Sector Size Bits:\s+(\d+)/);
  return {
    heapAt: num(/Cluster Heap Offset \(sector offset\):\s+(\d+)/) * sector,
    fatAt: num(/FAT Offset\(sector offset\):\s+(\d+)/) * sector,
    clusterSize: num(/Cluster size:\s+(\d+)/),
    clusters: num(/Total Clusters:\s+(\d+)/),
    free: num(/Free Clusters:\s+(\d+)/),
    bitmapCluster: num(/Bitmap start cluster:\s+(\d+)/),
    rootCluster: num(/Root Cluster \(cluster offset\):\s+(\d+)/),
  };
}

async function usedMap(bytes: Uint8Array, region: Region = { start: 0, length: bytes.length }): Promise<{ info: FilesystemInfo; runs: Run[]; used: number }> {
  const dev = deviceOf(bytes);
  const info = await exfatDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  return { info, ...(await collectUsed(exfatDriver, dev, region, info)) };
}

/** The free spans the bitmap in `bytes` says, computed here bit by bit. */
function expectedFree(bytes: Uint8Array, geo: Geometry): [number, number][] {
  const bitmapAt = geo.heapAt + (geo.bitmapCluster - 2) * geo.clusterSize;
  const spans: [number, number][] = [];
  for (let c = 0; c < geo.clusters; c++) {
    if ((bytes[bitmapAt + (c >> 3)]! >> (c & 7)) & 1) continue;
    const [s, e]: [number, number] = [geo.heapAt + c * geo.clusterSize, geo.heapAt + (c + 1) * geo.clusterSize];
    const last = spans[spans.length - 1];
    if (last && last[1] === s) last[1] = e;
    else spans.push([s, e]);
  }
  return spans;
}

test('exFAT label, serial and the used map from the allocation bitmap, against dump.exfat', { skip: missing }, async () => {
  const { bytes, geo } = await mkexfat();
  const { info, used, runs } = await usedMap(bytes);
  assert.deepEqual(info, { type: 'exfat', label: 'Données', uuid: '1234-ABCD', size: 8 * MiB, state: 'clean', untrusted: null });
  assert.equal(bytes.length - used, geo.free * geo.clusterSize);
  assert.deepEqual(freeSpans(runs, { start: 0, length: bytes.length }), expectedFree(bytes, geo));

  // "Files": clusters marked in the bitmap, in all three bitmap clusters (bits 100-130, 5000, 9000-9999).
  const b = bytes.slice();
  const bitmapAt = geo.heapAt + (geo.bitmapCluster - 2) * geo.clusterSize;
  for (const c of [...Array(31).keys()].map((i) => 100 + i).concat([5000], [...Array(1000).keys()].map((i) => 9000 + i))) b[bitmapAt + (c >> 3)]! |= 1 << (c & 7);
  const img2 = join(dir, 'marked.img');
  writeFileSync(img2, b);
  const after = await usedMap(b);
  assert.equal(b.length - after.used, (await dumpExfat(img2)).free * geo.clusterSize);
  assert.equal(after.used - used, 1032 * geo.clusterSize);
  assert.deepEqual(freeSpans(after.runs, { start: 0, length: b.length }), expectedFree(b, geo));
});

test('exFAT states that make free space untrusted: VolumeDirty, media failure, boot checksum, no bitmap', { skip: missing }, async () => {
  const { bytes, geo } = await mkexfat();
  const cases: [string, (b: Uint8Array, geo: Geometry) => void, string, RegExp][] = [
    ['VolumeDirty', (b) => (b[106]! |= 2), 'dirty', /VolumeDirty/],
    ['MediaFailure', (b) => (b[106]! |= 4), 'dirty', /media failures/],
    ['serial changed without the checksum', (b) => (b[100]! ^= 1), 'unknown', /checksum mismatch/],
    ['bitmap entry removed', (b, geo) => {
      const root = geo.heapAt + (geo.rootCluster - 2) * geo.clusterSize;
      for (let at = root; at < root + 512; at += 32) if (b[at] === 0x81) b[at] = 0x01;
    }, 'unknown', /no allocation bitmap/],
  ];
  for (const [name, edit, state, why] of cases) {
    const b = bytes.slice();
    edit(b, geo);
    const { info, runs } = await usedMap(b);
    assert.equal(info.state, state, name);
    assert.match(info.untrusted ?? '', why, name);
    assert.deepEqual(runs, [{ start: 0, length: b.length }], name);
  }
});

test('a short bitmap, a bitmap outside the heap, a broken chain: the clusters they cannot vouch for are used', { skip: missing }, async () => {
  const { bytes, geo } = await mkexfat();
  const root = geo.heapAt + (geo.rootCluster - 2) * geo.clusterSize;
  const entry = (b: Uint8Array): number => {
    for (let at = root; at < root + 512; at += 32) if (b[at] === 0x81) return at;
    throw new Error('no bitmap entry');
  };
  const view = (b: Uint8Array) => new DataView(b.buffer);
  const heapEnd = geo.heapAt + geo.clusters * geo.clusterSize;

  const short = bytes.slice();
  view(short).setBigUint64(entry(short) + 24, 100n, true); // 800 clusters described
  const s = await usedMap(short);
  const sFree = freeSpans(s.runs, { start: 0, length: short.length });
  assert.ok(sFree.length > 0 && sFree[sFree.length - 1]![1] <= geo.heapAt + 800 * geo.clusterSize);

  const outside = bytes.slice();
  view(outside).setUint32(entry(outside) + 20, 0xfffffff0, true);
  assert.deepEqual((await usedMap(outside)).runs, [{ start: 0, length: outside.length }]);

  const broken = bytes.slice();
  view(broken).setUint32(geo.fatAt + geo.bitmapCluster * 4, 0xffffffff, true); // chain ends after the first bitmap cluster
  const k = await usedMap(broken);
  const kFree = freeSpans(k.runs, { start: 0, length: broken.length });
  assert.ok(kFree[kFree.length - 1]![1] <= geo.heapAt + 512 * 8 * geo.clusterSize, 'only the first 4096 clusters can be free');
  assert.ok(heapEnd <= broken.length);
});

test('not exFAT: zeros, a FAT32-style boot sector, damaged geometry', { skip: missing }, async () => {
  const { bytes } = await mkexfat();
  const region = { start: 0, length: bytes.length };
  const cases: [string, (b: Uint8Array) => void][] = [
    ['zeros', (b) => b.fill(0, 0, 512)],
    ['a BPB where exFAT keeps zeros', (b) => (b[0x0b] = 2)],
    ['sector shift 13', (b) => (b[108] = 13)],
    ['cluster count past the volume', (b) => new DataView(b.buffer).setUint32(92, 0x10000000, true)],
    ['root cluster 1', (b) => new DataView(b.buffer).setUint32(96, 1, true)],
  ];
  for (const [name, edit] of cases) {
    const b = bytes.slice();
    edit(b);
    assert.equal(await exfatDriver.detect(deviceOf(b), region), null, name);
  }
});

test('exFAT used map honours abort and reports progress to the end', { skip: missing }, async () => {
  const { bytes } = await mkexfat();
  const region = { start: 0, length: bytes.length };
  const dev = deviceOf(bytes);
  const info = await exfatDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  const seen: [number, number][] = [];
  await collectUsed(exfatDriver, dev, region, info, { onProgress: (d, t) => seen.push([d, t]) });
  assert.deepEqual(seen[seen.length - 1], [bytes.length, bytes.length]);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(collectUsed(exfatDriver, dev, region, info, { signal: ac.signal }), { code: 'ECANCELED' });
});

test('fuzz: mutated exFAT boot regions, FATs, bitmaps and root directories give info, null or a VhdxError', { skip: missing }, async () => {
  const { bytes, geo } = await mkexfat();
  // Keep the boot checksum right for most rounds: mutate outside the checksummed sectors, plus a few boot bytes.
  const hot: [number, number][] = [[100, 112], [geo.fatAt, geo.fatAt + 128], [geo.heapAt, geo.heapAt + 20 * geo.clusterSize]];
  const recognised = await fuzzDriver(exfatDriver, bytes, { seed: 0xe8fa7, rounds: 80, hot });
  assert.ok(recognised > 20, `some mutations still look like exFAT (${recognised})`);
});
