// Power loss at every write and flush of a workload (src/driver/writer.ts through src/io/faulty.ts).
//
// A dry run counts the mutating operations (writes, flushes, truncates) the workload issues; then
// for each one, the workload runs again on a FaultySource that dies there, and the post-crash disk
// is built with several seeds (nothing unflushed lands, everything lands, random subsets with one
// write torn at a 4 KiB or a 512-byte boundary). Each post-crash image must open read-only (log replayed in
// memory, nothing written) and writable (log replayed in place); both must read the same, and
// every byte must be what the last completed flush left or what a later write issued before the
// crash put there. After the writable open and close the image must pass the structural checks,
// and a sample must pass `qemu-img check`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { MemorySource, VhdxImage, type VhdxError } from '../../src/index.js';
import type { CrashImageOptions, FaultySource } from '../../src/testing.js';
import { planLayout, writeNewImage, type LayoutOptions } from '../../src/driver/layout.js';
import { checkInvariants } from '../helpers/invariants.js';
import { bytesEqual, crashCheck, type CrashOp, type SparseModel } from '../helpers/model.js';
import { ops, readRanges, runWorkload, writeSparseFile, type Op } from '../helpers/workload.js';
import { hasTool, scratch } from '../helpers/env.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const B = (n: number): number => n * MiB;

async function baseImage(layout: LayoutOptions): Promise<Uint8Array> {
  const mem = new MemorySource();
  await writeNewImage(mem, planLayout(layout));
  return mem.bytes().slice();
}

/** A workload: the image it starts from and the operations it runs. */
interface Workload {
  layout: LayoutOptions & { blockSize: number };
  ops: Op[];
}

type Range = [offset: number, length: number];

// A dynamic disk of three BAT sectors' worth of blocks (512 entries per 4 KiB sector), so that
// commits carry several sectors and a crash can fall between their in-place writes.
const DYNAMIC: Workload = {
  layout: { virtualSize: B(1536), blockSize: MiB, logicalSectorSize: 512 },
  ops: ops(({ w, zero, discard, flush, close, parallel }) => [
    w(0, 4 * KiB), // allocate block 0
    w(B(1) + 512 * KiB, MiB), // allocate blocks 1 and 2 with one write
    w(B(600) + 12345, 3000), // second BAT sector, unaligned
    w(B(1200), 8 * KiB), // third BAT sector
    flush,
    w(100, 200), // overwrite in place
    w(B(3) + 4 * KiB, 64 * KiB, true), // FUA allocation
    zero(B(1), MiB), // whole block: ZERO state, no data written
    zero(B(2) + 4 * KiB, 8 * KiB), // part of an allocated block: zeros written
    discard(B(600), MiB), // whole block: UNMAPPED
    discard(0, KiB), // part of an allocated block: zeros written
    w(B(1) + 777, 5000), // a ZERO block allocated again
    flush,
    parallel(
      ...[4, 5, 6, 7].map((b) => w(B(b) + b * 4 * KiB, 16 * KiB)),
      w(B(601) + 4 * KiB, 4 * KiB),
      w(B(1201), 4 * KiB),
      w(B(1535) + MiB - 4 * KiB, 4 * KiB), // the last block
    ),
    w(B(5) + 100, 100), // in place, in a block of the pending batch
    w(B(8) + 100, 100), // allocation
    w(B(12), 4 * KiB, true), // FUA: commits the batch
    zero(B(1200), MiB + 4 * KiB), // whole block 1200, part of block 1201
    w(B(13) - 100, 200), // across a block boundary, one side new
    close,
  ]),
};

// Discard-and-rewrite cycles: freed places reused by the block itself, by other blocks (a
// discarded block's claim, linked in one log entry with its new owner; a zeroed block's place,
// once the zeroing is committed), found again by the scan after a reopen, given back zeroed at
// close, and cut off the end. A reused place must never show what was there before.
const REUSE: Workload = {
  layout: { virtualSize: B(16), blockSize: MiB, logicalSectorSize: 512 },
  ops: ops(({ w, zero, discard, flush, close, parallel }) => [
    w(0, 3 * MiB), // blocks 0, 1, 2
    w(B(5), 4 * KiB),
    w(B(6) + 100, 200),
    flush,
    discard(B(1), MiB), // a claim (UNMAPPED keeps its place)
    zero(B(2), MiB), // unowned: ZERO names no place
    w(B(1) + 100, 200), // block 1 back in its own place, zeros around
    flush,
    w(B(8) + 4 * KiB, 4 * KiB), // block 2's place, its zeroing committed
    discard(B(0), MiB),
    discard(B(5), MiB),
    flush,
    parallel(w(B(9), MiB), w(B(10) + 5, 10)), // the claims of blocks 0 and 5
    discard(B(6), MiB),
    w(B(11) + 512, 512), // block 6's claim: its discard is committed first
    { kind: 'reopen' }, // close (zeroing and giving back, cutting the end) and a scan
    w(B(12), 8 * KiB),
    discard(B(9), MiB),
    zero(B(8), MiB),
    flush,
    w(B(13) + 3000, 3000),
    w(B(14), 4 * KiB),
    zero(B(10), MiB), // not reused: zeroed and given back at close
    discard(B(14), MiB), // the last block: cut at close
    close,
  ]),
};

