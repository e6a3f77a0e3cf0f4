// Power loss in differencing chains (src/driver/writer.ts, commit.ts through src/io/faulty.ts).
//
// 1. A child's writes (partial sectors completed from the parent, sector bitmap blocks allocated
//    on demand, bits set after the data, PARTIALLY_PRESENT blocks turning FULLY_PRESENT, zeros,
//    discards, concurrent writes sharing sectors) lose power at every write and flush, as in
//    power-loss.test.ts. Each post-crash child (several survivor sets, torn writes) must open
//    over its parent read-only and writable, read the same both ways, hold at least everything
//    up to the last completed flush (and nothing but later writes beyond it), and pass the
//    structural checks. The parent is never written.
// 2. commitChild, with child and parent on two sources that lose power together, at a sample of
//    the operations of the commit: after the crash the chain (child through parent) reads exactly
//    what it read before the commit, and running the commit again ends with the parent holding
//    that content and the child empty.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, commitChild, resize, type RandomAccessSource, type VhdxError, type WritableSource } from '../../src/index.js';
import { FaultySource, type CrashImageOptions } from '../../src/testing.js';
import { checkInvariants } from '../helpers/invariants.js';
import { bytesEqual, crashCheck, pattern } from '../helpers/model.js';
import { ops, runWorkload, type Op } from '../helpers/workload.js';
import { compareWith, makeBase, makeChild } from '../helpers/chain.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const B = (n: number): number => n * MiB;
const BUFS = { got: new Uint8Array(MiB), want: new Uint8Array(MiB) };

/** A parent with data, zeros and holes, and the bytes of a fresh child over it. */
interface ChainShape {
  size: number;
  sector: 512 | 4096;
  childBlockSize: number;
}

async function parentAndChild({ size, sector, childBlockSize }: ChainShape) {
  const { src: psrc, model } = await makeBase({
    size,
    sector,
    fill: [
      { kind: 'data', offset: 0, length: B(3) },
      { kind: 'data', offset: B(4) + 5000, length: 20000 },
      { kind: 'zero', offset: B(5), length: MiB },
      { kind: 'data', offset: B(6), length: B(2) },
    ],
  });
  const p = await VhdxImage.open(psrc);
  const mem = new MemorySource();
  await makeChild(p, { blockSize: childBlockSize, src: mem });
  await p.close();
  return { psrc, pmodel: model, childBase: mem.bytes().slice() };
}

/** A workload for a child of `size` bytes whose blocks are `bs` bytes and sectors `lss`. */
const childWorkload = (bs: number, lss: number): Op[] =>
  ops(({ w, zero, discard, flush, close, reopen, parallel }) => [
    w(100, 50), // inside one sector over parent data: bitmap block allocated, block PARTIALLY_PRESENT
    w(lss - 10, 20), // across a sector boundary
    w(B(4) + 4999, 3), // over the parent's data, in another block
    flush,
    w(200, 3 * lss), // into a PARTIALLY_PRESENT block: some bits set already
    w(bs - 700, 1400), // across a block boundary: the next block starts partial
    w(B(2), bs, true), // a whole block (FUA): FULLY_PRESENT, no bitmap
    zero(B(6) + 3, 5000), // zeros over parent data: written as data, sector by sector
    discard(B(5) + 7, 9000), // inside a parent ZERO block
    flush,
    parallel(
      // Abutting writes sharing sectors, at once: each completes its cut sectors from the other's.
      w(B(7) + 10, 300),
      w(B(7) + 310, 1000),
      w(B(7) + 1310, 50),
      w(B(3) + 1, lss),
    ),
    zero(B(6), bs), // a whole block: ZERO, hides the parent
    w(B(6) + 4096 + 1, 100), // a partial write into a ZERO block: a whole new block
    reopen,
    w(0, lss), // completes a sector
    w(B(1), 2 * lss + 1),
    discard(B(4), bs), // a whole block that held bits: UNMAPPED
    w(B(4) + 7, 10), // allocated again: old bits must not show
    // Freed places reused: a fully present block's discard keeps its place (a claim); a block
    // that shows no parent (ZERO) written in part takes that place, zeros around the write.
    zero(B(8), bs), // beyond the parent's data: ZERO, no place
    discard(B(2), bs), // FULLY_PRESENT: UNMAPPED, keeping its place
    flush,
    w(B(8) + 100, 50), // takes block B(2)'s place: its claim released in the same log entry
    zero(B(6), bs), // its place (unowned) is given back zeroed at close
    close,
  ]);

