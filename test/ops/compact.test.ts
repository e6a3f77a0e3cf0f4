// vhdx compact (src/ops/compact.ts), in memory: what it releases and keeps, and power loss at
// every write and flush of a compact of a dynamic disk (ext4 with deleted files and NTFS with
// truncated ones, their free space full of old bytes) and of a differencing disk (junk written
// into the filesystem's free space through the child). After every crash the image opens, passes check (leaks allowed), reads
// every byte any filesystem uses as before, and a second compact finishes the job: the same
// file size as an uninterrupted run, nothing leaked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemorySource, VhdxImage, compact, createImage, isVhdxError, usedRuns, type CompactOptions } from '../../src/index.js';
import { FaultySource, type CrashImageOptions } from '../../src/io/faulty.js';
import { checkInvariants } from '../helpers/invariants.js';
import { makeChild } from '../helpers/chain.js';
import { needTool, sbinEnv } from '../helpers/fs-fixtures.js';
import { must, shmScratch } from '../helpers/tools.js';
import { seededRandom } from '../helpers/hex.js';
import { bytesEqual } from '../helpers/model.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

/** `n` seeded random bytes. */
function noise(seed: number, n: number): Uint8Array {
  const rnd = seededRandom(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rnd() * 256);
  return out;
}

let ext4Cache: Uint8Array | null = null;
/**
 * An 8 MiB ext4 filesystem (raw bytes) over old bytes: files written with `mke2fs -d`, two of
 * them then deleted with debugfs, so that their data stays on disk.
 */
