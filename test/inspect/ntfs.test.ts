// NTFS driver: recognition, label, serial and state ($Volume dirty flag, $LogFile restart
// areas, hiberfil.sys), and the used map from $Bitmap against ntfscluster and ntfsinfo, on
// volumes made by mkntfs with files copied in by ntfscp and one truncated by ntfstruncate (its
// data stays on disk, its clusters become free). Damaged records and runlists free nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ntfsDriver } from '../../src/inspect/ntfs.js';
import type { FilesystemInfo, Region, Run } from '../../src/index.js';
import { collectUsed, deviceOf, freeSpans, fuzzDriver, needTool, sbinEnv } from '../helpers/fs-fixtures.js';
import { exec, must, shmScratch } from '../helpers/tools.js';

const KiB = 1024;
const missing =
  (await needTool('mkntfs', 'ntfs-3g')) || (await needTool('ntfscp', 'ntfs-3g')) || (await needTool('ntfscluster', 'ntfs-3g')) || (await needTool('ntfstruncate', 'ntfs-3g'));
// Only used when the tools are there (every test skips otherwise).
const dir = missing ? '' : shmScratch('vhdx-inspect-ntfs-');
let count = 0;

function file(name: string, bytes: string | Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

const pattern = (n: number): Uint8Array => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 2654435761) >>> 24;
  return b;
};

/**
 * An NTFS volume of `mib` MiB made by mkntfs `opts`, holding a.txt and big.bin (3 MB, truncated
 * to nothing unless keep) plus `extra` files [name, bytes]. Returns { img, bytes, bigRuns }.
 */
async function mkntfs(
  opts: readonly string[] = [],
  { mib = 16, keep = false, extra = [] }: { mib?: number | undefined; keep?: boolean; extra?: readonly (readonly [string, Uint8Array])[] } = {},
): Promise<{ img: string; bytes: Uint8Array; bigRuns: [number, number][] }> {
  const img = join(dir, `n${count++}.img`);
  await must('truncate', ['-s', `${mib}M`, img]);
  await must('mkntfs', ['-F', '-Q', '-q', ...opts, img], sbinEnv);
  await must('ntfscp', ['-q', img, file('a.txt', 'kept\n'), 'a.txt'], sbinEnv);
  await must('ntfscp', ['-q', img, file('big.bin', pattern(3 * 1000 * 1000)), 'big.bin'], sbinEnv);
  for (const [name, bytes] of extra) await must('ntfscp', ['-q', img, file('extra.bin', bytes), name], sbinEnv);
  const info = await must('ntfsinfo', ['-F', 'big.bin', '-v', img], sbinEnv);
  const bigRuns = [...info.matchAll(/^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s*$/gm)].map((m): [number, number] => [parseInt(m[2]!, 16), parseInt(m[3]!, 16)]);
  if (!keep) {
    const ino = /^\s*(\d+)\s+big\.bin$/m.exec(await must('ntfsls', ['-i', img], sbinEnv))![1]!;
    await must('ntfstruncate', ['-f', img, ino, '0x80', '0'], sbinEnv);
  }
  return { img, bytes: new Uint8Array(readFileSync(img)), bigRuns };
}

async function ntfsclusterFree(img: string): Promise<{ free: number; clusterSize: number }> {
  const out = await must('ntfscluster', ['-i', img], sbinEnv);
  return { free: Number(/bytes of free space\s+:\s+(\d+)/.exec(out)![1]), clusterSize: Number(/bytes per cluster\s+:\s+(\d+)/.exec(out)![1]) };
}

async function usedMap(bytes: Uint8Array, region: Region = { start: 0, length: bytes.length }): Promise<{ info: FilesystemInfo; runs: Run[]; used: number }> {
  const dev = deviceOf(bytes);
  const info = await ntfsDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  return { info, ...(await collectUsed(ntfsDriver, dev, region, info)) };
}

