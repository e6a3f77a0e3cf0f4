// ext2/3/4 driver: recognition and the used map against dumpe2fs's free block lists, on
// filesystems built by mke2fs -d (no root, no mounts) with a deleted file whose data stays on
// disk; damaged superblocks, descriptors and bitmaps never make space look free.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { extDriver } from '../../src/inspect/ext.js';
import { RawDevice } from '../../src/device/raw.js';
import { MemorySource } from '../../src/io/source.js';
import type { FilesystemInfo, Region, Run } from '../../src/index.js';
import { collectUsed, deviceOf, freeSpans, fuzzDriver, mergeSpans, needTool, sbinEnv } from '../helpers/fs-fixtures.js';
import { must, shmScratch } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const missing = (await needTool('mke2fs', 'e2fsprogs')) || (await needTool('debugfs', 'e2fsprogs')) || (await needTool('dumpe2fs', 'e2fsprogs'));

// Only used when the tools are there (every test skips otherwise).
const dir = missing ? '' : shmScratch('vhdx-inspect-ext-');
let fixtureCount = 0;
/** Source tree for mke2fs -d: a 3 MB random file (deleted afterwards when asked) and a small one. */
function sourceTree(): string {
  const src = join(dir, 'src');
  mkdirSync(join(src, 'sub'), { recursive: true });
  const rnd = new Uint8Array(3 * 1000 * 1000);
  for (let i = 0; i < rnd.length; i++) rnd[i] = (i * 2654435761) >>> 24;
  writeFileSync(join(src, 'sub', 'rand.bin'), rnd);
  writeFileSync(join(src, 'a.txt'), 'kept\n');
  return src;
}
let src: string | undefined;

/** Build an ext filesystem image with mke2fs `opts`; remove sub/rand.bin with debugfs unless keep. */
async function mkext(opts: readonly string[], { size = '8M', keep = false, debugfs = [] }: { size?: string | undefined; keep?: boolean; debugfs?: readonly string[] } = {}): Promise<string> {
  src ??= sourceTree();
  const img = join(dir, `fs${fixtureCount++}.img`);
  await must('mke2fs', ['-q', '-F', ...opts, '-d', src, img, size], sbinEnv);
  if (!keep) await must('debugfs', ['-w', '-R', 'rm sub/rand.bin', img], sbinEnv);
  for (const cmd of debugfs) await must('debugfs', ['-w', '-R', cmd, img], sbinEnv);
  return img;
}

/** dumpe2fs's free block lists as merged byte spans. */
/** What dumpe2fsFree reads: the free spans, the block size and dumpe2fs's whole output. */
interface Dumpe2fs {
  spans: [number, number][];
  blockSize: number;
  text: string;
}

async function dumpe2fsFree(img: string): Promise<Dumpe2fs> {
  const out = await must('dumpe2fs', [img], sbinEnv);
  const bs = Number(/^Block size:\s+(\d+)/m.exec(out)![1]);
  // With bigalloc, a range's end is printed as the first block of its last cluster.
  const ratio = Number(/^Cluster size:\s+(\d+)/m.exec(out)?.[1] ?? bs) / bs;
  const spans: [number, number][] = [];
  for (const m of out.matchAll(/^ {2}Free blocks: (.*)$/gm)) {
    for (const part of m[1]!.split(',').map((s) => s.trim()).filter(Boolean)) {
      const ends = part.split('-').map(Number);
      const a = ends[0]!; // split gives at least one piece
      const b = ends[1] ?? a;
      spans.push([a * bs, (Math.floor(b / ratio) + 1) * ratio * bs]);
    }
  }
  return { spans: mergeSpans(spans), blockSize: bs, text: out };
}

async function usedMap(bytes: Uint8Array, region: Region = { start: 0, length: bytes.length }): Promise<{ info: FilesystemInfo; runs: Run[]; used: number }> {
  const dev = deviceOf(bytes);
  const info = await extDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  return { info, ...(await collectUsed(extDriver, dev, region, info)) };
}