async function ext4Fixture(): Promise<Uint8Array> {
  if (ext4Cache) return ext4Cache;
  const dir = shmScratch('vhdx-compact-');
  const files = join(dir, 'files');
  mkdirSync(files);
  for (let i = 1; i <= 4; i++) writeFileSync(join(files, `f${i}`), noise(i, 1200 * 1024 + i * 4096));
  const raw = join(dir, 'fs.raw');
  writeFileSync(raw, noise(99, SIZE)); // old bytes everywhere mke2fs does not write
  await must('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '1024', '-J', 'size=1', '-E', 'lazy_itable_init=0,nodiscard', '-d', files, raw], sbinEnv);
  for (const f of ['f1', 'f3']) await must('debugfs', ['-w', '-R', `rm /${f}`, raw], sbinEnv);
  ext4Cache = new Uint8Array(readFileSync(raw));
  return ext4Cache;
}

let ntfsCache: Uint8Array | null = null;
/**
 * An 8 MiB NTFS volume over old bytes (mkntfs -Q writes only its structures): files copied in
 * with ntfscp, two of them then truncated to nothing (ntfstruncate), their data left on disk.
 */
async function ntfsFixture(): Promise<Uint8Array> {
  if (ntfsCache) return ntfsCache;
  const dir = shmScratch('vhdx-compact-ntfs-');
  const raw = join(dir, 'fs.raw');
  writeFileSync(raw, noise(98, SIZE));
  await must('mkntfs', ['-F', '-Q', '-q', raw], sbinEnv);
  for (let i = 1; i <= 4; i++) {
    writeFileSync(join(dir, `f${i}`), noise(20 + i, 1200 * 1024 + i * 4096));
    await must('ntfscp', ['-q', raw, join(dir, `f${i}`), `f${i}`], sbinEnv);
  }
  const ls = await must('ntfsls', ['-i', raw], sbinEnv);
  for (const f of ['f1', 'f3']) await must('ntfstruncate', ['-f', raw, new RegExp(`^\\s*(\\d+)\\s+${f}$`, 'm').exec(ls)![1]!, '0x80', '0'], sbinEnv);
  ntfsCache = new Uint8Array(readFileSync(raw));
  return ntfsCache;
}

/** A dynamic VHDX (1 MiB blocks) in memory holding `bytes`, every block allocated. */
async function vhdxOf(bytes: Uint8Array): Promise<Uint8Array> {
  const mem = new MemorySource();
  await createImage(mem, { size: bytes.length, blockSize: MiB });
  const img = await VhdxImage.open(mem, { readOnly: false });
  await img.write(0, bytes);
  await img.close();
  return mem.bytes().slice();
}

/** The used runs of the disk `img` shows, as [start, length] pairs. */
async function usedOf(img: VhdxImage): Promise<[number, number][]> {
  const out: [number, number][] = [];
  for await (const r of usedRuns(img)) out.push([r.start, r.length]);
  return out;
}

/** The first used byte that `img` reads differently from `want`, or null. */
async function firstUsedDifference(img: VhdxImage, used: [number, number][], want: Uint8Array): Promise<string | null> {
  const got = new Uint8Array(img.size);
  await img.read(0, got);
  for (const [s, l] of used) {
    if (bytesEqual(got.subarray(s, s + l), want.subarray(s, s + l))) continue;
    for (let i = s; i < s + l; i++) if (got[i] !== want[i]) return `byte ${i} (used run at ${s}) reads ${got[i]}, was ${want[i]}`;
  }
  return null;
}

/**
 * Compact the image `base` holds (opened by `open`) with a crash at every mutating operation.
 * `want` is the disk as it read before, `used` its used runs. Returns the crash points.
 */
/** Opens an image over a test source, read-only when told. */
type Opener = (src: FaultySource, readOnly?: boolean) => Promise<VhdxImage>;

async function crashEverywhere(
  base: Uint8Array,
  { open, want, used, compactOpts = {} }: { open: Opener; want: Uint8Array; used: [number, number][]; compactOpts?: CompactOptions },
): Promise<number> {
  const dry = new FaultySource(base, { trace: true });
  let img = await open(dry);
  const full = await compact(img, compactOpts);
  await img.close();
  const total = dry.mutations;
  assert.ok(full.released.unused + full.released.zero > 0 && full.moved > 0, `something to do: ${JSON.stringify(full)}`);
  assert.ok(total > 10, `${total} mutating operations`);
  assert.deepEqual(await checkInvariants(dry, { noLeaks: true }), [], 'uninterrupted: sound, nothing leaked');
  const failures: string[] = [];
  for (let n = 1; n <= total && failures.length < 5; n++) {
    const run = new FaultySource(base, { crashAt: n, trace: true });
    try {
      img = await open(run);
      await compact(img, compactOpts);
      await img.close();
    } catch (e) {
      if (!run.isCrashed) throw e;
    }
    assert.ok(run.isCrashed, `crash point ${n} reached`);
    const crashes: CrashImageOptions[] = [{ keep: 'none' }, { keep: 'random', seed: n, tear: true }];
    for (const v of crashes) {
      const label = `crash at ${n}/${total} (${run.trace![n - 1]?.kind}), ${JSON.stringify(v)}`;
      const crashed = run.crashImage(v);
      try {
        const ro = await open(crashed.clone(), true);
        const d = await firstUsedDifference(ro, used, want);
        await ro.close();
        if (d) failures.push(`${label}: ${d}`);
        for (const f of await checkInvariants(crashed.clone(), { clean: false })) failures.push(`${label}: ${f}`);
        if (v.keep !== 'random') continue;
        // A second run finishes the job.
        const again = await open(crashed);
        await compact(again, compactOpts);
        await again.close();
        if (crashed.size !== dry.size) failures.push(`${label}: the rerun left ${crashed.size} bytes, an uninterrupted run ${dry.size}`);
        for (const f of await checkInvariants(crashed, { noLeaks: true })) failures.push(`${label}, rerun: ${f}`);
        const after = await open(crashed, true);
        const d2 = await firstUsedDifference(after, used, want);
        await after.close();
        if (d2) failures.push(`${label}, rerun: ${d2}`);
      } catch (e) {
        failures.push(`${label}: ${isVhdxError(e) ? e.reason : ''} ${e instanceof Error ? e.stack : e}`);
      }
    }
  }
  assert.deepEqual(failures, []);
  return total;
}

const noExt4 = (await needTool('mke2fs', 'e2fsprogs')) || (await needTool('debugfs', 'e2fsprogs'));

test('compact releases the blocks of deleted files and keeps every used byte; a dry run writes nothing', { skip: noExt4 }, async () => {
  const fs = await ext4Fixture();
  const base = await vhdxOf(fs);
  const src = new FaultySource(base);
  const ro = await VhdxImage.open(src);
  const dry = await compact(ro, { dryRun: true });
  await ro.close();
  assert.equal(src.mutations, 0, 'a dry run writes nothing');
  assert.ok(dry.released.unused >= 2, `the deleted files' blocks: ${JSON.stringify(dry.released)}`);
  assert.deepEqual(dry.skipped, []);
  const img = await VhdxImage.open(src, { readOnly: false });
  const used = await usedOf(img);
  const r = await compact(img);
  await img.close();
  assert.deepEqual(r.released, dry.released, 'the dry run said what the run did');
  assert.equal(r.fileSizeAfter, src.size);
  assert.equal(r.fileSizeAfter, dry.fileSizeAfter, 'the estimate is the size reached');
  assert.equal(r.fileSizeBefore - r.fileSizeAfter, (r.released.unused + r.released.zero) * MiB);
  const after = await VhdxImage.open(src);
  assert.equal(await firstUsedDifference(after, used, fs), null);
  // Released blocks read as zeros (ZERO blocks, no place).
  const st = await after.blockStatus(0, SIZE);
  assert.equal(st.filter((x) => x.type === 'zero').reduce((a, x) => a + x.length, 0), r.releasedBytes);
  await after.close();
  assert.deepEqual(await checkInvariants(src, { noLeaks: true }), []);
  // Nothing left to do.
  const again = await VhdxImage.open(src, { readOnly: false });
  const r2 = await compact(again);
  await again.close();
  assert.deepEqual([r2.released, r2.moved, r2.fileSizeAfter], [{ unused: 0, zero: 0 }, 0, r.fileSizeAfter]);
});

test('zeroes mode releases only blocks that read as zeros, whatever the filesystem says; fixed disks are refused', async () => {
  const mem = new MemorySource();
  await createImage(mem, { size: 8 * MiB, blockSize: MiB });
  let img = await VhdxImage.open(mem, { readOnly: false });
  await img.write(0, noise(1, 2 * MiB));
  await img.write(2 * MiB, new Uint8Array(MiB)); // zeros written as data
  await img.write(5 * MiB, noise(2, MiB));
  await img.close();
  img = await VhdxImage.open(mem, { readOnly: false });
  const r = await compact(img, { mode: 'zeroes' });
  await img.close();
  assert.deepEqual(r.released, { unused: 0, zero: 1 });
  assert.equal(r.moved, 1, 'block 5 moved down into block 2\'s place');
  img = await VhdxImage.open(mem);
  const got = new Uint8Array(MiB);
  await img.read(5 * MiB, got);
  assert.deepEqual(got, noise(2, MiB));
  await img.close();
  const fixed = new MemorySource();
  await createImage(fixed, { size: 4 * MiB, blockSize: MiB, subformat: 'fixed' });
  const f = await VhdxImage.open(fixed, { readOnly: false });
  await assert.rejects(compact(f), (e) => isVhdxError(e) && e.code === 'ENOTSUP' && /fixed disk/.test(e.message));
  await f.close();
});

test('power loss at every write and flush of a compact of a dynamic ext4 disk: used bytes kept, a rerun finishes', { skip: noExt4 }, async (t) => {
  const fs = await ext4Fixture();
  const base = await vhdxOf(fs);
  const probe = await VhdxImage.open(new FaultySource(base));
  const used = await usedOf(probe);
  await probe.close();
  // A record of free space of one block: a round per released block of release, pack and cut.
  const open = (d: FaultySource, ro = false) => VhdxImage.open(d, { readOnly: ro, maxUnownedFreeBytes: MiB });
  const total = await crashEverywhere(base, { open, want: fs, used });
  t.diagnostic(`${total} crash points`);
});

const noNtfs = (await needTool('mkntfs', 'ntfs-3g')) || (await needTool('ntfscp', 'ntfs-3g')) || (await needTool('ntfstruncate', 'ntfs-3g'));

test('power loss at every write and flush of a compact of a dynamic NTFS disk: used bytes kept, a rerun finishes', { skip: noNtfs }, async (t) => {
  const fs = await ntfsFixture();
  const base = await vhdxOf(fs);
  const probe = await VhdxImage.open(new FaultySource(base));
  const used = await usedOf(probe);
  await probe.close();
  const open = (d: FaultySource, ro = false) => VhdxImage.open(d, { readOnly: ro });
  const total = await crashEverywhere(base, { open, want: fs, used });
  t.diagnostic(`${total} crash points`);
});

test('power loss at every write and flush of a compact of a differencing disk: released blocks hide the parent', { skip: noExt4 }, async (t) => {
  const fs = await ext4Fixture();
  const parentBytes = await vhdxOf(fs);
  const parent = () => VhdxImage.open(new MemorySource(parentBytes));
  const p = await parent();
  const used = await usedOf(p);
  // Blocks no filesystem uses at all, and one that it uses.
  const isUsed = (b: number) => used.some(([s, l]) => s < (b + 1) * MiB && b * MiB < s + l);
  const free: number[] = [];
  for (let b = 0; b < SIZE / MiB; b++) if (!isUsed(b)) free.push(b);
  const content = new Uint8Array(SIZE);
  await p.read(0, content);
  const usedBlock = [...Array(SIZE / MiB).keys()].find((b) => isUsed(b) && b > 2 && content.subarray(b * MiB, (b + 1) * MiB).some((x) => x !== 0));
  assert.ok(free.length >= 2, `free blocks: ${free}`);
  assert.ok(usedBlock !== undefined, 'a used block holding data');
  const mem = new MemorySource();
  await makeChild(p, { blockSize: MiB, src: mem });
  await p.close();
  const child = await VhdxImage.open(mem, { readOnly: false, parent });
  await child.write(free[0]! * MiB, noise(7, MiB)); // junk over a whole free block
  const keep = new Uint8Array(MiB);
  await child.read(usedBlock * MiB, keep);
  await child.write(usedBlock * MiB, keep); // a used block copied into the child
  await child.write(free[1]! * MiB + 4096, noise(8, 8192)); // partially present, in free space
  await child.close();
  const base = mem.bytes().slice();
  const want = new Uint8Array(SIZE);
  const before = await VhdxImage.open(new MemorySource(base), { parent });
  await before.read(0, want);
  await before.close();
  const open = (d: FaultySource, ro = false) => VhdxImage.open(d, { readOnly: ro, parent });
  // Without a crash: the free blocks become ZERO (depth 0), not NOT_PRESENT (the parent's bytes).
  const once = new FaultySource(base);
  const img = await open(once);
  const r = await compact(img);
  await img.close();
  assert.deepEqual(r.released, { unused: 2, zero: 0 });
  const after = await open(once, true);
  for (const b of free.slice(0, 2)) {
    const x = (await after.blockStatus(b * MiB, MiB))[0]!;
    assert.deepEqual([x.type, x.depth, x.length], ['zero', 0, MiB], `block ${b} is a ZERO block of the child`);
  }
  await after.close();
  const total = await crashEverywhere(base, { open, want, used });
  t.diagnostic(`${total} crash points`);
});