/** Byte offset of MFT record n (from the boot sector; records of 1 KiB unless the sector is larger). */
function recordAt(bytes: Uint8Array, n: number): number {
  const v = new DataView(bytes.buffer);
  const cluster = v.getUint16(0x0b, true) * bytes[0x0d]!;
  const x = v.getInt8(0x40);
  const size = x > 0 ? x * cluster : 2 ** -x;
  return Number(v.getBigUint64(0x30, true)) * cluster + n * size;
}

/** Offset of attribute `type` (the first) in record n. */
function attrAt(bytes: Uint8Array, n: number, type: number): number {
  const v = new DataView(bytes.buffer);
  const rec = recordAt(bytes, n);
  for (let at = rec + v.getUint16(rec + 0x14, true); v.getUint32(at, true) !== 0xffffffff; at += v.getUint32(at + 4, true)) {
    if (v.getUint32(at, true) === type) return at;
  }
  throw new Error(`no attribute ${type} in record ${n}`);
}

const layouts: { name: string; opts: string[]; mib?: number }[] = [
  { name: '4 KiB clusters', opts: ['-L', 'Données NT'] },
  { name: '128 KiB clusters (2^(256-x) encoding)', opts: ['-c', '131072'], mib: 24 },
  { name: '4096-byte sectors, 4 KiB records', opts: ['-s', '4096', '-c', '4096'] },
  { name: '512-byte clusters', opts: ['-c', '512'] },
];

test('NTFS used map agrees with ntfscluster and ntfsinfo; a truncated file leaves its clusters free', { skip: missing }, async (t) => {
  for (const l of layouts) {
    await t.test(l.name, async () => {
      const { img, bytes, bigRuns } = await mkntfs(l.opts, { mib: l.mib });
      const { info, runs, used } = await usedMap(bytes);
      assert.equal(info.type, 'ntfs');
      assert.equal(info.state, 'clean');
      assert.equal(info.untrusted, null);
      const { free, clusterSize } = await ntfsclusterFree(img);
      const mftInfo = await must('ntfsinfo', ['-m', img], sbinEnv);
      assert.equal(free, Number(/Free Clusters: (\d+)/.exec(mftInfo)![1]) * clusterSize, 'the two oracles agree');
      assert.equal(bytes.length - used, free);
      const spans = freeSpans(runs, { start: 0, length: bytes.length });
      assert.ok(spans[0]![0] >= clusterSize, 'the boot sector is used');
      assert.ok(spans[spans.length - 1]![1] <= info.size, 'the backup boot sector past the volume is used');
      assert.ok(bigRuns.length > 0);
      for (const [lcn, n] of bigRuns) {
        assert.ok(spans.some(([a, b]) => a <= lcn * clusterSize && (lcn + n) * clusterSize <= b), `truncated file's clusters ${lcn}+${n} are free`);
      }
    });
  }
});

test('NTFS label and serial as blkid prints them; a kept file is used', { skip: missing }, async () => {
  const { img, bytes, bigRuns } = await mkntfs(['-L', 'Données NT'], { keep: true });
  const { info, runs } = await usedMap(bytes);
  assert.equal(info.label, 'Données NT');
  const serial = new DataView(bytes.buffer).getBigUint64(0x48, true).toString(16).toUpperCase().padStart(16, '0');
  assert.equal(info.uuid, serial);
  const blkid = await exec('blkid', ['-p', '-o', 'value', '-s', 'UUID', img], sbinEnv);
  if (blkid.code === 0) assert.equal(blkid.stdout.trim(), info.uuid);
  const spans = freeSpans(runs, { start: 0, length: bytes.length });
  const cs = (await ntfsclusterFree(img)).clusterSize;
  for (const [lcn, n] of bigRuns) assert.ok(!spans.some(([a, b]) => a < (lcn + n) * cs && lcn * cs < b), 'the kept file is used');
});