const CRASH_VARIANTS = (n: number): CrashImageOptions[] => [
  { keep: 'none' },
  { keep: 'all' },
  { keep: 'random', seed: n * 7 + 1, tear: true },
  ...(n % 2 === 0 ? [{ keep: 'random' as const, seed: n * 7 + 2, tear: true, tearUnit: 512 }] : []),
];

async function readAll(img: VhdxImage, buf: Uint8Array): Promise<Uint8Array> {
  await img.read(0, buf);
  return buf;
}

async function crashChildEverywhere({ size, sector, childBlockSize }: ChainShape) {
  const { psrc, pmodel, childBase } = await parentAndChild({ size, sector, childBlockSize });
  const parentMutations = psrc.mutations;
  const openParent = () => VhdxImage.open(psrc, { name: 'parent' });
  const runOpts = { open: (disk: FaultySource) => VhdxImage.open(disk, { readOnly: false, parent: openParent }), model: pmodel };
  const list = childWorkload(childBlockSize, sector);

  const dry = await runWorkload(childBase, list, undefined, runOpts);
  const total = dry.disk.mutations;
  assert.ok(total > 30, `only ${total} mutating operations`);
  {
    const img = await VhdxImage.open(dry.disk.clone(), { parent: openParent });
    assert.equal(await compareWith(img, dry.model, 0, size, BUFS), null, 'dry run');
    const bitmapAllocated = (await img.allocationStats()).bitmapBlocks;
    assert.ok(bitmapAllocated >= 1, 'the workload allocates a sector bitmap block');
    await img.close();
    assert.deepEqual(await checkInvariants(dry.disk, { noLeaks: true }), [], 'closed without a crash: nothing leaked');
  }

  const ro = new Uint8Array(size);
  const rw = new Uint8Array(size);
  const failures: string[] = [];
  let images = 0;
  for (let n = 1; n <= total && failures.length < 10; n++) {
    const run = await runWorkload(childBase, list, n, runOpts);
    assert.ok(run.disk.isCrashed, `crash point ${n} was not reached`);
    for (const opts of CRASH_VARIANTS(n)) {
      images++;
      const label = `${sector}/${childBlockSize / MiB} MiB: crash at operation ${n}/${total} (${run.disk.trace?.[n - 1]?.kind}), ${JSON.stringify(opts)}`;
      const crashed = run.disk.crashImage(opts);
      const roSrc = crashed.clone();
      try {
        const a = await VhdxImage.open(roSrc, { parent: openParent });
        await readAll(a, ro);
        await a.close();
        if (roSrc.counts.writes + roSrc.counts.flushes + roSrc.counts.truncates !== 0) failures.push(`${label}: a read-only open changed the file`);
        const m = crashCheck(ro, 0, run.durable, run.since);
        if (m) failures.push(`${label}: ${m}`);
        const b = await VhdxImage.open(crashed, { readOnly: false, parent: openParent });
        await readAll(b, rw);
        await b.close();
        if (!bytesEqual(ro, rw)) failures.push(`${label}: the writable open (replayed in place) reads differently`);
        for (const f of await checkInvariants(crashed)) failures.push(`${label}: ${f}`);
        // Written once more after the replay: still sound, still the same below the write.
        const c = await VhdxImage.open(crashed, { readOnly: false, parent: openParent });
        await c.write(B(1) + 3, pattern(999, 700));
        await c.close();
        for (const f of await checkInvariants(crashed)) failures.push(`${label}, then written: ${f}`);
      } catch (e) {
        failures.push(`${label}: ${(e as VhdxError).reason ?? ''} ${(e as Error).stack}`);
      }
    }
  }
  assert.equal(psrc.mutations, parentMutations, 'the parent was never written');
  assert.deepEqual(failures, [], `${failures.length} failures over ${images} crash images`);
  return { total, images };
}

test('power loss at every write and flush of a child: 512-byte sectors, 1 MiB blocks', async (t) => {
  const { total, images } = await crashChildEverywhere({ size: B(10), sector: 512, childBlockSize: MiB });
  t.diagnostic(`${total} crash points, ${images} crash images`);
});

