// Power loss during dynamic and differencing VHD writes (src/vhd/writer.ts through
// src/io/faulty.ts). A dry run counts the mutating operations of a workload; then for each one the
// workload runs again on a FaultySource that dies there, and the post-crash disk is built several
// ways (nothing unflushed lands, everything lands, random subsets with a write torn at 4 KiB or
// 512 bytes). Each post-crash image must open read-only (from the footer copy at offset 0 if the
// end one is gone), and after `repairVhd` (mode 'all') it must have no corruption, no leak repair
// can still fix, open writable, and read the same: every byte what the last completed flush left,
// or what a write issued after it put there. Blocks never written must never read as data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VhdImage, checkVhd, isVhdxError, repairVhd, type VhdParentResolver } from '../../src/index.js';
import type { FaultySource, CrashImageOptions } from '../../src/io/faulty.js';
import type { RandomAccessSource } from '../../src/io/source.js';
import { crashCheck, pattern, bytesEqual, SparseModel, type CrashOp } from '../helpers/model.js';
import { ops, readRanges, runWorkload, type Op } from '../helpers/workload.js';
import { KiB, copyOf, newVhd } from '../helpers/vhd.js';

const BS = 512 * KiB;

// Allocations one by one and together, in-place writes, writes into the clear sectors of an
// allocated block, writes across blocks, FUA, zeroes over data and over holes, a reopen (a new session appends after the last one's footer).
const WORKLOAD = ops(({ w, zero, discard, flush, close, parallel }) => [
  w(0, 4 * KiB),
  w(BS + 1000, BS), // two blocks at once, unaligned
  flush,
  w(100, 200), // in place
  w(200 * KiB + 7, 5000), // into sectors of an allocated block whose bits are clear
  w(5 * BS + 3, 700, true), // FUA allocation
  zero(BS, 8 * KiB), // zeros written into data
  discard(9 * BS, BS), // a hole stays a hole
  parallel(w(3 * BS, 4 * KiB), w(3 * BS + 64 * KiB, 4 * KiB), w(7 * BS + 17, 9000), w(10 * BS - 10, 20)),
  w(12 * BS, 4 * KiB),
  { kind: 'reopen' },
  w(13 * BS + 512, 1536),
  w(3 * BS + 100, 50),
  zero(3 * BS + 300 * KiB + 1, 8 * KiB), // zeros into clear sectors of an allocated block
  flush,
  w(200 * KiB + 4000, 3000), // half set, half clear
  parallel(w(14 * BS, BS), w(15 * BS, 100)),
  w(2 * BS - 5, 10),
  close,
]);

function touchedRanges(list: readonly Op[], size: number): [number, number][] {
  const blocks = new Set<number>();
  const visit = (op: Op): void => {
    if (op.kind === 'parallel') return op.ops.forEach(visit);
    if (op.kind !== 'write' && op.kind !== 'zero' && op.kind !== 'discard') return;
    const len = op.kind === 'write' ? op.data.length : op.length;
    for (let b = Math.floor(op.offset / BS); b * BS < op.offset + len; b++) blocks.add(b);
  };
  list.forEach(visit);
  return [...blocks].sort((a, b) => a - b).map((b): [number, number] => [b * BS, Math.min(BS, size - b * BS)]);
}

const VARIANTS = (n: number): CrashImageOptions[] => [
  { keep: 'none' },
  { keep: 'all' },
  { keep: 'random', seed: n * 7 + 1, tear: true },
  ...(n % 2 === 0 ? [{ keep: 'random' as const, seed: n * 7 + 2, tear: true, tearUnit: 512 }] : []),
];

/** How a test opens its images: `open` (writable or not), and for a differencing disk its parent. */
interface Subject {
  open(disk: RandomAccessSource, writable: boolean): Promise<VhdImage>;
  parent?: VhdParentResolver;
}

/** An error's reason and message, for a failure's text. */
function describe(e: unknown): string {
  return isVhdxError(e) ? `${e.reason} ${e.message}` : ` ${e instanceof Error ? e.message : String(e)}`;
}