test('NTFS states that make free space untrusted: $Volume dirty, hiberfil.sys, unclean $LogFile', { skip: missing }, async () => {
  const page = (sig: string): Uint8Array => {
    const b = new Uint8Array(8192);
    b.set(new TextEncoder().encode(sig));
    return b;
  };
  const cases: [string, { extra: [string, Uint8Array][] }, string, string?][] = [
    ['hiberfil.sys says hibr', { extra: [['hiberfil.sys', page('hibr')]] }, 'hibernated'],
    // Windows 8 and later write HIBR (Fast Startup); ntfs-3g looks for lowercase only and relies on
    // $LogFile there. Stricter is safe: the driver counts it as hibernated too.
    ['hiberfil.sys says HIBR', { extra: [['HIBERFIL.SYS', page('HIBR')]] }, 'hibernated', 'stricter than ntfs-3g'],
    ['hiberfil.sys shorter than a page', { extra: [['hiberfil.sys', page('wake').subarray(0, 100)]] }, 'hibernated'],
    ['hiberfil.sys after resume (wake)', { extra: [['hiberfil.sys', page('wake')]] }, 'clean'],
    ['hiberfil.sys of zeros', { extra: [['hiberfil.sys', new Uint8Array(8192)]] }, 'clean'],
  ];
  for (const [name, opts, state, stricter] of cases) {
    const { img, bytes } = await mkntfs([], { ...opts, keep: true });
    const { info, runs } = await usedMap(bytes);
    assert.equal(info.state, state, name);
    // ntfs-3g's own verdict: a read-write open of a copy refuses a hibernated volume.
    const copy = file('copy.img', bytes);
    const ino = /^\s*(\d+)\s+a\.txt$/m.exec(await must('ntfsls', ['-i', img], sbinEnv))![1]!;
    const rw = await exec('ntfstruncate', ['-f', copy, ino, '0x80', '0'], sbinEnv);
    if (!stricter) assert.equal(/hibernated/i.test(rw.stderr), state === 'hibernated', `${name}: ntfs-3g agrees (${rw.stderr.trim()})`);
    if (state !== 'clean') {
      assert.match(info.untrusted ?? '', /hibernated/, name);
      assert.deepEqual(runs, [{ start: 0, length: bytes.length }], name);
    } else assert.equal(info.untrusted, null, name);
  }

  const { bytes } = await mkntfs([]);
  const dirty = bytes.slice();
  const vi = attrAt(dirty, 3, 0x70);
  dirty[vi + new DataView(dirty.buffer).getUint16(vi + 0x14, true) + 0x0a]! |= 1;
  const d = await usedMap(dirty);
  assert.equal(d.info.state, 'dirty');
  assert.match(d.info.untrusted ?? '', /marked dirty/);
  assert.deepEqual(d.runs, [{ start: 0, length: dirty.length }]);

  // $LogFile restart pages (mkntfs leaves the journal empty: all 0xFF).
  const v = new DataView(bytes.buffer);
  const data = attrAt(bytes, 2, 0x80);
  const pairs = data + v.getUint16(data + 0x20, true);
  const h = bytes[pairs]!;
  let lcn = 0;
  for (let i = (h >> 4) - 1; i >= 0; i--) lcn = lcn * 256 + bytes[pairs + 1 + (h & 15) + i]!;
  const logAt = lcn * v.getUint16(0x0b, true) * bytes[0x0d]!;
  const restart = (b: Uint8Array, at: number, lsn: number, inUse: number, flags: number): void => {
    const rv = new DataView(b.buffer, at, 512);
    b.fill(0, at, at + 4096); // a whole restart page, as Windows writes it
    b.set(new TextEncoder().encode('RSTR'), at);
    rv.setUint16(4, 0x1e, true);
    rv.setUint16(6, 9, true);
    rv.setUint32(0x10, 4096, true);
    rv.setUint32(0x14, 4096, true);
    rv.setUint16(0x18, 0x30, true);
    rv.setBigInt64(0x30, BigInt(lsn), true);
    rv.setUint16(0x30 + 0x0c, inUse, true);
    rv.setUint16(0x30 + 0x0e, flags, true);
  };
  const logCases: [string, (b: Uint8Array) => void, string][] = [
    ['one unclean restart area', (b) => restart(b, logAt, 100, 0, 0), 'needs-recovery'],
    ['clean flag set', (b) => restart(b, logAt, 100, 0, 2), 'clean'],
    ['no client in use', (b) => restart(b, logAt, 100, 0xffff, 0), 'clean'],
    ['the newer of two is clean', (b) => (restart(b, logAt, 100, 0, 0), restart(b, logAt + 4096, 200, 0, 2)), 'clean'],
    ['the newer of two is unclean', (b) => (restart(b, logAt, 300, 0, 2), restart(b, logAt + 4096, 400, 0, 0)), 'needs-recovery'],
  ];
  for (const [name, edit, state] of logCases) {
    const b = bytes.slice();
    edit(b);
    const { info } = await usedMap(b);
    assert.equal(info.state, state, name);
    if (state !== 'clean') assert.match(info.untrusted ?? '', /\$LogFile/, name);
  }
});