// A fixed disk with 4 KiB sectors: every block stays allocated, zeroing writes zeros.
const FIXED: Workload = {
  layout: { virtualSize: B(10), blockSize: MiB, logicalSectorSize: 4096, fixed: true },
  ops: ops(({ w, zero, discard, flush, close }) => [
    w(0, 4 * KiB),
    w(B(1) + 8 * KiB, MiB),
    flush,
    w(B(3), 12 * KiB, true),
    zero(B(2), MiB),
    discard(B(4) + 4 * KiB, 64 * KiB),
    w(B(9) + 4 * KiB, 8 * KiB),
    flush,
    w(B(5), 4 * KiB),
    zero(0, 2 * KiB),
    close,
  ]),
};

function touchedBlocks(list: readonly Op[], bs: number): number[] {
  const out = new Set<number>();
  const visit = (op: Op): void => {
    if (op.kind === 'parallel') return op.ops.forEach(visit);
    if (op.kind !== 'write' && op.kind !== 'zero' && op.kind !== 'discard') return;
    const len = op.kind === 'write' ? op.data.length : op.length;
    for (let b = Math.floor(op.offset / bs); b * bs < op.offset + len; b++) out.add(b);
  };
  list.forEach(visit);
  return [...out].sort((a, b) => a - b);
}

/** Whole blocks as ranges. */
const blockRanges = (blocks: readonly number[], bs: number, size: number): Range[] => blocks.map((b): Range => [b * bs, Math.min(bs, size - b * bs)]);

/** Post-crash disks per crash point: nothing unflushed lands, all of it lands, random subsets with a torn write. */
const CRASH_VARIANTS = (n: number): CrashImageOptions[] => [
  { keep: 'none' },
  { keep: 'all' },
  { keep: 'random', seed: n * 7 + 1, tear: true },
  // On even points, a disk with 512-byte physical sectors: even a header or a BAT sector may tear.
  ...(n % 2 === 0 ? [{ keep: 'random' as const, seed: n * 7 + 2, tear: true, tearUnit: 512 }] : []),
];

let replayCrashImages = 0;

/**
 * Check one post-crash disk. Returns failure messages (empty when it passes). `qemuDir`: when
 * set, the image after a writable open and close is written there and checked by qemu-img.
 */
interface CrashImageCheck {
  ranges: Range[];
  blocks: number[];
  durable: SparseModel;
  since: CrashOp[];
  label: string;
  qemuPath?: string | null;
  bufs: { ro: Uint8Array[]; rw: Uint8Array[] };
  reopen?: boolean;
  replayCrashes?: boolean;
}

