// Differencing disks at the driver level (src/driver/image.ts, writer.ts, bitmap-cache.ts,
// commit.ts, src/node-files.ts):
// 1. A property test: a small dynamic parent with random content and a child over it (512- and
//    4096-byte sectors, 1 and 2 MiB child blocks) take random writes at any offset and length
//    (sub-sector, sector-straddling, whole and multi-block), write-zeroes, discard, flushes,
//    reads, reopens and concurrent writes (some sharing sectors). Every read and the final disk
//    equal a model (the parent overlaid by the child's changes); the parent is never written;
//    block status tiles the disk, its depth-0 extents are exactly the sectors the child changed,
//    and what it gives to the parent reads as the parent does; the child passes the structural
//    checks (test/helpers/invariants.ts, which runs checkImage too).
// 2. Chains three deep: reads, and block status at depths 0, 1 and 2.
// 3. Broken chains fail with typed errors: PARENT_MISMATCH, PARENT_NOT_FOUND, PARENT_LOOP,
//    CHAIN_TOO_DEEP, NO_PARENT; parent_linkage2 links too; the path policies.
// 4. commitChild / commitFile / rebaseFile: the parent ends holding the chain's content, the child
//    is emptied (or removed) and still reads the same; an interrupted commit is finished by a
//    second one; a rebase follows a moved parent and refuses another disk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, renameSync, writeFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { MAX_CHAIN_DEPTH, VhdxError, VhdxImage, checkImage, commitChild, createImage, openFile, createFile, commitFile, rebaseFile } from '../../src/node.js';
import type { CommitOptions, Extent, ParentResolver, WritableSource } from '../../src/node.js';
import { FaultySource } from '../../src/testing.js';
import { checkInvariants } from '../helpers/invariants.js';
import { SparseModel, bytesEqual } from '../helpers/model.js';
import { writeSparseFile } from '../helpers/workload.js';
import { hasTool, scratch } from '../helpers/env.js';
import {
  type Fill,
  SectorSet,
  compareSparse,
  compareWith,
  firstDifferentSector,
  locatorOf,
  makeBase,
  makeChild,
  openChain,
  payload,
  sectorsAtDepth,
  tiles,
} from '../helpers/chain.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const NIL = '00000000-0000-0000-0000-000000000000';
const BUFS = { got: new Uint8Array(MiB), want: new Uint8Array(MiB) };

