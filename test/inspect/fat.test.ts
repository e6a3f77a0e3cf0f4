// FAT12/16/32 driver: the type from the cluster count, label and serial, the dirty bits, and
// the used map against fsck.fat's cluster counts, on volumes built by mkfs.vfat with mtools (no
// root, no mounts) holding a deleted file; damaged boot sectors and FATs never free space.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fatDriver } from '../../src/inspect/fat.js';
import type { FilesystemDriver, FilesystemInfo, Region, Run } from '../../src/index.js';
import { collectUsed, deviceOf, freeSpans, fuzzDriver, needTool, sbinEnv } from '../helpers/fs-fixtures.js';
import { exec, must, shmScratch } from '../helpers/tools.js';

const KiB = 1024;
const missing = (await needTool('mkfs.vfat', 'dosfstools')) || (await needTool('fsck.fat', 'dosfstools')) || (await needTool('mcopy', 'mtools'));
// Only used when the tools are there (every test skips otherwise).
const dir = missing ? '' : shmScratch('vhdx-inspect-fat-');
let count = 0;

const mtoolsEnv = { env: { ...sbinEnv.env, MTOOLS_SKIP_CHECK: '1' } };

/**
 * A FAT volume of `kib` KiB made by mkfs.vfat `opts`, holding a.txt and (deleted again unless
 * keep) a 700 KB file. Returns { img, bytes, deleted: the deleted file's clusters }.
 */
async function mkfat(opts: readonly string[], kib: number, { keep = false } = {}): Promise<{ img: string; bytes: Uint8Array; deleted: [number, number][] }> {
  const img = join(dir, `fat${count++}.img`);
  await must('mkfs.vfat', ['-C', ...opts, img, String(kib)], sbinEnv);
  const big = join(dir, 'big.bin');
  const data = new Uint8Array(700 * 1000);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  writeFileSync(big, data);
  writeFileSync(join(dir, 'a.txt'), 'kept\n');
  await must('mcopy', ['-i', img, join(dir, 'a.txt'), '::/a.txt'], mtoolsEnv);
  await must('mcopy', ['-i', img, big, '::/big.bin'], mtoolsEnv);
  const chain = await must('mshowfat', ['-i', img, '::/big.bin'], mtoolsEnv);
  const deleted = [...chain.matchAll(/<(\d+)-(\d+)>/g)].map((m): [number, number] => [Number(m[1]), Number(m[2])]);
  if (!keep) await must('mdel', ['-i', img, '::/big.bin'], mtoolsEnv);
  return { img, bytes: new Uint8Array(readFileSync(img)), deleted };
}

/** fsck.fat -n -v: data area start, cluster size, used and total clusters. */
async function fsckFat(img: string): Promise<{ dataAt: number; clusterSize: number; used: number; total: number }> {
  const r = await exec('fsck.fat', ['-n', '-v', img], sbinEnv);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const num = (re: RegExp) => Number(re.exec(r.stdout)![1]);
  const clusters = /(\d+)\/(\d+) clusters/.exec(r.stdout)!;
  const used = Number(clusters[1]);
  const total = Number(clusters[2]);
  return { dataAt: num(/Data area starts at byte (\d+)/), clusterSize: num(/(\d+) bytes per cluster/), used, total };
}

async function usedMap(bytes: Uint8Array, region: Region = { start: 0, length: bytes.length }): Promise<{ info: FilesystemInfo; runs: Run[]; used: number }> {
  const dev = deviceOf(bytes);
  const info = await fatDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  return { info, ...(await collectUsed(fatDriver, dev, region, info)) };
}