const layouts: { name: string; opts: string[]; type: string; size?: string }[] = [
  { name: 'ext2, 1 KiB blocks', opts: ['-t', 'ext2'], type: 'ext2' },
  { name: 'ext3, 1 KiB blocks, several groups', opts: ['-t', 'ext3', '-g', '2048'], type: 'ext3' },
  { name: 'ext4 default (64bit, flex_bg, metadata_csum), 1 KiB blocks, 9 groups', opts: ['-t', 'ext4', '-g', '1024'], type: 'ext4' },
  { name: 'ext4 4 KiB blocks, BLOCK_UNINIT groups', opts: ['-t', 'ext4', '-b', '4096', '-g', '1024'], size: '16M', type: 'ext4' },
  { name: 'ext4 without flex_bg, crc16 descriptor checksums (uninit_bg)', opts: ['-t', 'ext4', '-O', '^flex_bg,^metadata_csum,uninit_bg', '-g', '1024'], type: 'ext4' },
  { name: 'ext4 32-byte descriptors (^64bit)', opts: ['-t', 'ext4', '-O', '^64bit', '-g', '1024'], type: 'ext4' },
  { name: 'ext4 meta_bg', opts: ['-t', 'ext4', '-O', 'meta_bg,^resize_inode', '-g', '256'], type: 'ext4' },
  { name: 'ext4 bigalloc, 16 KiB clusters', opts: ['-t', 'ext4', '-b', '4096', '-O', 'bigalloc', '-C', '16384'], size: '16M', type: 'ext4' },
  { name: 'ext4 sparse_super2', opts: ['-t', 'ext4', '-O', 'sparse_super2', '-g', '1024'], type: 'ext4' },
  { name: 'ext4 flex_bg of 4 without checksums', opts: ['-t', 'ext4', '-b', '4096', '-g', '1024', '-G', '4', '-O', '^metadata_csum,^uninit_bg'], size: '16M', type: 'ext4' },
];

test('ext used map equals dumpe2fs free block lists, for every layout', { skip: missing }, async (t) => {
  for (const l of layouts) {
    await t.test(l.name, async () => {
      const img = await mkext(l.opts, { size: l.size });
      const bytes = new Uint8Array(readFileSync(img));
      const { info, runs } = await usedMap(bytes);
      assert.equal(info.type, l.type);
      assert.equal(info.state, 'clean');
      assert.equal(info.untrusted, null);
      assert.equal(info.size, bytes.length);
      const want = await dumpe2fsFree(img);
      assert.deepEqual(freeSpans(runs, { start: 0, length: bytes.length }), want.spans);
      assert.ok(want.spans.reduce((n, [a, b]) => n + b - a, 0) >= 3 * 1000 * 1000, 'the deleted file left its space free');
      await countersAgree(bytes, info, want);
    });
  }
});

const spanBytes = (spans: readonly (readonly [number, number])[]): number => spans.reduce((n, [a, b]) => n + b - a, 0);

/**
 * What `vhdx info` uses by default (usage 'counters', no bitmap read): the descriptors' free
 * counts give the same free bytes as the bitmaps, and the coarse used map frees only space the
 * exact one frees: the groups holding nothing but their metadata, exactly, when there are any.
 */
async function countersAgree(bytes: Uint8Array, info: FilesystemInfo, want: Dumpe2fs): Promise<void> {
  const dev = deviceOf(bytes);
  const region = { start: 0, length: bytes.length };
  assert.equal(await extDriver.counterFreeBytes!(dev, region, info), spanBytes(want.spans), 'free bytes from the counters');
  const coarse = freeSpans((await collectUsed(extDriver, dev, region, info, { usage: 'counters' })).runs, region);
  for (const [a, b] of coarse) assert.ok(want.spans.some(([x, y]) => x <= a && b <= y), `coarse free span ${a}-${b} is free in the bitmaps`);
  const groups = want.text.match(/^Group \d+:/gm)!.length;
  if (groups > 2) assert.ok(spanBytes(coarse) > 0, 'groups holding only their metadata are free without their bitmaps');
}