async function readAt(img: VhdxImage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Assert that `promise` rejects with a VhdxError of `reason` whose message matches `re`. */
async function rejectsWith(promise: Promise<unknown>, reason: string, re?: RegExp): Promise<void> {
  await assert.rejects(promise, (e: VhdxError) => {
    assert.ok(e instanceof VhdxError, `VhdxError expected, got ${e?.stack ?? e}`);
    assert.equal(e.reason, reason, `reason ${e.reason}: ${e.message}`);
    if (re) assert.match(e.message, re);
    return true;
  });
}

/**
 * Everything a chain's block status must satisfy, given a model of the disk and the sectors each
 * image of the chain changed (`own[d]`: the sectors image d holds itself, as a SectorSet; the
 * last image of the chain is a dynamic disk, whose extents at its depth may be anything).
 * `images[d]`: the image at depth d, opened alone with its own chain.
 */
async function checkBlockStatus(img: VhdxImage, model: SparseModel, own: SectorSet[], images: VhdxImage[], label = ''): Promise<Extent[]> {
  const size = img.size;
  const lss = img.logicalSectorSize;
  const extents = await img.blockStatus(0, size);
  const t = tiles(extents, 0, size);
  if (t) assert.fail(`${label}block status does not tile the disk: ${t}`);
  for (const x of extents) {
    assert.ok(x.depth !== undefined && x.depth >= 0 && x.depth < images.length, `${label}extent at ${x.offset} has depth ${x.depth}`);
    if (x.type !== 'data') {
      const want = new Uint8Array(x.length);
      model.read(x.offset, want);
      assert.ok(isZero(want), `${label}${x.type} extent at ${x.offset}+${x.length} (depth ${x.depth}) is not zero in the model`);
    }
    if (x.depth > 0) {
      // The range is the deeper image's: it reads there as through the chain.
      const a = await readAt(img, x.offset, x.length);
      const b = await readAt(images[x.depth]!, x.offset, x.length);
      assert.ok(bytesEqual(a, b), `${label}extent at ${x.offset}+${x.length} (depth ${x.depth}) reads differently in that image`);
      for (const y of await images[x.depth]!.blockStatus(x.offset, x.length)) {
        assert.equal(y.type, x.type, `${label}extent at ${x.offset} (depth ${x.depth}) is ${x.type}, the image at that depth says ${y.type} at ${y.offset}`);
      }
    }
  }
  // The sectors at depth d are exactly those image d holds and no shallower image does.
  for (let d = 0; d < own.length; d++) {
    const want = new SectorSet(size, lss);
    for (let s = 0; s < want.bits.length; s++) {
      if (own[d]!.bits[s] && !own.slice(0, d).some((o) => o.bits[s])) want.bits[s] = 1;
    }
    const got = sectorsAtDepth(extents, size, lss, d);
    const k = firstDifferentSector(got, want);
    if (k >= 0) assert.fail(`${label}sector ${k} (byte ${k * lss}) is ${got.bits[k] ? '' : 'not '}at depth ${d} in block status, but image ${d} ${want.bits[k] ? 'holds' : 'does not hold'} it`);
  }
  return extents;
}

/** Extents of a sub-range must agree with those of the whole disk, position by position. */
function agreeWithWhole(sub: readonly Extent[], whole: readonly Extent[], offset: number, length: number, label: string): void {
  const last = whole[whole.length - 1]!;
  const t = tiles(sub, offset, length, last.offset + last.length);
  if (t) assert.fail(`${label}: block status of ${offset}+${length} does not tile it: ${t}`);
  let k = 0;
  for (const x of sub) {
    const end = x.offset + x.length;
    while (whole[k]!.offset + whole[k]!.length <= x.offset) k++;
    for (let j = k; j < whole.length && whole[j]!.offset < end; j++) {
      const w = whole[j]!;
      assert.ok(w.type === x.type && w.depth === x.depth, `${label}: at ${Math.max(x.offset, w.offset)} the sub-range says ${x.type}@${x.depth}, the whole disk ${w.type}@${w.depth}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Property test

const configArb = fc.record({
  sizeMiB: fc.integer({ min: 8, max: 24 }),
  tailSectors: fc.integer({ min: 0, max: 3 }),
  sector: fc.constantFrom(512, 4096),
  childBlockMiB: fc.constantFrom(1, 2),
  parentFill: fc.array(
    fc.record({
      block: fc.integer({ min: 0, max: 23 }),
      kind: fc.constantFrom('data', 'data', 'partial', 'zero'),
      within: fc.integer({ min: 0, max: MiB - 1 }),
      len: fc.integer({ min: 1, max: 300 * KiB }),
    }),
    { maxLength: 10 },
  ),
});

const rangeArb = fc.record({
  block: fc.integer({ min: 0, max: 24 }),
  within: fc.oneof(
    fc.constant(0),
    fc.integer({ min: 0, max: 2047 }).map((k) => k * 512),
    fc.integer({ min: 0, max: MiB - 1 }),
    fc.integer({ min: 1, max: 600 }).map((k) => MiB - k), // just before a block boundary
  ),
  len: fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 9000 }) },
    { weight: 3, arbitrary: fc.integer({ min: 1, max: 64 }).map((k) => k * 512) },
    { weight: 1, arbitrary: fc.constantFrom(MiB, 2 * MiB) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 * MiB }) },
  ),
});

const opArb = fc.oneof(
  { weight: 7, arbitrary: fc.record({ kind: fc.constant('write'), r: rangeArb, fua: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('zero'), r: rangeArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('fastZero'), block: fc.integer({ min: 0, max: 12 }), blocks: fc.integer({ min: 1, max: 2 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('discard'), r: rangeArb }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('read'), r: rangeArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('flush') }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reopen') }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('concurrent'), writes: fc.array(rangeArb, { minLength: 2, maxLength: 5 }) }) },
  // One range cut into abutting pieces written at once: neighbours share the sectors at the cuts.
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('split'), r: rangeArb, cuts: fc.array(fc.integer({ min: 1, max: 20000 }), { minLength: 1, maxLength: 4 }) }) },
);

function place(r: { block: number; within: number; len: number }, size: number): { offset: number; length: number } | null {
  let offset = r.block * MiB + r.within;
  if (offset >= size) offset %= size;
  const length = Math.min(r.len, size - offset);
  return length > 0 ? { offset, length } : null;
}

test('differencing property: random child workloads over a random parent match a model; the parent never changes', async () => {
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(configArb, fc.array(opArb, { minLength: 1, maxLength: 24 }), async (cfg, ops) => {
      runs++;
      const size = cfg.sizeMiB * MiB - cfg.tailSectors * cfg.sector;
      const cbs = cfg.childBlockMiB * MiB;
      const fill: Fill[] = [];
      for (const f of cfg.parentFill) {
        const blockStart = f.block * MiB;
        if (blockStart >= size) continue;
        const blockLen = Math.min(MiB, size - blockStart);
        if (f.kind === 'data') fill.push({ kind: 'data', offset: blockStart, length: blockLen });
        else if (f.kind === 'zero') fill.push({ kind: 'zero', offset: blockStart, length: blockLen });
        else {
          const offset = blockStart + Math.min(f.within, blockLen - 1);
          fill.push({ kind: 'data', offset, length: Math.min(f.len, size - offset) });
        }
      }
      const { src: psrc, model: pmodel } = await makeBase({ size, sector: cfg.sector, fill });
      const parentImage = await VhdxImage.open(psrc);
      const csrc = await makeChild(parentImage, { blockSize: cbs });
      await parentImage.close();
      const parentMutations = psrc.mutations;

      const model = pmodel.clone();
      const own = new SectorSet(size, cfg.sector);
      const open = () => openChain([csrc, psrc]);
      let img = await open();
      assert.equal(img.linkedBy, 'parent_linkage');
      assert.equal(img.chain.length, 2);
      const subRanges: { offset: number; length: number }[] = [];
      let n = 0;
      try {
        for (const op of ops) {
          n++;
          // Operations on a range are skipped when it clamps to nothing: below, `at!` is that range.
          const at = 'r' in op ? place(op.r, size) : null;
          if ('r' in op && !at) continue;
          switch (op.kind) {
            case 'write': {
              const data = payload(n, at!.length);
              await img.write(at!.offset, data, { fua: op.fua });
              model.write(at!.offset, data);
              own.addRange(at!.offset, at!.length);
              break;
            }
            case 'zero':
            case 'discard':
              if (op.kind === 'zero') await img.writeZeroes(at!.offset, at!.length);
              else await img.discard(at!.offset, at!.length);
              model.zero(at!.offset, at!.length);
              own.addRange(at!.offset, at!.length);
              break;
            case 'fastZero': {
              // Whole child blocks: no data to write, so it never refuses.
              const offset = Math.min(op.block, Math.ceil(size / cbs) - 1) * cbs;
              const length = Math.min(op.blocks * cbs, size - offset);
              await img.writeZeroes(offset, length, { fast: true });
              model.zero(offset, length);
              own.addRange(offset, length);
              break;
            }
            case 'read': {
              const m = await compareWith(img, model, at!.offset, at!.length, BUFS);
              if (m) assert.fail(`read #${n} (${at!.offset}+${at!.length}): ${m}`);
              subRanges.push(at!);
              break;
            }
            case 'flush':
              await img.flush();
              break;
            case 'reopen': {
              await img.close();
              const alone = await VhdxImage.open(csrc);
              assert.equal(alone.header.logGuid, NIL, 'LogGuid clear after close');
              assert.equal(alone.parent, null);
              await alone.close();
              img = await open();
              break;
            }
            case 'concurrent':
            case 'split': {
              const ranges: { offset: number; length: number }[] = [];
              if (op.kind === 'concurrent') {
                for (const r of op.writes) {
                  const p = place(r, size);
                  if (p && ranges.every((q) => p.offset + p.length <= q.offset || q.offset + q.length <= p.offset)) ranges.push(p);
                }
              } else {
                const cuts = [...new Set(op.cuts.filter((c) => c < at!.length))].sort((a, b) => a - b);
                let from = 0;
                for (const c of [...cuts, at!.length]) {
                  ranges.push({ offset: at!.offset + from, length: c - from });
                  from = c;
                }
              }
              const datas = ranges.map((p, k) => payload(n * 31 + k, p.length));
              await Promise.all(ranges.map((p, k) => img.write(p.offset, datas[k]!)));
              ranges.forEach((p, k) => {
                model.write(p.offset, datas[k]!);
                own.addRange(p.offset, p.length);
              });
              break;
            }
          }
        }
        await img.close();
      } finally {
        await img.close().catch(() => undefined);
      }
      assert.equal(psrc.mutations, parentMutations, 'the parent was written to');

      const ro = await openChain([csrc, psrc], { writable: [] });
      const parentAlone = await VhdxImage.open(psrc);
      try {
        assert.equal(ro.header.logGuid, NIL);
        const m = await compareWith(ro, model, 0, size, BUFS);
        if (m) assert.fail(`whole disk after close: ${m}`);
        const m2 = await compareWith(parentAlone, pmodel, 0, size, BUFS);
        if (m2) assert.fail(`the parent changed: ${m2}`);
        const whole = await checkBlockStatus(ro, model, [own], [ro, parentAlone]);
        for (const r of subRanges.slice(0, 4)) agreeWithWhole(await ro.blockStatus(r.offset, r.length), whole, r.offset, r.length, 'block status');
      } finally {
        await ro.close();
        await parentAlone.close();
      }
      assert.deepEqual(await checkInvariants(csrc), []);
      assert.equal(psrc.mutations, parentMutations, 'the parent was written to');
    }),
    { numRuns: 100, seed: 4242, includeErrorInReport: true },
  );
  assert.ok(runs >= 100);
});