test('damaged NTFS: a $Bitmap runlist outside the volume, a torn record, an MFT outside: nothing is free', { skip: missing }, async () => {
  const { bytes } = await mkntfs([]);
  const v = new DataView(bytes.buffer);
  const all = (b: Uint8Array): Run[] => [{ start: 0, length: b.length }];

  const outside = bytes.slice();
  const data = attrAt(outside, 6, 0x80);
  const pairs = data + v.getUint16(data + 0x20, true);
  const h = outside[pairs]!;
  outside[pairs + (h & 15) + (h >> 4)] = 0x7f; // the LCN's top byte: far past the volume
  const o = await usedMap(outside);
  assert.equal(o.info.untrusted, null, 'the state is still known');
  assert.deepEqual(o.runs, all(outside));

  const torn = bytes.slice();
  torn[recordAt(torn, 6) + 510]! ^= 0xff; // the update sequence number at the end of the first stride
  assert.deepEqual((await usedMap(torn)).runs, all(torn));

  const far = bytes.slice();
  new DataView(far.buffer).setBigUint64(0x30, 0x800n, true); // MFT cluster inside the volume, but no FILE record there
  const f = await usedMap(far);
  assert.match(f.info.untrusted ?? '', /MFT is unreadable/);
  assert.deepEqual(f.runs, all(far));

  const short = { start: 0, length: bytes.length - 64 * KiB };
  const s = await usedMap(bytes, short);
  assert.match(s.info.untrusted ?? '', /larger than its partition/);
});

test('not NTFS: zeros, FAT-style fields, bad cluster and record sizes', { skip: missing }, async () => {
  const { bytes } = await mkntfs([]);
  const region = { start: 0, length: bytes.length };
  const cases: [string, (b: Uint8Array) => void][] = [
    ['zeros', (b) => b.fill(0, 0, 512)],
    ['reserved sectors set', (b) => (b[0x0e] = 1)],
    ['3 sectors per cluster', (b) => (b[0x0d] = 3)],
    ['2^(256-0x80) sectors per cluster', (b) => (b[0x0d] = 0x81)],
    ['record size 2^-(-1)', (b) => (b[0x40] = 0xff)],
    ['MFT past the volume', (b) => new DataView(b.buffer).setBigUint64(0x30, 1n << 40n, true)],
  ];
  for (const [name, edit] of cases) {
    const b = bytes.slice();
    edit(b);
    assert.equal(await ntfsDriver.detect(deviceOf(b), region), null, name);
  }
});

test('NTFS used map honours abort and reports progress to the end', { skip: missing }, async () => {
  const { bytes } = await mkntfs(['-c', '512']);
  const region = { start: 0, length: bytes.length };
  const dev = deviceOf(bytes);
  const info = await ntfsDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  const seen: [number, number][] = [];
  await collectUsed(ntfsDriver, dev, region, info, { onProgress: (d, t) => seen.push([d, t]) });
  assert.deepEqual(seen[seen.length - 1], [bytes.length, bytes.length]);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(collectUsed(ntfsDriver, dev, region, info, { signal: ac.signal }), { code: 'ECANCELED' });
});