test('power loss at every write and flush of a child: 4096-byte sectors, 2 MiB blocks', async (t) => {
  const { total, images } = await crashChildEverywhere({ size: B(10), sector: 4096, childBlockSize: 2 * MiB });
  t.diagnostic(`${total} crash points, ${images} crash images`);
});

// ---------------------------------------------------------------------------------------------

/**
 * Sources of one machine: two FaultySources that lose power together at the `crashAt`-th
 * mutating operation counted over both. The operation in flight lands or not as the crash image
 * decides (a write or truncate joins the pending set; a flush does not happen).
 */
function machine(files: FaultySource[], crashAt: number | undefined) {
  let n = 0;
  const wrap = (src: FaultySource): WritableSource => {
    const mutate = async (fn: () => Promise<void>, isFlush: boolean): Promise<void> => {
      n++;
      if (n === crashAt) {
        if (!isFlush) await fn().catch(() => undefined);
        for (const f of files) f.crash();
        throw Object.assign(new Error('simulated power loss of the machine'), { code: 'EIO' });
      }
      return fn();
    };
    return {
      get size() {
        return src.size;
      },
      readOnly: false,
      read: (o: number, b: Uint8Array) => src.read(o, b),
      write: (o: number, d: Uint8Array) => mutate(() => src.write(o, d), false),
      truncate: (s: number) => mutate(() => src.truncate(s), false),
      flush: () => mutate(() => src.flush(), true),
      close: () => src.close(),
    };
  };
  return { sources: files.map(wrap), get mutations() { return n; } };
}

/**
 * A chain with content, as durable bytes: [child, parent]; and its content. `grow`: the child is
 * first grown by that many bytes past its parent (resize) and written past the parent's end.
 */
async function committableChain({ size, sector, grow = 0 }: { size: number; sector: 512 | 4096; grow?: number }) {
  const { psrc, pmodel, childBase } = await parentAndChild({ size, sector, childBlockSize: MiB });
  const csrc = new FaultySource(childBase, { writeCache: false });
  const open = () => VhdxImage.open(csrc, { readOnly: false, parent: () => VhdxImage.open(psrc) });
  let c = await open();
  const model = pmodel.clone();
  if (grow > 0) {
    c = (await resize(c, size + grow)).image;
    const past = pattern(77, 5000);
    await c.write(size + 4096 + 100, past);
    model.write(size + 4096 + 100, past);
  }
  const list = childWorkload(MiB, sector).filter((op) => op.kind !== 'reopen' && op.kind !== 'close');
  const apply = async (op: Op): Promise<unknown> => {
    if (op.kind === 'parallel') return Promise.all(op.ops.map(apply));
    if (op.kind === 'write') {
      await c.write(op.offset, op.data);
      model.write(op.offset, op.data);
    } else if (op.kind === 'zero' || op.kind === 'discard') {
      await (op.kind === 'zero' ? c.writeZeroes(op.offset, op.length) : c.discard(op.offset, op.length));
      model.zero(op.offset, op.length);
    }
  };
  for (const op of list) await apply(op);
  await c.close();
  return { child: csrc.bytes(), parent: psrc.bytes(), model };
}

/** Open child → parent on two sources, both writable (for commit) or read-only. */
function openPair(child: RandomAccessSource, parent: RandomAccessSource, writable: boolean): Promise<VhdxImage> {
  return VhdxImage.open(child, { readOnly: !writable, name: 'child', parent: () => VhdxImage.open(parent, { readOnly: !writable, name: 'parent' }) });
}

/**
 * Commit at every crash point (or a spread): the chain reads as before, a second commit completes
 * the merge. `grow`: the child was grown past its parent by that many bytes (commit grows the
 * parent first).
 */