// ---------------------------------------------------------------------------------------------
// 2. Chains three deep

test('a chain three deep reads through every level; block status gives depths 0, 1 and 2', async () => {
  for (const sector of [512, 4096] as const) {
    const size = 12 * MiB;
    const { src: gsrc, model } = await makeBase({
      size,
      sector,
      fill: [
        { kind: 'data', offset: 0, length: 3 * MiB },
        { kind: 'data', offset: 5 * MiB + 1000, length: 70000 },
        { kind: 'zero', offset: 7 * MiB, length: MiB },
        { kind: 'data', offset: 9 * MiB, length: 2 * MiB },
      ],
    });
    const g = await VhdxImage.open(gsrc);
    const psrc = await makeChild(g, { blockSize: MiB });
    await g.close();

    // The middle image: partial sectors, whole blocks, zeros over grandparent data.
    const ownParent = new SectorSet(size, sector);
    let parent = await openChain([psrc, gsrc]);
    const pw: [number, number][] = [
      [100, 50],
      [MiB - 700, 1400],
      [4 * MiB, MiB],
      [9 * MiB + 4096 + 3, 8192],
      [10 * MiB + 5, 1],
    ];
    let k = 0;
    for (const [off, len] of pw) {
      const d = payload(++k, len);
      await parent.write(off, d);
      model.write(off, d);
      ownParent.addRange(off, len);
    }
    await parent.writeZeroes(2 * MiB + 333, 5000);
    model.zero(2 * MiB + 333, 5000);
    ownParent.addRange(2 * MiB + 333, 5000);
    await parent.close();
    const parentModel = model.clone();

    parent = await openChain([psrc, gsrc], { writable: [] });
    const csrc = await makeChild(parent, { blockSize: 2 * MiB });
    await parent.close();
    const ownChild = new SectorSet(size, sector);
    let child = await openChain([csrc, psrc, gsrc]);
    assert.equal(child.chain.length, 3);
    assert.deepEqual(
      child.chain.map((i) => i.depth),
      [0, 1, 2],
    );
    const cw: [number, number][] = [
      [50, 100],
      [MiB - 10, 20],
      [4 * MiB + 512, 512],
      [6 * MiB, 2 * MiB],
      [9 * MiB + 4096, 3],
    ];
    for (const [off, len] of cw) {
      const d = payload(++k, len);
      await child.write(off, d);
      model.write(off, d);
      ownChild.addRange(off, len);
    }
    await child.discard(11 * MiB + 17, 3000);
    model.zero(11 * MiB + 17, 3000);
    ownChild.addRange(11 * MiB + 17, 3000);
    await child.close();

    child = await openChain([csrc, psrc, gsrc], { writable: [] });
    const p1 = await openChain([psrc, gsrc], { writable: [] });
    const g2 = await VhdxImage.open(gsrc);
    try {
      assert.equal(await compareWith(child, model, 0, size, BUFS), null);
      assert.equal(await compareWith(p1, parentModel, 0, size, BUFS), null);
      const extents = await checkBlockStatus(child, model, [ownChild, ownParent], [child, p1, g2], `${sector}: `);
      const depths = new Set(extents.map((x) => x.depth));
      assert.deepEqual([...depths].sort(), [0, 1, 2]);
      // Unaligned sub-ranges agree with the whole-disk status.
      for (const [off, len] of <[number, number][]>[
        [99, 3],
        [MiB - 701, 1500],
        [3 * MiB + 5, 6 * MiB],
        [size - 1, 1],
      ]) {
        agreeWithWhole(await child.blockStatus(off, len), extents, off, len, `${sector}`);
        const want = new Uint8Array(len);
        model.read(off, want);
        assert.ok(bytesEqual(await readAt(child, off, len), want));
      }
    } finally {
      await child.close();
      await p1.close();
      await g2.close();
    }
    for (const s of [psrc, csrc]) assert.deepEqual(await checkInvariants(s), []);
  }
});

// A sector bitmap page loaded for a write could be evicted by other loads before the write set
// its bits (it was clean then), and the bits went into a page outside the cache: lost. 64 pages
// (1 GiB at 512-byte sectors: 16 MiB per page), a cache of 4, and 64 writes into
// PARTIALLY_PRESENT blocks at once after a reopen (an empty cache) lost all but a few of them.
test('concurrent writes into more sector bitmap pages than the cache holds keep their bits', async () => {
  const size = 1024 * MiB;
  const { src: psrc, model } = await makeBase({ size, fill: [{ kind: 'data', offset: 0, length: MiB }] });
  const p = await VhdxImage.open(psrc);
  const csrc = await makeChild(p, { blockSize: MiB });
  await p.close();
  const open = (writable: boolean): Promise<VhdxImage> => openChain([csrc, psrc], { bitmapCacheBytes: 16 * KiB, writable: writable ? [0] : [] });
  const written: number[] = [];
  for (let round = 0; round < 3; round++) {
    const img = await open(true);
    const ws = Array.from({ length: 64 }, (_, k): [number, Uint8Array] => [k * 16 * MiB + round * 4096 + 512, payload(k + 64 * round, 1024)]);
    await Promise.all(ws.map(([o, d]) => img.write(o, d)));
    for (const [o, d] of ws) model.write(o, d);
    written.push(...ws.map(([o]) => o));
    await img.close();
  }
  const img = await open(false);
  for (const o of written) {
    const m = await compareWith(img, model, o - 512, 2048, BUFS);
    if (m) assert.fail(m);
  }
  await img.close();
  assert.deepEqual(await checkInvariants(csrc), []);
});