test('usage from the counters: a group whose free count disagrees with its metadata counts whole, and reads no bitmap', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext2', '-g', '1024']);
  const bytes = new Uint8Array(readFileSync(img));
  const { info } = await usedMap(bytes);
  const { spans, text } = await dumpe2fsFree(img);
  const region = { start: 0, length: bytes.length };
  // Which bytes the counters' walk reads: the superblock and the descriptor table, no bitmap.
  const reads: [number, number][] = [];
  const counting = new (class extends RawDevice {
    override read(off: number, buf: Uint8Array): Promise<void> {
      reads.push([off, buf.length]);
      return super.read(off, buf);
    }
  })(new MemorySource(bytes));
  const before = freeSpans((await collectUsed(extDriver, counting, region, info, { usage: 'counters' })).runs, region);
  const bitmaps = [...Array(text.match(/^Group \d+:/gm)!.length).keys()].map((g) => bitmapBlock(text, g) * KiB);
  assert.ok(!reads.some(([off, n]) => bitmaps.some((b) => off <= b && b < off + n)), 'no block bitmap read');
  // Group 7 (1 + 7 * 1024 ..) holds only its metadata: free in full but for it. Its count says 1 block more used.
  const view = new DataView(bytes.buffer);
  const desc = 2 * KiB + 7 * 32;
  view.setUint16(desc + 0x0c, view.getUint16(desc + 0x0c, true) - 1, true);
  const after = freeSpans((await collectUsed(extDriver, deviceOf(bytes), region, info, { usage: 'counters' })).runs, region);
  assert.notDeepEqual(cutGroups(before, [7]), before, 'group 7 was free but for its metadata');
  assert.deepEqual(after, cutGroups(before, [7]));
  assert.deepEqual(freeSpans((await usedMap(bytes)).runs, region), spans, 'the bitmaps still give the exact map');
});

test('ext label and UUID are read as mke2fs wrote them', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext4', '-L', 'wsl-data', '-U', '0b1c2d3e-4f50-4162-8374-a5b6c7d8e9f0'], { keep: true });
  const info = await extDriver.detect(deviceOf(new Uint8Array(readFileSync(img))), { start: 0, length: 8 * MiB });
  assert.ok(info, 'recognised');
  assert.equal(info.label, 'wsl-data');
  assert.equal(info.uuid, '0b1c2d3e-4f50-4162-8374-a5b6c7d8e9f0');
});

test('a filesystem inside a larger disk: runs are absolute, space past its end counts as used', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext4', '-g', '1024']);
  const fs = new Uint8Array(readFileSync(img));
  const disk = new Uint8Array(MiB + fs.length + 512 * KiB).fill(0xaa);
  disk.set(fs, MiB);
  const region = { start: MiB, length: fs.length + 512 * KiB };
  const whole = await usedMap(fs);
  const inside = await usedMap(disk, region);
  const shifted = whole.runs.map((r) => ({ start: r.start + MiB, length: r.length }));
  const last = shifted[shifted.length - 1]!;
  if (last.start + last.length === MiB + fs.length) last.length += 512 * KiB;
  else shifted.push({ start: MiB + fs.length, length: 512 * KiB });
  assert.deepEqual(inside.runs, shifted);
});

test('ext states that make free space untrusted: journal needs recovery, not clean, errors, unknown incompat feature, bad superblock checksum', { skip: missing }, async () => {
  const cases = [
    { cmd: 'feature needs_recovery', state: 'needs-recovery', why: /journal needs recovery/ },
    { cmd: 'ssv state 0', state: 'dirty', why: /not cleanly unmounted/ },
    { cmd: 'ssv state 3', state: 'dirty', why: /errors/ },
    { cmd: 'ssv feature_incompat 0x100002c2', state: 'unknown', why: /unknown incompatible features 0x10000000/ },
  ];
  for (const c of cases) {
    const img = await mkext(['-t', 'ext4'], { debugfs: [c.cmd] });
    const bytes = new Uint8Array(readFileSync(img));
    const { info, runs } = await usedMap(bytes);
    assert.equal(info.state, c.state, c.cmd);
    assert.match(info.untrusted ?? '', c.why, c.cmd);
    assert.deepEqual(runs, [{ start: 0, length: bytes.length }], `${c.cmd}: all of it is used`);
  }
  const img = await mkext(['-t', 'ext4']);
  const bytes = new Uint8Array(readFileSync(img));
  bytes[1024 + 0x100]! ^= 1; // s_default_mount_opts, covered by the superblock checksum
  const { info } = await usedMap(bytes);
  assert.equal(info.untrusted, 'superblock checksum mismatch');
});