async function commitSweep(t: TestContext, { grow = 0 } = {}) {
  const { child, parent, model } = await committableChain({ size: B(10), sector: 512, grow });
  const size = B(10) + grow;

  const runCommit = async (crashAt: number | undefined) => {
    const files: [FaultySource, FaultySource] = [new FaultySource(child, { trace: true }), new FaultySource(parent, { trace: true })];
    const m = machine(files, crashAt);
    try {
      const img = await openPair(m.sources[0]!, m.sources[1]!, true);
      let cur = img;
      try {
        cur = (await commitChild(img)).image;
      } finally {
        for (const i of new Set([cur, img])) {
          await i.close().catch((e) => {
            if (crashAt === undefined) throw e;
          });
        }
      }
    } catch (e) {
      if (crashAt === undefined || !files[0].isCrashed) throw e;
    }
    return { files, mutations: m.mutations };
  };

  const dry = await runCommit(undefined);
  const total = dry.mutations;
  {
    const p = await VhdxImage.open(dry.files[1]);
    assert.equal(await compareWith(p, model, 0, size, BUFS), null, 'dry run: the parent holds the chain');
    await p.close();
  }
  // Every point near the parent's identity change and the child's emptying is interesting; take
  // all of them when there are few, else a spread.
  const step = Math.max(1, Math.ceil(total / 90));
  const points: number[] = [];
  for (let k = 1; k <= total; k += step) points.push(k);
  if (points[points.length - 1] !== total) points.push(total);
  t.diagnostic(`${total} operations in the commit; crashing at ${points.length} of them`);

  const failures: string[] = [];
  for (const k of points) {
    const run = await runCommit(k);
    assert.ok(run.files.every((f) => f.isCrashed), `crash point ${k} was not reached`);
    const variants: CrashImageOptions[] = [{ keep: 'none' }, { keep: 'all' }, { keep: 'random', seed: k * 3 + 1, tear: true }];
    for (const [v, opts] of variants.entries()) {
      const label = `crash at operation ${k}/${total}, ${JSON.stringify(opts)}`;
      try {
        const c = run.files[0].crashImage(opts);
        const p = run.files[1].crashImage({ ...opts, ...(opts.seed ? { seed: opts.seed + 1 } : {}) });
        // Read-only, the logs replayed in memory: exactly the chain's content.
        const ro = await openPair(c.clone(), p.clone(), false);
        const m = await compareWith(ro, model, 0, size, BUFS);
        await ro.close();
        if (m) {
          failures.push(`${label}: the chain after the crash: ${m}`);
          continue;
        }
        // Only one variant of each point is committed again (the rest of the work is the same).
        if (v !== 2 && k % 3 !== 0) continue;
        const again = await openPair(c, p, true);
        const m2 = await compareWith(again, model, 0, size, BUFS);
        if (m2) failures.push(`${label}: the chain after in-place replay: ${m2}`);
        await (await commitChild(again)).image.close();
        await again.close();
        const pp = await VhdxImage.open(p);
        const m3 = await compareWith(pp, model, 0, size, BUFS);
        const dwg = pp.header.dataWriteGuid;
        await pp.close();
        if (m3) failures.push(`${label}: the parent after the second commit: ${m3}`);
        const cc = await openPair(c, p, false);
        const locator = cc.layout.parentLocator;
        if (cc.linkedBy !== 'parent_linkage' || !locator || locator.entries.some((e) => e.key === 'parent_linkage2')) failures.push(`${label}: the child is not relinked`);
        if (locator?.entries.find((e) => e.key === 'parent_linkage')?.value !== `{${dwg}}`) failures.push(`${label}: parent_linkage is not the parent's`);
        if ((await cc.allocationStats()).allocatedBlocks !== 0) failures.push(`${label}: the child is not empty`);
        const m4 = await compareWith(cc, model, 0, size, BUFS);
        await cc.close();
        if (m4) failures.push(`${label}: the emptied child: ${m4}`);
        for (const [name, s] of <[string, FaultySource][]>[
          ['child', c],
          ['parent', p],
        ]) {
          for (const f of await checkInvariants(s)) failures.push(`${label}: ${name}: ${f}`);
        }
      } catch (e) {
        failures.push(`${label}: ${(e as VhdxError).reason ?? ''} ${(e as Error).stack}`);
      }
    }
    if (failures.length > 10) break;
  }
  assert.deepEqual(failures, []);
}

test('power loss during commit: the chain reads as before, and a second commit completes the merge', (t) => commitSweep(t));

test('power loss during the commit of a child grown past its parent (the parent grows first): the chain reads as before, a second commit completes it', (t) => commitSweep(t, { grow: B(3) + 512 }));