// ---------------------------------------------------------------------------------------------
// 3. Broken chains

test('broken chains in memory: PARENT_MISMATCH, CHAIN_TOO_DEEP, NO_PARENT; parent_linkage2 links', async () => {
  const size = 8 * MiB;
  const { src: psrc } = await makeBase({ size, fill: [{ kind: 'data', offset: 0, length: MiB }] });
  const p = await VhdxImage.open(psrc);
  const dwg = p.header.dataWriteGuid;
  await p.close();
  const openParent = () => VhdxImage.open(psrc, { name: 'P' });

  // A child whose linkage names another disk.
  const other = '{11111111-2222-3333-4444-555555555555}';
  const wrong = await makeChild({ size, logicalSectorSize: 512, header: { dataWriteGuid: dwg } }, { locator: locatorOf(null, { linkage: other.slice(1, -1) }) });
  await rejectsWith(VhdxImage.open(wrong, { parent: openParent, name: 'C' }), 'PARENT_MISMATCH', /P is not the parent C was made from.*DataWriteGuid/);

  // parent_linkage2 is an alternative identity.
  const alt = await makeChild({ size, logicalSectorSize: 512 }, { locator: locatorOf(null, { linkage: other.slice(1, -1), extra: [{ key: 'parent_linkage2', value: `{${dwg}}` }] }) });
  const viaAlt = await VhdxImage.open(alt, { parent: openParent });
  assert.equal(viaAlt.linkedBy, 'parent_linkage2');
  assert.ok(bytesEqual(await readAt(viaAlt, 0, 4096), await readAt(await openParent(), 0, 4096)));
  await viaAlt.close();

  // Logical sector size must be the parent's; the virtual size at least the parent's.
  const sec4k = await makeChild({ size, logicalSectorSize: 4096 }, { locator: locatorOf(null, { linkage: dwg }) });
  await rejectsWith(VhdxImage.open(sec4k, { parent: openParent }), 'PARENT_MISMATCH', /512-byte logical sectors, the child 4096-byte/);
  const smaller = await makeChild({ size: size - MiB, logicalSectorSize: 512 }, { locator: locatorOf(null, { linkage: dwg }) });
  await rejectsWith(VhdxImage.open(smaller, { parent: openParent }), 'PARENT_MISMATCH', /is 8388608 bytes, more than the child's 7340032 bytes/);
  // A child larger than its parent (grown by resize; this used to be refused): the parent
  // shows below its end, zeros past it.
  const bigger = await makeChild({ size: size + MiB, logicalSectorSize: 512 }, { locator: locatorOf(null, { linkage: dwg }) });
  const big = await VhdxImage.open(bigger, { parent: openParent });
  assert.ok(bytesEqual(await readAt(big, 0, 4096), await readAt(await openParent(), 0, 4096)));
  assert.ok((await readAt(big, size - 512, MiB + 512)).subarray(512).every((x) => x === 0), 'zeros past the parent');
  await big.close();

  // A resolver that keeps finding parents: the chain stops at MAX_CHAIN_DEPTH.
  const selfish = await makeChild({ size, logicalSectorSize: 512 }, { locator: locatorOf(null, { linkage: dwg }) });
  let deepest = 0;
  const forever: ParentResolver = async ({ depth }) => {
    deepest = Math.max(deepest, depth);
    return VhdxImage.open(selfish, { parent: forever, depth });
  };
  await rejectsWith(VhdxImage.open(selfish, { parent: forever }), 'CHAIN_TOO_DEEP', new RegExp(`deeper than ${MAX_CHAIN_DEPTH}`));
  assert.equal(deepest, MAX_CHAIN_DEPTH);

  // Without a resolver: metadata only; data operations fail with NO_PARENT.
  const c = await makeChild({ size, logicalSectorSize: 512 }, { locator: locatorOf(null, { linkage: dwg }) });
  const alone = await VhdxImage.open(c, { readOnly: false, name: 'C' });
  assert.equal(alone.type, 'differencing');
  await rejectsWith(alone.read(0, new Uint8Array(512)), 'NO_PARENT', /C is a differencing image opened without its parent/);
  await rejectsWith(alone.blockStatus(0, size), 'NO_PARENT');
  await rejectsWith(alone.write(0, new Uint8Array(512)), 'NO_PARENT');
  await rejectsWith(alone.writeZeroes(0, 512), 'NO_PARENT');
  await rejectsWith(alone.discard(0, MiB), 'NO_PARENT');
  await rejectsWith(commitChild(alone), 'NO_PARENT');
  await alone.close();
  // Nothing was written: the child still opens over its parent, empty.
  const fine = await VhdxImage.open(c, { parent: openParent });
  assert.deepEqual(
    (await fine.blockStatus(0, size)).map((x) => x.depth),
    [1, 1],
  );
  await fine.close();
});

test('broken chains on files: mismatch, missing parent, loops, sizes, path policies', async () => {
  const dir = scratch('diff-tests-');
  const P = join(dir, 'parent.vhdx');
  const C = join(dir, 'child.vhdx');
  await createFile(P, { size: 8 * MiB, blockSize: MiB });
  {
    const p = await openFile(P, { readOnly: false });
    await p.write(0, payload(1, 3 * MiB));
    await p.close();
  }
  await createFile(C, { parent: P });
  {
    const c = await openFile(C);
    assert.equal(c.type, 'differencing');
    assert.equal(c.blockSize, 2 * MiB, "Hyper-V's differencing block size by default");
    assert.equal(c.parent?.name, join(dir, '.', 'parent.vhdx'));
    assert.ok(bytesEqual(await readAt(c, 0, 3 * MiB), payload(1, 3 * MiB)));
    await c.close();
  }
  const rel = join(dir, 'parent.vhdx');

  // The default policy follows relative_path only; a POSIX absolute path is followed with 'any'.
  {
    const A = join(dir, 'abs-only.vhdx');
    await writeChildFile(A, P, { relative: '.\\missing\\parent.vhdx', absolute: P });
    await rejectsWith(openFile(A), 'PARENT_NOT_FOUND', /missing\/parent\.vhdx: not found\n {2}absolute_win32_path .*: not followed/);
    const viaAny = await openFile(A, { parents: 'any' });
    assert.equal(viaAny.parent?.name, P);
    await viaAny.close();
    // A Windows path is never followed off Windows.
    const W = join(dir, 'win.vhdx');
    await writeChildFile(W, P, { relative: null, absolute: 'C:\\VMs\\parent.vhdx' });
    await rejectsWith(openFile(W, { parents: 'any' }), 'PARENT_NOT_FOUND', /absolute_win32_path C:\\VMs\\parent\.vhdx: a Windows path.*no meaning on this host/);
    // parents 'none': metadata only.
    const none = await openFile(C, { parents: 'none' });
    assert.equal(none.parent, null);
    await rejectsWith(none.read(0, new Uint8Array(512)), 'NO_PARENT');
    await none.close();
  }

  // Mismatched sector size and virtual size, by path: PARENT_MISMATCH (not "not found").
  {
    const P4 = join(dir, 'parent4k.vhdx');
    await createFile(P4, { size: 8 * MiB, logicalSectorSize: 4096 });
    const S = join(dir, 'sector-mismatch.vhdx');
    await writeChildFile(S, P4, { relative: '.\\parent4k.vhdx', lss: 512 });
    await rejectsWith(openFile(S), 'PARENT_MISMATCH', /4096-byte logical sectors, the child 512-byte/);
    // A child smaller than its parent (a larger one is a grown child and opens).
    const Z = join(dir, 'size-mismatch.vhdx');
    await writeChildFile(Z, P, { relative: '.\\parent.vhdx', size: 4 * MiB });
    await rejectsWith(openFile(Z), 'PARENT_MISMATCH', /is 8388608 bytes, more than the child's 4194304 bytes/);
  }

  // A loop: a child whose parent is itself, and A → B → A.
  {
    const self = join(dir, 'self.vhdx');
    await writeChildFile(self, null, { relative: '.\\self.vhdx', size: 8 * MiB });
    await rejectsWith(openFile(self), 'PARENT_LOOP', /already in the chain/);
    const A = join(dir, 'a.vhdx');
    const B = join(dir, 'b.vhdx');
    await writeChildFile(A, null, { relative: '.\\b.vhdx', size: 8 * MiB });
    await writeChildFile(B, null, { relative: '.\\a.vhdx', size: 8 * MiB });
    await rejectsWith(openFile(A), 'PARENT_LOOP', /b\.vhdx is .*a\.vhdx, which is already in the chain/);
  }

  // The parent written to after the child was made: its DataWriteGuid changed.
  {
    const P2 = join(dir, 'p2.vhdx');
    const C2 = join(dir, 'c2.vhdx');
    await createFile(P2, { size: 8 * MiB, blockSize: MiB });
    await createFile(C2, { parent: P2 });
    const p = await openFile(P2, { readOnly: false });
    await p.write(4096, new Uint8Array(512).fill(9));
    await p.close();
    await rejectsWith(openFile(C2), 'PARENT_MISMATCH', /not the parent .*c2\.vhdx was made from/);
    // Merely opening it writable and closing changes no data: still the parent.
    const C3 = join(dir, 'c3.vhdx');
    await createFile(C3, { parent: P2 });
    await (await openFile(P2, { readOnly: false })).close();
    await (await openFile(C3)).close();
  }

  // A missing parent: the message names every path tried.
  {
    const moved = join(dir, 'moved');
    mkdirSync(moved);
    renameSync(P, join(moved, 'parent.vhdx'));
    await rejectsWith(openFile(C), 'PARENT_NOT_FOUND', new RegExp(`cannot open the parent of .*child\\.vhdx: paths tried:\\n  relative_path \\S+ -> ${escape(rel)}: not found\\n  absolute_win32_path ${escape(P)}: not followed`));
    await rejectsWith(openFile(C, { parents: 'any' }), 'PARENT_NOT_FOUND', new RegExp(`relative_path \\S+ -> ${escape(rel)}: not found\\n  absolute_win32_path ${escape(P)}: not found`));
    renameSync(join(moved, 'parent.vhdx'), P);
  }
  // A depth limit with a resolver of one's own, through openFile.
  {
    let calls = 0;
    const resolver: ParentResolver = async ({ depth }) => {
      calls++;
      return openFile(C, { parents: resolver, depth });
    };
    await rejectsWith(openFile(C, { parents: resolver }), 'CHAIN_TOO_DEEP');
    assert.equal(calls, MAX_CHAIN_DEPTH);
  }
});

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A differencing image file at `path` over the image at `parentPath` (its DataWriteGuid as the
 * linkage; a random one when null), with the locator paths and geometry given.
 */
async function writeChildFile(
  path: string,
  parentPath: string | null,
  { relative, absolute, lss, size }: { relative?: string | null; absolute?: string | null; lss?: 512 | 4096; size?: number } = {},
): Promise<void> {
  let linkage = '01234567-89ab-cdef-0123-456789abcdef';
  let psize = size;
  let plss: 512 | 4096 = lss ?? 512;
  if (parentPath) {
    const p = await openFile(parentPath, { parents: 'none' });
    linkage = p.header.dataWriteGuid;
    psize ??= p.size;
    const parentSector = p.logicalSectorSize;
    assert.ok(parentSector === 512 || parentSector === 4096);
    plss = lss ?? parentSector;
    await p.close();
  }
  const src = new FaultySource(new Uint8Array(0), { writeCache: false });
  await createImage(src, {
    size: psize ?? assert.fail('a child file needs a size or a parent'),
    logicalSectorSize: plss,
    blockSize: MiB,
    parentLocator: locatorOf(null, { linkage, relative, absolute: absolute ?? null }),
  });
  writeSparseFile(path, src);
}

// ---------------------------------------------------------------------------------------------
// 4. commit and rebase

/** A parent (plain or itself a child) and a child over it, with random-ish content. */
async function buildChain({
  sector = 512,
  size = 16 * MiB,
  deep = false,
  childData = [],
  childBlockSize = 2 * MiB,
}: { sector?: 512 | 4096; size?: number; deep?: boolean; childData?: readonly Fill[]; childBlockSize?: number } = {}) {
  const fill: Fill[] = [
    { kind: 'data', offset: 0, length: 2 * MiB },
    { kind: 'data', offset: 5 * MiB + 3 * 512, length: 40 * KiB },
    { kind: 'zero', offset: 7 * MiB, length: MiB },
    { kind: 'data', offset: 12 * MiB, length: MiB },
  ];
  const base = await makeBase({ size, sector, fill });
  const model = base.model;
  let chain = [base.src];
  if (deep) {
    const g = await VhdxImage.open(base.src);
    const mid = await makeChild(g, { blockSize: MiB });
    await g.close();
    const m = await openChain([mid, base.src]);
    for (const [off, len] of <[number, number][]>[
      [3 * MiB + 7, 9000],
      [12 * MiB + 512, 512],
    ]) {
      const d = payload(off, len);
      await m.write(off, d);
      model.write(off, d);
    }
    await m.writeZeroes(MiB, 4096);
    model.zero(MiB, 4096);
    await m.close();
    chain = [mid, base.src];
  }
  const top = await openChain(chain, { writable: [] });
  const csrc = await makeChild(top, { blockSize: childBlockSize });
  await top.close();
  chain = [csrc, ...chain];
  const c = await openChain(chain);
  let k = 0;
  for (const op of childData) {
    if (op.kind === 'data') {
      const d = payload(++k * 3, op.length);
      await c.write(op.offset, d);
      model.write(op.offset, d);
    } else {
      await c.writeZeroes(op.offset, op.length);
      model.zero(op.offset, op.length);
    }
  }
  await c.close();
  return { chain, model };
}

const CHILD_DATA: Fill[] = [
  { kind: 'data', offset: 100, length: 300 }, // partial sectors over parent data
  { kind: 'data', offset: 2 * MiB - 1000, length: 5000 }, // across a block boundary
  { kind: 'data', offset: 4 * MiB, length: 2 * MiB }, // a whole child block
  { kind: 'zero', offset: 6 * MiB, length: 2 * MiB }, // a whole block of zeros over parent data
  { kind: 'zero', offset: 12 * MiB + 4096, length: 8192 }, // zeros inside a block: written as data
  { kind: 'data', offset: 9 * MiB + 511, length: 2 },
  { kind: 'data', offset: 16 * MiB - 512, length: 512 }, // the last sector
];

/** After a commit: the parent holds `model`, the child is empty and reads the same through it. */
async function checkCommitted(
  chain: FaultySource[],
  model: SparseModel,
  {
    qemu,
    dir,
    label,
    sector = 512,
    compare = (img) => compareWith(img, model, 0, img.size, BUFS),
  }: { qemu?: boolean; dir?: string; label: string; sector?: number; compare?: (img: VhdxImage) => Promise<string | null> },
) {
  const csrc = chain[0]!;
  const psrc = chain[1]!;
  const parent = await openChain(chain.slice(1), { writable: [] });
  assert.equal(await compare(parent), null, `${label}: the parent reads as the chain did`);
  const dwg = parent.header.dataWriteGuid;
  await parent.close();
  assert.deepEqual(await checkInvariants(psrc), [], `${label}: the parent passes the checks`);
  if (qemu && chain.length === 2 && sector === 512) {
    const path = join(dir ?? assert.fail('qemu-img checks need a folder'), `${label.replace(/\W+/g, '-')}.vhdx`);
    writeSparseFile(path, psrc);
    const r = spawnSync('qemu-img', ['check', '-f', 'vhdx', path], { encoding: 'utf8' });
    assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
  }
  assert.deepEqual(await checkInvariants(csrc), [], `${label}: the child passes the checks`);
  const child = await openChain(chain, { writable: [] });
  try {
    assert.equal(child.linkedBy, 'parent_linkage');
    const locator = child.layout.parentLocator;
    assert.ok(locator, `${label}: the child has a parent locator`);
    const keys = locator.entries.map((e) => e.key);
    assert.ok(!keys.includes('parent_linkage2'), `${label}: parent_linkage2 is gone`);
    assert.equal(locator.entries.find((e) => e.key === 'parent_linkage')?.value, `{${dwg}}`);
    assert.equal(await compare(child), null, `${label}: the emptied child reads the same`);
    const extents = await child.blockStatus(0, child.size);
    assert.ok(
      extents.every((x) => (x.depth ?? 0) > 0),
      `${label}: the child holds nothing itself`,
    );
    const stats = await child.allocationStats();
    assert.equal(stats.allocatedBlocks, 0);
    assert.equal(stats.bitmapBlocks, 0);
    assert.ok(csrc.size <= 4 * MiB + 2 * MiB, `${label}: the child's file was cut back (${csrc.size})`);
  } finally {
    await child.close();
  }
}

test('commitChild merges a child into its parent (plain and differencing parents, 512 and 4096)', async (t) => {
  const qemu = hasTool('qemu-img');
  if (!qemu) t.diagnostic('qemu-img not installed: the committed parents are not checked by it');
  const dir = scratch('diff-tests-commit-');
  for (const sector of [512, 4096] as const) {
    for (const deep of [false, true]) {
      const label = `${sector}${deep ? ', three deep' : ''}`;
      const { chain, model } = await buildChain({ sector, deep, childData: CHILD_DATA });
      const before = await openChain(chain, { writable: [] });
      assert.equal(await compareWith(before, model, 0, before.size, BUFS), null);
      const oldLinkage = before.layout.parentLocator?.entries.find((e) => e.key === 'parent_linkage')?.value;
      assert.ok(oldLinkage, 'the child names its parent');
      await before.close();
      const child = await openChain(chain, { writable: [0, 1] });
      let progress = 0;
      const r = await commitChild(child, { onProgress: (d) => (progress = d) });
      await child.close();
      assert.equal(progress, child.size);
      assert.notEqual(`{${r.parentDataWriteGuid}}`, oldLinkage, 'the parent has a new DataWriteGuid');
      assert.equal(r.zeroBytes, 2 * MiB);
      assert.ok(r.dataBytes >= 2 * MiB + 5000 && r.dataBytes < 3 * MiB, `${r.dataBytes} bytes of data`);
      await checkCommitted(chain, model, { qemu, dir, label, sector });
      // Committing an empty child changes nothing (and still succeeds).
      const again = await openChain(chain, { writable: [0, 1] });
      const r2 = await commitChild(again);
      await again.close();
      assert.equal(r2.dataBytes + r2.zeroBytes, 0);
      await checkCommitted(chain, model, { qemu: false, dir, label: `${label}, again` });
      if (deep) {
        // The middle image into the base, with the (emptied) child still over it: the middle
        // keeps its DataWriteGuid, so the child stays linked and the chain reads the same.
        const top = await openChain(chain, { writable: [] });
        const before = top.parent!.header.dataWriteGuid;
        await top.close();
        const mid = await openChain(chain.slice(1), { writable: [0, 1] });
        await commitChild(mid);
        await mid.close();
        await checkCommitted(chain.slice(1), model, { qemu, dir, label: `${label}, the middle`, sector });
        const after = await openChain(chain, { writable: [] });
        assert.equal(after.parent?.header.dataWriteGuid, before, 'the middle image kept its DataWriteGuid');
        assert.equal(await compareWith(after, model, 0, after.size, BUFS), null, `${label}: the chain after committing the middle`);
        await after.close();
      }
    }
  }
  // The parent must be open for writing.
  const { chain } = await buildChain({ childData: CHILD_DATA.slice(0, 1) });
  const ro = await openChain(chain, { writable: [0] });
  await rejectsWith(commitChild(ro), 'READ_ONLY');
  await ro.close();
  const plain = await openChain(chain.slice(1), { writable: [0] });
  await rejectsWith(commitChild(plain), 'BAD_ARGUMENT', /not a differencing image/);
  await plain.close();
});

/** A source that calls `hook(n)` before its n-th write (from 1). */
function hooked(src: WritableSource, hook: (n: number) => void): WritableSource {
  let n = 0;
  return {
    get size() {
      return src.size;
    },
    readOnly: false,
    read: (o: number, b: Uint8Array) => src.read(o, b),
    write: async (o: number, d: Uint8Array) => {
      hook(++n);
      return src.write(o, d);
    },
    flush: () => src.flush(),
    truncate: (s: number) => src.truncate(s),
    close: () => src.close(),
  };
}

test('an interrupted commit (signal) leaves the chain readable; a second commit completes it', async () => {
  // 12 MiB of child data: three copy chunks, so an abort lands between them.
  const childData: Fill[] = [
    { kind: 'data', offset: 100, length: 12 * MiB },
    { kind: 'zero', offset: 14 * MiB, length: 2 * MiB },
  ];
  for (const abortAt of ['copy', 'clear']) {
    const { chain, model } = await buildChain({ childData });
    const csrc = chain[0]!;
    const psrc = chain[1]!;
    const ac = new AbortController();
    // 'copy': part-way through the copy into the parent (one chunk at a time, aborted at the
    // parent's fourth write: after its header update, inside the first chunk). 'clear': once the
    // parent holds everything, before the child is emptied.
    const child = await VhdxImage.open(csrc, {
      readOnly: false,
      parent: () => VhdxImage.open(abortAt === 'copy' ? hooked(psrc, (n) => n === 4 && ac.abort()) : psrc, { readOnly: false }),
    });
    const opts: CommitOptions = abortAt === 'copy' ? { parallel: 1 } : { onProgress: (d, total) => d === total && ac.abort() };
    await assert.rejects(commitChild(child, { signal: ac.signal, ...opts }), (e: VhdxError) => {
      assert.ok(e instanceof VhdxError, `a VhdxError, not ${e?.name}: ${e?.message}`);
      assert.equal(e.reason, 'ABORTED');
      assert.equal(e.code, 'ECANCELED');
      return true;
    });
    assert.ok(ac.signal.aborted);
    await child.close();
    // The chain reads as before, linked either way.
    const mid = await openChain(chain, { writable: [] });
    assert.equal(await compareWith(mid, model, 0, mid.size, BUFS), null, `${abortAt}: the chain after the abort`);
    // Cancelled during the copy (both cases: the 'clear' abort comes with the copy's last
    // progress report), so the child was not relinked yet: parent_linkage2 names the parent.
    assert.equal(mid.linkedBy, 'parent_linkage2', `${abortAt}: the parent already has its new identity`);
    await mid.close();
    assert.deepEqual(await checkInvariants(csrc), []);
    assert.deepEqual(await checkInvariants(psrc), []);
    const again = await openChain(chain, { writable: [0, 1] });
    await commitChild(again);
    await again.close();
    await checkCommitted(chain, model, { qemu: false, label: `aborted at ${abortAt}` });
  }
});

// A signal whose `aborted` turns true at its k-th reading: a commit cancelled at each point
// where it looks, including between the BAT windows of emptying the child (every 4096 entries).
function abortAtCheck(k: number) {
  let n = 0;
  return {
    get aborted() {
      return ++n >= k;
    },
    reason: new Error('test abort'),
    get checks() {
      return n;
    },
  };
}

/** The stand-in as the commit's signal: it has only what the commit reads (`aborted`, `reason`), hence the cast. */
const asSignal = (s: ReturnType<typeof abortAtCheck>): AbortSignal => s as unknown as AbortSignal;

test('a commit cancelled at each point it checks its signal, then run again, completes', async () => {
  // 4.5 GiB (sparse) with 1 MiB child blocks: more than 4096 BAT entries, so emptying the child
  // checks the signal twice, and an abort can leave it half emptied (committed).
  const size = 4608 * MiB;
  const childData: Fill[] = [
    { kind: 'data', offset: 100, length: 9 * MiB },
    { kind: 'zero', offset: 2048 * MiB, length: 2 * MiB },
    { kind: 'data', offset: 4500 * MiB + 7, length: 5000 },
  ];
  const compare = (model: SparseModel) => (img: VhdxImage) => compareSparse(img, model);
  let checks = 0;
  {
    const { chain, model } = await buildChain({ size, childData, childBlockSize: MiB });
    const c = await openChain(chain, { writable: [0, 1] });
    const signal = abortAtCheck(Infinity);
    await commitChild(c, { signal: asSignal(signal), parallel: 1 });
    await c.close();
    checks = signal.checks;
    await checkCommitted(chain, model, { label: 'not aborted', compare: compare(model) });
  }
  assert.ok(checks >= 6, `${checks} signal checks`);
  for (let k = 1; k <= checks; k++) {
    const { chain, model } = await buildChain({ size, childData, childBlockSize: MiB });
    const c = await openChain(chain, { writable: [0, 1] });
    await rejectsWith(commitChild(c, { signal: asSignal(abortAtCheck(k)), parallel: 1 }), 'ABORTED', /cancelled/);
    await c.close();
    const mid = await openChain(chain, { writable: [] });
    assert.equal(await compareSparse(mid, model), null, `aborted at check ${k}: the chain reads as before`);
    await mid.close();
    for (const s of chain) assert.deepEqual(await checkInvariants(s), [], `aborted at check ${k}`);
    const again = await openChain(chain, { writable: [0, 1] });
    await commitChild(again);
    await again.close();
    await checkCommitted(chain, model, { label: `aborted at check ${k}`, compare: compare(model) });
  }
});

test('commitFile empties, keeps or removes the child as asked; rebaseFile follows a moved parent and refuses another disk', async (t) => {
  const qemu = hasTool('qemu-img');
  const dir = scratch('diff-tests-files-');
  for (const outcome of ['empty', 'keep', 'remove'] as const) {
    const remove = outcome;
    const P = join(dir, `p-${remove}.vhdx`);
    const C = join(dir, `c-${remove}.vhdx`);
    await createFile(P, { size: 16 * MiB, blockSize: MiB });
    const model = new SparseModel();
    {
      const p = await openFile(P, { readOnly: false });
      const d = payload(5, 3 * MiB);
      await p.write(MiB, d);
      model.write(MiB, d);
      await p.close();
    }
    await createFile(C, { parent: P });
    {
      const c = await openFile(C, { readOnly: false });
      for (const [off, len] of <[number, number][]>[
        [MiB + 3, 10],
        [8 * MiB, 3 * MiB],
      ]) {
        const d = payload(off, len);
        await c.write(off, d);
        model.write(off, d);
      }
      await c.writeZeroes(2 * MiB, 2 * MiB);
      model.zero(2 * MiB, 2 * MiB);
      await c.close();
    }
    const r = await commitFile(C, { child: outcome });
    assert.equal(r.parentPath, join(dir, '.', `p-${remove}.vhdx`));
    assert.equal(existsSync(C), outcome !== 'remove');
    const p = await openFile(P);
    assert.equal(await compareWith(p, model, 0, p.size, BUFS), null);
    assert.equal(p.header.dataWriteGuid, r.parentDataWriteGuid);
    await p.close();
    const res = await checkImage(new FaultySource(readFileSync(P)));
    assert.ok(res.canComplete && res.findings.every((f) => f.severity !== 'corruption'), JSON.stringify(res.findings));
    if (qemu) {
      const q = spawnSync('qemu-img', ['check', '-f', 'vhdx', P], { encoding: 'utf8' });
      assert.equal(q.status, 0, `qemu-img check: ${q.stdout}${q.stderr}`);
      const cmp = spawnSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', P, writeRaw(join(dir, `want-${remove}.raw`), model, 16 * MiB)], { encoding: 'utf8' });
      assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
    }
    if (outcome === 'empty') {
      const c = await openFile(C);
      assert.equal(c.linkedBy, 'parent_linkage');
      assert.equal(await compareWith(c, model, 0, c.size, BUFS), null);
      assert.ok((await c.blockStatus(0, c.size)).every((x) => x.depth === 1));
      await c.close();
    }
    if (outcome === 'keep') {
      // As qemu-img commit -d: the child keeps its data, reads the same, and links to the merged parent.
      const c = await openFile(C);
      assert.equal(c.linkedBy, 'parent_linkage2');
      assert.equal(await compareWith(c, model, 0, c.size, BUFS), null);
      assert.ok((await c.blockStatus(8 * MiB, 3 * MiB)).every((x) => x.depth === 0), 'the child still holds what it wrote');
      await c.close();
    }
  }
  if (!qemu) t.diagnostic('qemu-img not installed: the committed parents are not checked by it');

  // rebase: the parent moves to another folder; the child finds it again after rebaseFile.
  const P = join(dir, 'base.vhdx');
  const C = join(dir, 'top.vhdx');
  await createFile(P, { size: 8 * MiB, blockSize: MiB });
  {
    const p = await openFile(P, { readOnly: false });
    await p.write(0, payload(9, MiB));
    await p.close();
  }
  await createFile(C, { parent: P });
  {
    const c = await openFile(C, { readOnly: false });
    await c.write(MiB, payload(10, 1000));
    await c.close();
  }
  mkdirSync(join(dir, 'elsewhere'));
  const moved = join(dir, 'elsewhere', 'base.vhdx');
  renameSync(P, moved);
  await rejectsWith(openFile(C), 'PARENT_NOT_FOUND');
  // Another disk of the same size is refused, and the child is left as it was.
  const stranger = join(dir, 'stranger.vhdx');
  await createFile(stranger, { size: 8 * MiB });
  const bytesBefore = readFileSync(C);
  await rejectsWith(rebaseFile(C, stranger), 'PARENT_MISMATCH');
  assert.ok(bytesEqual(readFileSync(C), bytesBefore), 'a refused rebase leaves the child alone');
  await rebaseFile(C, moved);
  const c = await openFile(C);
  try {
    assert.equal(c.parent?.name, join(dir, 'elsewhere', 'base.vhdx'));
    const kv = new Map((c.layout.parentLocator?.entries ?? []).map((e) => [e.key, e.value]));
    assert.equal(kv.get('relative_path'), '.\\elsewhere\\base.vhdx');
    assert.equal(kv.get('absolute_win32_path'), moved);
    assert.ok(bytesEqual(await readAt(c, 0, MiB), payload(9, MiB)));
    assert.ok(bytesEqual(await readAt(c, MiB, 1000), payload(10, 1000)));
  } finally {
    await c.close();
  }
  assert.deepEqual(await checkInvariants(new FaultySource(readFileSync(C))), []);
});

function writeRaw(path: string, model: SparseModel, size: number): string {
  const b = new Uint8Array(size);
  model.read(0, b);
  writeFileSync(path, b);
  return path;
}