test('an external journal device is recognised as such, and all of it is used', { skip: missing }, async () => {
  const img = join(dir, 'journal.img');
  await must('mke2fs', ['-q', '-F', '-O', 'journal_dev', '-b', '4096', '-L', 'jdev', img, '4M'], sbinEnv);
  const bytes = new Uint8Array(readFileSync(img));
  const { info, runs } = await usedMap(bytes);
  assert.equal(info.type, 'jbd');
  assert.equal(info.label, 'jdev');
  assert.match(info.untrusted ?? '', /external journal/);
  assert.deepEqual(runs, [{ start: 0, length: bytes.length }]);
});

/** `spans` without the bytes of groups `gs` (1 KiB blocks, 1024 blocks per group, first data block 1). */
function cutGroups(spans: readonly [number, number][], gs: readonly number[]): [number, number][] {
  let out = [...spans];
  for (const g of gs) {
    const [a, b] = [(1 + g * 1024) * KiB, (1 + (g + 1) * 1024) * KiB];
    out = out.flatMap(([s, e]) => {
      const sides: [number, number][] = [[s, Math.min(e, a)], [Math.max(s, b), e]];
      return sides.filter(([x, y]) => y > x);
    });
  }
  return out;
}

/** Block bitmap location of group g from dumpe2fs. */
function bitmapBlock(text: string, g: number): number {
  const part = text.split(/^Group /m).find((s) => s.startsWith(`${g}:`));
  return Number(/Block bitmap at (\d+)/.exec(part!)![1]);
}

test('a bad block bitmap checksum keeps that group used, the others unchanged', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext4', '-g', '1024']);
  const bytes = new Uint8Array(readFileSync(img));
  const before = await usedMap(bytes);
  const { text, blockSize } = await dumpe2fsFree(img);
  const g = 4; // a data group: 1 + 4 * 1024 .. 5 * 1024 (first data block 1)
  bytes[bitmapBlock(text, g) * blockSize + 100]! ^= 0x10;
  const after = await usedMap(bytes);
  const region = { start: 0, length: bytes.length };
  const without = cutGroups(freeSpans(before.runs, region), [g]);
  assert.notDeepEqual(without, freeSpans(before.runs, region), 'the group had free space');
  assert.deepEqual(freeSpans(after.runs, region), without);
});

test('a bitmap pointer outside the filesystem, or a bad crc16 descriptor checksum, keeps that group used', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext2', '-g', '1024']);
  const bytes = new Uint8Array(readFileSync(img));
  const before = await usedMap(bytes);
  const view = new DataView(bytes.buffer);
  const desc = (g: number) => 2 * KiB + g * 32; // ext2, 1 KiB blocks: the table starts at block 2
  view.setUint32(desc(3), 0xfffffff0, true);
  view.setUint32(desc(5), 0, true);
  const after = await usedMap(bytes);
  const region = { start: 0, length: bytes.length };
  assert.deepEqual(freeSpans(after.runs, region), cutGroups(freeSpans(before.runs, region), [3, 5]));

  const csum = await mkext(['-t', 'ext4', '-O', '^flex_bg,^metadata_csum,uninit_bg', '-g', '1024']);
  const cb = new Uint8Array(readFileSync(csum));
  const cbefore = await usedMap(cb);
  cb[2 * KiB + 6 * 64 + 0x0c]! ^= 1; // group 6's free block count: its checksum no longer matches
  const cafter = await usedMap(cb);
  assert.deepEqual(freeSpans(cafter.runs, region), cutGroups(freeSpans(cbefore.runs, region), [6]));
});