async function checkCrashImage(crashed: FaultySource, { ranges, blocks, durable, since, label, qemuPath, bufs, reopen, replayCrashes }: CrashImageCheck): Promise<string[]> {
  const failures: string[] = [];
  const fail = (m: string): number => failures.push(`${label}: ${m}`);
  if (replayCrashes) {
    // Power lost again, during the writable open's in-place replay: at each of its writes and
    // flushes. The image must still satisfy everything below.
    const probe = crashed.clone();
    await (await VhdxImage.open(probe, { readOnly: false })).close();
    const replayOps = probe.mutations;
    for (let k = 1; k <= replayOps; k++) {
      const dying = crashed.clone({ crashAt: k });
      let opened = null;
      try {
        opened = await VhdxImage.open(dying, { readOnly: false });
      } catch (e) {
        if (!dying.isCrashed) throw e;
      }
      if (opened) {
        // The crash point lies after the replay (in the close): still a valid crash point.
        await opened.close().catch(() => undefined);
      }
      const again = dying.crashImage({ keep: 'random', seed: k, tear: true });
      replayCrashImages++;
      const res = await checkCrashImage(again, { ranges, blocks, durable, since, label: `${label}, then at replay operation ${k}/${replayOps}`, bufs });
      failures.push(...res);
    }
  }
  const roSrc = crashed.clone();
  // Read-only: opens, replays in memory, writes nothing.
  let roData: Uint8Array[];
  try {
    const ro = await VhdxImage.open(roSrc);
    roData = await readRanges(ro, ranges, bufs.ro);
    // Blocks never written must never read as data.
    const touched = new Set(blocks);
    for (const x of await ro.blockStatus(0, ro.size)) {
      if (x.type !== 'data') continue;
      for (let b = Math.floor(x.offset / ro.blockSize); b * ro.blockSize < x.offset + x.length; b++) {
        if (!touched.has(b)) fail(`block ${b} was never written but is allocated`);
      }
    }
    await ro.close();
  } catch (e) {
    fail(`read-only open failed: ${(e as VhdxError).reason ?? ''} ${(e as Error).message}`);
    return failures;
  }
  if (roSrc.counts.writes + roSrc.counts.flushes + roSrc.counts.truncates !== 0) fail('a read-only open changed the file');
  ranges.forEach(([offset], i) => {
    const m = crashCheck(roData[i]!, offset, durable, since);
    if (m) fail(`read-only: ${m}`);
  });
  // Writable: replays in place; reads the same; closes clean.
  try {
    const rw = await VhdxImage.open(crashed, { readOnly: false });
    const rwData = await readRanges(rw, ranges, bufs.rw);
    ranges.forEach(([offset], i) => {
      if (!bytesEqual(rwData[i]!, roData[i]!)) fail(`range at ${offset} reads differently after in-place replay`);
    });
    await rw.close();
  } catch (e) {
    fail(`writable open failed: ${(e as VhdxError).reason ?? ''} ${(e as Error).message}`);
    return failures;
  }
  for (const f of await checkInvariants(crashed, { clean: true })) fail(f);
  if (reopen) {
    const again = await VhdxImage.open(crashed);
    const againData = await readRanges(again, ranges, bufs.rw);
    ranges.forEach(([offset], i) => {
      if (!bytesEqual(againData[i]!, roData[i]!)) fail(`range at ${offset} reads differently after close and reopen`);
    });
    await again.close();
  }
  if (qemuPath) {
    writeSparseFile(qemuPath, crashed);
    const r = spawnSync('qemu-img', ['check', '-f', 'vhdx', qemuPath], { encoding: 'utf8' });
    if (r.status !== 0) fail(`qemu-img check exited ${r.status}: ${r.stdout}${r.stderr}`);
  }
  return failures;
}

/**
 * Crash `w` at every mutating operation from `from` (1-based) on, and at every `before`-th one
 * before it, and check every post-crash variant. `ranges`: what to read back (default: every
 * touched block, whole).
 */
async function crashEverywhere(
  w: Workload,
  { qemu, ranges, from = 1, before = 0, qemuEvery = 7, replayEvery = 0 }: { qemu: boolean; ranges?: Range[]; from?: number; before?: number; qemuEvery?: number; replayEvery?: number },
) {
  const base = await baseImage(w.layout);
  const bs = w.layout.blockSize;
  // Every block of a fixed disk is allocated: read them all.
  const blocks = w.layout.fixed ? [...Array(Math.ceil(w.layout.virtualSize / bs)).keys()] : touchedBlocks(w.ops, bs);
  ranges ??= blockRanges(blocks, bs, w.layout.virtualSize);

  // Dry run: no crash; the image must end exactly as the model.
  const dry = await runWorkload(base, w.ops, undefined);
  const total = dry.disk.mutations;
  assert.ok(total > 10, `the workload issued only ${total} mutating operations`);
  {
    const img = await VhdxImage.open(dry.disk.clone());
    const got = await readRanges(img, ranges);
    ranges.forEach(([offset], i) => assert.equal(crashCheck(got[i]!, offset, dry.model, []), null, `dry run, range at ${offset}`));
    await img.close();
    assert.deepEqual(await checkInvariants(dry.disk), []);
  }

  const dir = qemu ? scratch('vhdx-power-loss-') : null;
  const failures: string[] = [];
  const bufs = { ro: ranges.map(([, len]) => new Uint8Array(len)), rw: ranges.map(([, len]) => new Uint8Array(len)) };
  let images = 0;
  let qemuChecks = 0;
  const points: number[] = [];
  for (let n = 1; n <= total; n++) if (n >= from || (before > 0 && n % before === 0)) points.push(n);
  for (const n of points) {
    const run = await runWorkload(base, w.ops, n);
    assert.ok(run.disk.isCrashed, `crash point ${n} was not reached`);
    const variants = CRASH_VARIANTS(n);
    for (let v = 0; v < variants.length; v++) {
      const opts = variants[v]!;
      const withQemu = dir !== null && v === 2 && n % qemuEvery === 0;
      const label = `crash at operation ${n}/${total} (${run.disk.trace?.[n - 1]?.kind ?? ''}), ${JSON.stringify(opts)}`;
      const res = await checkCrashImage(run.disk.crashImage(opts), {
        ranges,
        blocks,
        durable: run.durable,
        since: run.since,
        label,
        qemuPath: withQemu ? join(dir, `crash-${n}.vhdx`) : null,
        bufs,
        reopen: v === 2,
        replayCrashes: replayEvery > 0 && v === 2 && n % replayEvery === 0,
      });
      failures.push(...res);
      images++;
      if (withQemu) qemuChecks++;
    }
    if (failures.length > 20) break;
  }
  assert.deepEqual(failures.slice(0, 10), [], `${failures.length} failures over ${images} crash images`);
  return { total, images, qemuChecks };
}