test('fuzz: mutated NTFS boot sectors, MFT records and bitmaps give info, null or a VhdxError', { skip: missing }, async () => {
  const { bytes } = await mkntfs([]);
  const mft = recordAt(bytes, 0);
  const hot: [number, number][] = [[0, 512], [mft, mft + 16 * KiB], [recordAt(bytes, 6), recordAt(bytes, 7)], [recordAt(bytes, 5), recordAt(bytes, 6)]];
  const recognised = await fuzzDriver(ntfsDriver, bytes, { seed: 0x4e7f5, rounds: 120, hot, flips: 3 });
  assert.ok(recognised > 40, `most mutations still look like NTFS (${recognised})`);
});

test('runlists: negative deltas and sparse runs decode; runs outside the volume, zero lengths, no terminator are damage', async () => {
  const { decodeRunlist } = await import('../../src/inspect/ntfs-mft.js');
  const rl = (...bytes: number[]) => Uint8Array.from(bytes);
  // 0x21: 1 length byte, 2 offset bytes. Run 1: 8 clusters at 0x100; run 2: 4 at 0x100 - 0x80 = 0x80;
  // 0x01: a sparse run of 2; then the end.
  const ok = rl(0x21, 8, 0x00, 0x01, 0x21, 4, 0x80, 0xff, 0x01, 2, 0x00);
  assert.deepEqual(decodeRunlist(ok, 0, ok.length, 10, 0x1000), [
    { vcn: 10, lcn: 0x100, length: 8 },
    { vcn: 18, lcn: 0x80, length: 4 },
    { vcn: 22, lcn: null, length: 2 },
  ]);
  assert.equal(decodeRunlist(ok, 0, ok.length, 0, 0x104), null, 'the first run ends past a volume of 0x104 clusters');
  assert.equal(decodeRunlist(rl(0x21, 8, 0x00, 0x01, 0x21, 4, 0x00, 0xfe, 0), 0, 9, 0, 0x1000), null, 'an LCN below zero');
  assert.equal(decodeRunlist(rl(0x11, 0, 5, 0), 0, 4, 0, 100), null, 'a run of no clusters');
  assert.equal(decodeRunlist(rl(0x11, 3, 5), 0, 3, 0, 100), null, 'no terminator inside the attribute');
  assert.equal(decodeRunlist(rl(0x19, 3, 5, 0), 0, 4, 0, 100), null, 'nine length bytes');
});

test('update-sequence fixups: restored when every stride carries the number, refused otherwise', async () => {
  const { applyFixups } = await import('../../src/inspect/ntfs-mft.js');
  const rec = new Uint8Array(1024);
  const v = new DataView(rec.buffer);
  rec.set(new TextEncoder().encode('FILE'));
  v.setUint16(4, 0x30, true); // update sequence array at 0x30: number, then the saved bytes of 2 strides
  v.setUint16(6, 3, true);
  v.setUint16(0x30, 0x0007, true);
  v.setUint16(0x32, 0xaaaa, true);
  v.setUint16(0x34, 0xbbbb, true);
  v.setUint16(510, 7, true);
  v.setUint16(1022, 7, true);
  const good = rec.slice();
  assert.equal(applyFixups(good, 'FILE'), true);
  assert.equal(new DataView(good.buffer).getUint16(510, true), 0xaaaa);
  assert.equal(new DataView(good.buffer).getUint16(1022, true), 0xbbbb);
  const torn = rec.slice();
  torn[1022] = 8; // the second stride was not written with the first
  assert.equal(applyFixups(torn, 'FILE'), false);
  assert.equal(applyFixups(rec.slice(), 'INDX'), false, 'another signature');
  const count = rec.slice();
  new DataView(count.buffer).setUint16(6, 9, true);
  assert.equal(applyFixups(count, 'FILE'), false, 'an array that does not match the record size');
});