async function checkCrash(
  crashed: FaultySource,
  { ranges, touched, durable, since, label, subject }: {
    ranges: readonly [number, number][];
    touched: ReadonlySet<number>;
    durable: SparseModel;
    since: readonly CrashOp[];
    label: string;
    subject: Subject;
  },
): Promise<string[]> {
  const { open, parent } = subject;
  const failures: string[] = [];
  const fail = (m: string) => failures.push(`${label}: ${m}`);
  let before: Uint8Array[];
  try {
    const ro = await open(copyOf(crashed), false);
    before = (await readRanges(ro, ranges)).map((b) => b.slice());
    for (const x of await ro.blockStatus(0, ro.size)) {
      if (x.type !== 'data' || (x.depth ?? 0) > 0) continue;
      for (let b = Math.floor(x.offset / BS); b * BS < x.offset + x.length; b++) if (!touched.has(b)) fail(`block ${b} was never written but reads as data`);
    }
    await ro.close();
  } catch (e) {
    fail(`read-only open failed: ${describe(e)}`);
    return failures;
  }
  ranges.forEach(([offset], i) => {
    const m = crashCheck(before[i]!, offset, durable, since);
    if (m) fail(`read-only: ${m}`);
  });
  const repaired = copyOf(crashed);
  const r = await repairVhd(repaired, { mode: 'all', ...(parent ? { parent } : {}) });
  if (r.refusal) return [...failures, `${label}: repair refused: ${r.refusal} ${JSON.stringify(r.refused)}`];
  const bad = r.after.findings.filter((f) => f.severity === 'corruption' || (f.severity === 'leak' && f.repairableBy !== null));
  if (bad.length > 0) fail(`after repair: ${JSON.stringify(bad)}`);
  try {
    const rw = await open(repaired, true);
    const after = await readRanges(rw, ranges);
    ranges.forEach(([offset], i) => {
      if (!bytesEqual(after[i]!, before[i]!)) fail(`range at ${offset} reads differently after the repair`);
    });
    // A session after the repair writes and closes cleanly.
    await rw.write(11 * BS + 4096, new Uint8Array(4096).fill(0xee));
    await rw.close();
    const c = await checkVhd(repaired, parent ? { parent } : {});
    const worse = c.findings.filter((f) => f.severity === 'corruption' || (f.severity === 'leak' && f.repairableBy !== null));
    if (worse.length > 0) fail(`after a session on the repaired image: ${JSON.stringify(worse)}`);
  } catch (e) {
    fail(`writable open after repair failed: ${describe(e)}`);
  }
  return failures;
}

async function crashEverywhere(
  base: Uint8Array,
  list: readonly Op[],
  size: number,
  { subject, model }: { subject: Subject; model?: SparseModel },
): Promise<{ total: number; images: number }> {
  const { open, parent } = subject;
  const ranges = touchedRanges(list, size);
  const touched = new Set(ranges.map(([o]) => o / BS));
  const runOpts = { open: (disk: FaultySource) => open(disk, true), ...(model ? { model } : {}) };
  const dry = await runWorkload(base, list, undefined, runOpts);
  const total = dry.disk.mutations;
  assert.ok(total > 15, `only ${total} mutating operations`);
  {
    const img = await open(dry.disk.clone(), false);
    const got = await readRanges(img, ranges);
    ranges.forEach(([offset], i) => assert.equal(crashCheck(got[i]!, offset, dry.model, []), null, `dry run at ${offset}`));
    const c = await checkVhd(dry.disk.clone(), parent ? { parent } : {});
    assert.deepEqual(c.findings.filter((f) => f.severity !== 'warning'), [], 'a workload without a crash leaves a clean image');
    assert.equal(c.leaks, 0);
  }
  const failures: string[] = [];
  let images = 0;
  for (let n = 1; n <= total; n++) {
    const run = await runWorkload(base, list, n, runOpts);
    assert.ok(run.disk.isCrashed, `crash point ${n} not reached`);
    for (const v of VARIANTS(n)) {
      const label = `crash at operation ${n}/${total} (${run.disk.trace?.[n - 1]?.kind}), ${JSON.stringify(v)}`;
      failures.push(...(await checkCrash(run.disk.crashImage(v), { ranges, touched, durable: run.durable, since: run.since, label, subject })));
      images++;
    }
    if (failures.length > 20) break;
  }
  assert.deepEqual(failures.slice(0, 8), [], `${failures.length} failures over ${images} crash images`);
  return { total, images };
}

test('power loss at every write and flush of a dynamic VHD: after repairVhd every flushed write reads back', async (t) => {
  const size = 16 * BS;
  const { src } = await newVhd({ size, blockSize: BS });
  const open: Subject['open'] = (disk, writable) => VhdImage.open(disk, { readOnly: !writable });
  const { total, images } = await crashEverywhere(src.bytes().slice(), WORKLOAD, size, { subject: { open } });
  t.diagnostic(`${total} crash points, ${images} crash images`);
});

test('power loss at every write and flush of a differencing VHD: sectors completed from the parent are never lost', async (t) => {
  const size = 16 * BS;
  const { src: psrc } = await newVhd({ size, blockSize: BS });
  const model = new SparseModel();
  const p = await VhdImage.open(psrc, { readOnly: false });
  const writes: [number, number, number][] = [[0, 3 * BS, 101], [5 * BS, 2 * BS + 5000, 102], [12 * BS, BS, 103], [15 * BS - 4096, 8192, 104]];
  for (const [off, len, seed] of writes) {
    const data = pattern(seed, len);
    await p.write(off, data);
    model.write(off, data);
  }
  await p.close();
  const parentImg = await VhdImage.open(copyOf(psrc));
  const { src: csrc } = await newVhd({ parent: parentImg, blockSize: BS, parentPaths: [{ platform: 'W2ru', path: '.\\p.vhd' }] });
  const parent: VhdParentResolver = async () => VhdImage.open(copyOf(psrc));
  const open: Subject['open'] = (disk, writable) => VhdImage.open(disk, { readOnly: !writable, parent });
  const { total, images } = await crashEverywhere(csrc.bytes().slice(), WORKLOAD, size, { subject: { open, parent }, model });
  t.diagnostic(`${total} crash points, ${images} crash images`);
});