test('power loss at every write and flush: dynamic disk, 512-byte sectors, three BAT sectors', async (t) => {
  const qemu = hasTool('qemu-img');
  if (!qemu) t.diagnostic('qemu-img not installed: skipping the qemu-img check of sampled crash images');
  const { total, images, qemuChecks } = await crashEverywhere(DYNAMIC, { qemu, replayEvery: 8, qemuEvery: 11 });
  assert.ok(images >= total * 3);
  if (qemu) assert.ok(qemuChecks >= 5, `only ${qemuChecks} qemu-img checks`);
  assert.ok(replayCrashImages >= 20, `only ${replayCrashImages} images crashed during replay`);
});

test('power loss at every write and flush of discard-and-rewrite cycles: a reused place never shows discarded data', async (t) => {
  const qemu = hasTool('qemu-img');
  if (!qemu) t.diagnostic('qemu-img not installed: skipping the qemu-img check of sampled crash images');
  const { total, images } = await crashEverywhere(REUSE, { qemu, qemuEvery: 13, replayEvery: 16 });
  t.diagnostic(`${total} crash points, ${images} crash images`);
  // Without a crash the workload reuses what it freed: 15 blocks were written over its course,
  // never more than 7 live at once, and the file ends at its last object with nothing leaked.
  const dry = await runWorkload(await baseImage(REUSE.layout), REUSE.ops, undefined);
  const base = planLayout(REUSE.layout).fileSize;
  assert.ok(dry.disk.size <= base + B(7), `the file grew to ${dry.disk.size - base} bytes of blocks`);
  assert.deepEqual(await checkInvariants(dry.disk, { noLeaks: true }), []);
});

test('power loss at every write and flush: fixed disk, 4096-byte sectors', async () => {
  await crashEverywhere(FIXED, { qemu: false });
});

// 254 BAT sectors changed before one flush (one block written in each: enough for a single entry
// filling the whole 1 MiB log), then a small commit. No entry may overwrite the one before it
// until it is itself durable: if a crash tears it, the previous one must still be there to replay
// (else the log holds nothing valid and the image no longer opens). This failed before entries
// were limited to half the log.
test('power loss during the commit after a log-filling commit', async (t) => {
  const qemu = hasTool('qemu-img');
  if (!qemu) t.diagnostic('qemu-img not installed: skipping the qemu-img check of a sampled crash image');
  const bs = MiB;
  const spread = 512; // blocks per BAT sector (512-byte sectors, 1 MiB blocks)
  const w: Workload = {
    layout: { virtualSize: B(128 * 1024), blockSize: bs, logicalSectorSize: 512 },
    ops: ops(({ w, flush, close }) => [
      ...Array.from({ length: 254 }, (_, k) => w(B(k * spread) + 512, 512)),
      flush,
      w(B(254 * spread), 4 * KiB),
      w(B(254 * spread + 1), 4 * KiB),
      flush,
      close,
    ]),
  };
  // Count the operations up to the first flush: the crash points of interest come after.
  const prefix = { layout: w.layout, ops: w.ops.slice(0, 255) };
  const dry = await runWorkload(await baseImage(w.layout), prefix.ops, undefined);
  const ranges = w.ops.filter((op) => op.kind === 'write').map((op): Range => [op.offset, op.data.length]);
  // Before it (background commits of half a log each, with allocations going on): a sample.
  await crashEverywhere(w, { qemu, ranges, from: dry.disk.mutations - 2, before: 64, qemuEvery: 5 });
});