test('damaged geometry is recognised as ext but untrusted, never a huge allocation', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext2'], { keep: true });
  const base = new Uint8Array(readFileSync(img));
  const patch = (fn: (v: DataView) => void) => {
    const b = base.slice();
    fn(new DataView(b.buffer, 1024));
    return b;
  };
  const cases: [string, (v: DataView) => void, RegExp][] = [
    ['blocks count far past the partition', (v) => v.setUint32(0x04, 0xffffffff, true), /larger than its partition/],
    ['no blocks per group', (v) => v.setUint32(0x20, 0, true), /damaged superblock/],
    ['more clusters per group than a bitmap block holds', (v) => (v.setUint32(0x20, 1 << 20, true), v.setUint32(0x24, 1 << 20, true)), /damaged superblock/],
    ['block size 2^40', (v) => v.setUint32(0x18, 30, true), /damaged superblock/],
    ['inode size not a power of two', (v) => v.setUint16(0x58, 300, true), /damaged superblock/],
  ];
  for (const [name, fn, why] of cases) {
    const b = patch(fn);
    const { info, runs } = await usedMap(b);
    assert.match(info.untrusted ?? '', why, name);
    assert.deepEqual(runs, [{ start: 0, length: b.length }], name);
  }
  // Tiny groups (8 blocks each: thousands of descriptors read through the cache) stay exact.
  const tiny = await mkext(['-t', 'ext2', '-g', '256', '-N', '64'], { size: '4M' });
  const tb = new Uint8Array(readFileSync(tiny));
  const { runs } = await usedMap(tb);
  assert.deepEqual(freeSpans(runs, { start: 0, length: tb.length }), (await dumpe2fsFree(tiny)).spans);
});

test('not ext: zeros, a short region, another signature', { skip: missing }, async () => {
  const zeros = new Uint8Array(64 * KiB);
  assert.equal(await extDriver.detect(deviceOf(zeros), { start: 0, length: zeros.length }), null);
  const img = await mkext(['-t', 'ext4'], { keep: true });
  const bytes = new Uint8Array(readFileSync(img));
  assert.equal(await extDriver.detect(deviceOf(bytes), { start: 0, length: 2000 }), null, 'region too short for the superblock');
  assert.equal(await extDriver.detect(deviceOf(bytes), { start: 512, length: bytes.length - 512 }), null, 'superblock not at byte 1024 of the region');
});

test('ext used map honours abort and reports progress to the end', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext4', '-g', '1024']);
  const bytes = new Uint8Array(readFileSync(img));
  const dev = deviceOf(bytes);
  const region = { start: 0, length: bytes.length };
  const info = await extDriver.detect(dev, region);
  assert.ok(info, 'recognised');
  const seen: [number, number][] = [];
  await collectUsed(extDriver, dev, region, info, { onProgress: (d, t) => seen.push([d, t]) });
  assert.ok(seen.length >= 9, 'one report per group at least');
  assert.deepEqual(seen[seen.length - 1], [bytes.length, bytes.length]);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i]![0] >= seen[i - 1]![0], 'progress never goes back');
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(collectUsed(extDriver, dev, region, info, { signal: ac.signal }), { code: 'ECANCELED' });
});

test('fuzz: mutated ext superblocks, descriptors and bitmaps give info, null or a VhdxError', { skip: missing }, async () => {
  const img = await mkext(['-t', 'ext4', '-g', '1024']);
  const bytes = new Uint8Array(readFileSync(img));
  const hot: [number, number][] = [
    [1024, 2048], // superblock
    [2048, 2048 + 9 * 64], // descriptors
    [66 * KiB, 80 * KiB], // bitmaps (flex_bg: side by side in group 0)
  ];
  const recognised = await fuzzDriver(extDriver, bytes, { seed: 0xe4, rounds: 150, hot });
  assert.ok(recognised > 50, `most mutations still look like ext (${recognised})`);
});