const volumes: { type: string; opts: string[]; kib: number; label: string; uuid: string }[] = [
  { type: 'fat12', opts: ['-F', '12', '-n', 'SMALL', '-i', '0badf00d'], kib: 4000, label: 'SMALL', uuid: '0BAD-F00D' },
  { type: 'fat16', opts: ['-F', '16', '-s', '1', '-n', 'MIDDLE', '-i', '1234abcd'], kib: 8000, label: 'MIDDLE', uuid: '1234-ABCD' },
  { type: 'fat32', opts: ['-F', '32', '-s', '1', '-n', 'EFI SYSTEM', '-i', 'cafe0001'], kib: 34000, label: 'EFI SYSTEM', uuid: 'CAFE-0001' },
];

test('FAT used map agrees with fsck.fat, and the deleted file is free, for FAT12, FAT16 and FAT32', { skip: missing }, async (t) => {
  for (const v of volumes) {
    await t.test(v.type, async () => {
      const { img, bytes, deleted } = await mkfat(v.opts, v.kib);
      const { info, runs, used } = await usedMap(bytes);
      assert.deepEqual(info, { type: v.type, label: v.label, uuid: v.uuid, size: bytes.length, state: 'clean', untrusted: null });
      const fsck = await fsckFat(img);
      const tail = bytes.length - fsck.dataAt - fsck.total * fsck.clusterSize;
      assert.equal(used, fsck.dataAt + fsck.used * fsck.clusterSize + tail, 'used bytes: metadata, used clusters and the tail');
      const free = freeSpans(runs, { start: 0, length: bytes.length });
      assert.ok(free[0]![0] >= fsck.dataAt, 'nothing before the data area is free');
      assert.ok(deleted.length > 0);
      for (const [a, b] of deleted) {
        const [s, e] = [fsck.dataAt + (a - 2) * fsck.clusterSize, fsck.dataAt + (b - 1) * fsck.clusterSize];
        assert.ok(free.some(([x, y]) => x <= s && e <= y), `deleted clusters ${a}-${b} are free`);
      }
    });
  }
});

test('FAT with a file kept: its clusters are used', { skip: missing }, async () => {
  const { img, bytes, deleted } = await mkfat(volumes[0]!.opts, volumes[0]!.kib, { keep: true });
  const { runs, used } = await usedMap(bytes);
  const fsck = await fsckFat(img);
  assert.equal(used, bytes.length - (fsck.total - fsck.used) * fsck.clusterSize);
  const free = freeSpans(runs, { start: 0, length: bytes.length });
  for (const [a, b] of deleted) {
    const [s, e] = [fsck.dataAt + (a - 2) * fsck.clusterSize, fsck.dataAt + (b - 1) * fsck.clusterSize];
    assert.ok(!free.some(([x, y]) => x < e && s < y), `clusters ${a}-${b} are used`);
  }
});

test('FAT dirty bits make free space untrusted: FAT[1] clean-shutdown and hard-error bits, boot sector flag', { skip: missing }, async () => {
  const fat16 = await mkfat(volumes[1]!.opts, volumes[1]!.kib);
  const fat32 = await mkfat(volumes[2]!.opts, volumes[2]!.kib);
  const fatAt = (b: Uint8Array) => new DataView(b.buffer).getUint16(0x0e, true) * 512;
  const cases: [string, Uint8Array, (b: Uint8Array) => void, RegExp][] = [
    ['FAT16 clean bit clear', fat16.bytes, (b) => (b[fatAt(b) + 3]! &= 0x7f), /clean-shutdown/],
    ['FAT16 hard error', fat16.bytes, (b) => (b[fatAt(b) + 3]! &= 0xbf), /disk errors/],
    ['FAT32 clean bit clear', fat32.bytes, (b) => (b[fatAt(b) + 7]! &= 0xf7), /clean-shutdown/],
    ['FAT16 boot sector dirty flag', fat16.bytes, (b) => (b[0x25]! |= 1), /boot sector dirty/],
    ['FAT32 boot sector dirty flag', fat32.bytes, (b) => (b[0x41]! |= 1), /boot sector dirty/],
  ];
  for (const [name, base, edit, why] of cases) {
    const b = base.slice();
    edit(b);
    const { info, runs } = await usedMap(b);
    assert.equal(info.state, 'dirty', name);
    assert.match(info.untrusted ?? '', why, name);
    assert.deepEqual(runs, [{ start: 0, length: b.length }], name);
  }
});

test('a FAT volume cut short by its partition is untrusted; a FAT pointing outside the region frees nothing', { skip: missing }, async () => {
  const { bytes } = await mkfat(volumes[1]!.opts, volumes[1]!.kib);
  const short = { start: 0, length: bytes.length - 64 * KiB };
  const { info, runs } = await usedMap(bytes, short);
  assert.match(info.untrusted ?? '', /larger than its partition/);
  assert.deepEqual(runs, [{ start: 0, length: short.length }]);
  // A boot sector saying the FAT starts past the end of the device.
  const b = bytes.slice();
  new DataView(b.buffer).setUint16(0x0e, 0xfff0, true);
  new DataView(b.buffer).setUint16(0x13, 0, true);
  new DataView(b.buffer).setUint32(0x20, 0x7fffffff, true);
  const far = await fatDriver.detect(deviceOf(b), { start: 0, length: b.length });
  assert.ok(far === null || far.untrusted !== null, 'never a trusted volume whose FAT is outside');
});

test('not FAT: NTFS-like and exFAT-like boot sectors, zeros, no 0x55AA', { skip: missing }, async () => {
  const { bytes } = await mkfat(volumes[1]!.opts, volumes[1]!.kib);
  const region = { start: 0, length: bytes.length };
  const cases: [string, (b: Uint8Array) => void][] = [
    ['zeros', (b) => b.fill(0, 0, 512)],
    ['no signature', (b) => (b[510] = 0)],
    ['no reserved sectors (NTFS)', (b) => new DataView(b.buffer).setUint16(0x0e, 0, true)],
    ['no bytes per sector (exFAT)', (b) => new DataView(b.buffer).setUint16(0x0b, 0, true)],
    ['3 sectors per cluster', (b) => (b[0x0d] = 3)],
  ];
  for (const [name, edit] of cases) {
    const b = bytes.slice();
    edit(b);
    assert.equal(await fatDriver.detect(deviceOf(b), region), null, name);
  }
});

test('FAT used map honours abort and reports progress to the end', { skip: missing }, async () => {
  const { bytes } = await mkfat(volumes[2]!.opts, volumes[2]!.kib);
  const region = { start: 0, length: bytes.length };
  const dev = deviceOf(bytes);
  const info = await fatDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  const seen: [number, number][] = [];
  await collectUsed(fatDriver, dev, region, info, { onProgress: (d, t) => seen.push([d, t]) });
  assert.ok(seen.length >= 2);
  assert.deepEqual(seen[seen.length - 1], [bytes.length, bytes.length]);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(collectUsed(fatDriver, dev, region, info, { signal: ac.signal }), { code: 'ECANCELED' });
});

test('fuzz: mutated FAT boot sectors, FATs and root directories give info, null or a VhdxError', { skip: missing }, async () => {
  for (const [i, v] of volumes.entries()) {
    const { bytes } = await mkfat(v.opts, v.kib);
    const head = bytes.slice(0, 2 * 1024 * KiB); // the structures; reads past the cut are damage
    const hot: [number, number][] = [[0, 512], [512, 64 * KiB]];
    const opts = { seed: 0xfa7 + i, rounds: 60, hot, regionLength: bytes.length };
    let trusted = 0;
    const usedRuns = fatDriver.usedRuns!.bind(fatDriver);
    const counting: FilesystemDriver = { ...fatDriver, usedRuns: (...a) => (a[2].untrusted === null && trusted++, usedRuns(...a)) };
    const recognised = await fuzzDriver(counting, head, opts);
    assert.ok(recognised > 10 && trusted > 5, `${v.type}: some mutations still look like FAT, some trusted (${recognised}, ${trusted})`);
  }
});
