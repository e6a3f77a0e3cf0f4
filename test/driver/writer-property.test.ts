// Property tests of the writer (src/driver/writer.ts):
// 1. Random sequences of write, write-zeroes (plain and fast), discard, flush, FUA writes, reads,
//    discard-and-rewrite cycles and reopen (close + open) on small images (8–24 MiB, 1 MiB blocks, dynamic and fixed, 512-
//    and 4096-byte sectors), against a model of the virtual disk. Every read must equal the
//    model; at the end the whole disk must, block status must agree with it, the image must pass
//    the structural checks with no leaked space, the file must hold no more blocks than were
//    allocated at once, and `qemu-img check` must pass (512-byte sectors, when installed).
// 2. Random workloads that lose power at a random write or flush (src/io/faulty.ts), with a
//    random subset of the unflushed writes landing and one maybe torn: the image must open
//    read-only and writable, read the same both ways, hold at least everything up to the last
//    completed flush (and nothing but later writes beyond it), and pass the structural checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { MemorySource, VhdxImage, type VhdxError } from '../../src/index.js';
import { FaultySource } from '../../src/testing.js';
import { planLayout, writeNewImage } from '../../src/driver/layout.js';
import { checkInvariants } from '../helpers/invariants.js';
import { SparseModel, bytesEqual, crashCheck, noisePayloads } from '../helpers/model.js';
import { runWorkload, writeSparseFile, type Op } from '../helpers/workload.js';
import { hasTool, scratch } from '../helpers/env.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const NIL = '00000000-0000-0000-0000-000000000000';

// Write payloads are slices of one seeded random buffer, at an offset that depends on the write.
const payload = noisePayloads(0x9e3779b9);

const configArb = fc.record({
  sizeMiB: fc.integer({ min: 8, max: 24 }),
  /** Sectors cut from the end, so that the last block may be short. */
  tailSectors: fc.integer({ min: 0, max: 3 }),
  sector: fc.constantFrom(512, 4096),
  fixed: fc.boolean(),
});

const rangeArb = fc.record({
  block: fc.integer({ min: 0, max: 40 }),
  within: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 255 }).map((k) => k * 4096), fc.integer({ min: 0, max: MiB - 1 })),
  len: fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 8192 }) },
    { weight: 3, arbitrary: fc.integer({ min: 1, max: 64 }).map((k) => k * 512) },
    { weight: 1, arbitrary: fc.constant(MiB) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 * MiB }) },
  ),
});

const opArb = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('write'), r: rangeArb, fua: fc.boolean().map((b) => b) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('zero'), r: rangeArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('fastZero'), r: rangeArb }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('discard'), r: rangeArb }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('read'), r: rangeArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('flush') }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reopen') }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('concurrent'), writes: fc.array(rangeArb, { minLength: 2, maxLength: 6 }) }),
  },
  // Discard-and-rewrite cycles: free a range (discard or write-zeroes), maybe flush, write
  // another (or the same) range: freed places must be reused, never showing old bytes.
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('cycle'),
      rounds: fc.array(fc.record({ free: rangeArb, zero: fc.boolean(), flush: fc.boolean(), write: rangeArb }), { minLength: 1, maxLength: 3 }),
    }),
  },
);

/** A range of the disk, clamped into it; null when empty. */
function place(r: { block: number; within: number; len: number }, size: number): { offset: number; length: number } | null {
  let offset = r.block * MiB + r.within;
  if (offset >= size) offset %= size;
  const length = Math.min(r.len, size - offset);
  return length > 0 ? { offset, length } : null;
}

async function readAt(img: VhdxImage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

// Buffers reused by every comparison: allocating (and so faulting in) fresh megabytes for each
// read costs more than the rest of a run.
const GOT = new Uint8Array(MiB);
const WANT = new Uint8Array(MiB);

/** Compare the image with the model over [offset, offset + length), 1 MiB at a time; a message or null. */
async function compare(img: VhdxImage, model: SparseModel, offset: number, length: number): Promise<string | null> {
  for (let at = offset; at < offset + length; at += MiB) {
    const n = Math.min(MiB, offset + length - at);
    const got = GOT.subarray(0, n);
    await img.read(at, got);
    const want = WANT.subarray(0, n);
    model.read(at, want);
    if (!bytesEqual(got, want)) {
      const i = firstDifference(got, want);
      return `byte ${at + i} reads ${got[i]}, the model has ${want[i]}`;
    }
  }
  return null;
}

/** Blocks of `img` holding data now (as the writer sees them, committed or not). */
async function liveBlocks(img: VhdxImage): Promise<number> {
  const blocks = new Set<number>();
  for (const x of await img.blockStatus(0, img.size)) {
    if (x.type !== 'data') continue;
    for (let b = Math.floor(x.offset / img.blockSize); b * img.blockSize < x.offset + x.length; b++) blocks.add(b);
  }
  return blocks.size;
}

const ZEROS = new Uint8Array(MiB);
const isZero = (b: Uint8Array): boolean => bytesEqual(b, ZEROS.subarray(0, b.length));

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

test('writer property: random write / write-zeroes / discard / flush / reopen sequences match a byte model', async (t) => {
  const qemu = hasTool('qemu-img');
  if (!qemu) t.diagnostic('qemu-img not installed: skipping qemu-img check of the final images');
  const dir = qemu ? scratch('vhdx-writer-prop-') : null;
  let runs = 0;
  let qemuChecks = 0;

  await fc.assert(
    fc.asyncProperty(configArb, fc.array(opArb, { minLength: 1, maxLength: 30 }), async (cfg, ops) => {
      runs++;
      const size = cfg.sizeMiB * MiB - cfg.tailSectors * cfg.sector;
      const plan = planLayout({ virtualSize: size, blockSize: MiB, logicalSectorSize: cfg.sector, fixed: cfg.fixed });
      const disk = new FaultySource(new Uint8Array(0), { writeCache: false });
      await writeNewImage(disk, plan);
      const model = new SparseModel();
      let img = await VhdxImage.open(disk, { readOnly: false });
      let n = 0;
      // Blocks allocated at most at once: the file must never need more places than that.
      let peakBlocks = 0;
      const check = async (offset: number, length: number, what: string): Promise<void> => {
        const m = await compare(img, model, offset, length);
        if (m) assert.fail(`${what}: ${m}`);
      };
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
              break;
            }
            case 'zero':
              await img.writeZeroes(at!.offset, at!.length);
              model.zero(at!.offset, at!.length);
              break;
            case 'fastZero':
              try {
                await img.writeZeroes(at!.offset, at!.length, { fast: true });
                model.zero(at!.offset, at!.length);
              } catch (e) {
                if ((e as VhdxError).code !== 'ENOTSUP') throw e;
                assert.ok(!cfg.fixed || img.can.fastZero === false);
                // Refused part-way: every byte is either as it was or zero.
                const got = await readAt(img, at!.offset, at!.length);
                const before = new Uint8Array(at!.length);
                model.read(at!.offset, before);
                for (let i = 0; i < got.length; i++) {
                  if (got[i] !== 0 && got[i] !== before[i]) assert.fail(`refused fast zero changed byte ${at!.offset + i}`);
                }
                model.write(at!.offset, got);
              }
              break;
            case 'discard':
              await img.discard(at!.offset, at!.length);
              model.zero(at!.offset, at!.length);
              break;
            case 'read':
              await check(at!.offset, at!.length, `read #${n}`);
              break;
            case 'flush':
              await img.flush();
              break;
            case 'reopen': {
              await img.close();
              const ro = await VhdxImage.open(disk);
              assert.equal(ro.header.logGuid, NIL, 'LogGuid clear after close');
              await ro.close();
              img = await VhdxImage.open(disk, { readOnly: false });
              break;
            }
            case 'cycle':
              for (const [k, c] of op.rounds.entries()) {
                const f = place(c.free, size);
                if (f) {
                  await (c.zero ? img.writeZeroes(f.offset, f.length) : img.discard(f.offset, f.length));
                  model.zero(f.offset, f.length);
                }
                peakBlocks = Math.max(peakBlocks, await liveBlocks(img));
                if (c.flush) await img.flush();
                const w = place(c.write, size);
                if (w) {
                  const data = payload(n * 17 + k, w.length);
                  await img.write(w.offset, data);
                  model.write(w.offset, data);
                }
              }
              break;
            case 'concurrent': {
              // Non-overlapping writes in flight together (overlaps would have no defined result).
              const ranges: { offset: number; length: number }[] = [];
              for (const r of op.writes) {
                const p = place(r, size);
                if (p && ranges.every((q) => p.offset + p.length <= q.offset || q.offset + q.length <= p.offset)) ranges.push(p);
              }
              const datas = ranges.map((p, k) => payload(n * 31 + k, p.length));
              await Promise.all(ranges.map((p, k) => img.write(p.offset, datas[k]!)));
              ranges.forEach((p, k) => model.write(p.offset, datas[k]!));
              break;
            }
          }
          peakBlocks = Math.max(peakBlocks, await liveBlocks(img));
        }
        await img.close();
      } finally {
        await img.close().catch(() => undefined);
      }
      // Freed places were reused before the file grew, and close cut what was left at the end.
      assert.ok(disk.size <= plan.fileSize + peakBlocks * MiB, `file of ${disk.size} bytes for at most ${peakBlocks} blocks at once`);

      const ro = await VhdxImage.open(disk);
      assert.equal(ro.header.logGuid, NIL);
      const m = await compare(ro, model, 0, size);
      if (m) assert.fail(`whole disk after close: ${m}`);
      for (const x of await ro.blockStatus(0, size)) {
        if (cfg.fixed) assert.equal(x.type, 'data', 'a fixed disk stays allocated');
        for (let at = x.offset; x.type !== 'data' && at < x.offset + x.length; at += MiB) {
          const want = WANT.subarray(0, Math.min(MiB, x.offset + x.length - at));
          model.read(at, want);
          assert.ok(isZero(want), `${x.type} extent at ${x.offset} is not zero in the model`);
        }
      }
      await ro.close();
      assert.deepEqual(await checkInvariants(disk, { noLeaks: true }), []);
      if (dir && cfg.sector === 512) {
        const path = join(dir, `run-${runs}.vhdx`);
        writeSparseFile(path, disk);
        const r = spawnSync('qemu-img', ['check', '-f', 'vhdx', path], { encoding: 'utf8' });
        assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
        qemuChecks++;
      }
    }),
    { numRuns: 100, seed: 20240611 },
  );
  assert.ok(runs >= 100);
  if (qemu) assert.ok(qemuChecks > 20, `${qemuChecks} qemu-img checks`);
});

test('writer property: power lost at a random point of a random workload keeps everything up to the last flush', async () => {
  let crashes = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.record({ sizeMiB: fc.integer({ min: 8, max: 16 }), sector: fc.constantFrom(512, 4096), fixed: fc.boolean() }),
      fc.array(
        fc.oneof(
          { weight: 6, arbitrary: fc.record({ kind: fc.constant('write'), r: rangeArb, fua: fc.boolean() }) },
          { weight: 2, arbitrary: fc.record({ kind: fc.constant('zero'), r: rangeArb }) },
          { weight: 2, arbitrary: fc.record({ kind: fc.constant('discard'), r: rangeArb }) },
          { weight: 2, arbitrary: fc.record({ kind: fc.constant('flush') }) },
          { weight: 1, arbitrary: fc.record({ kind: fc.constant('reopen') }) },
        ),
        { minLength: 1, maxLength: 16 },
      ),
      fc.nat(),
      fc.record({ seed: fc.nat(), tear: fc.boolean(), tearUnit: fc.constantFrom(512, 4096) }),
      async (cfg, ops, pick, crash) => {
        const size = cfg.sizeMiB * MiB;
        const mem = new MemorySource();
        await writeNewImage(mem, planLayout({ virtualSize: size, blockSize: MiB, logicalSectorSize: cfg.sector, fixed: cfg.fixed }));
        const base = mem.bytes();
        let n = 0;
        const list: Op[] = [];
        for (const op of ops) {
          n++;
          if (!('r' in op)) {
            list.push({ kind: op.kind });
            continue;
          }
          const at = place(op.r, size);
          if (!at) continue;
          if (op.kind === 'write') list.push({ kind: 'write', offset: at.offset, data: payload(n, at.length), fua: op.fua });
          else list.push({ kind: op.kind, offset: at.offset, length: at.length });
        }
        list.push({ kind: 'close' });
        const dry = await runWorkload(base, list, undefined);
        const at = 1 + (pick % dry.disk.mutations);
        const run = await runWorkload(base, list, at);
        assert.ok(run.disk.isCrashed);
        crashes++;
        const crashed = run.disk.crashImage({ keep: 'random', ...crash });
        const roSrc = crashed.clone();
        const ro = await VhdxImage.open(roSrc);
        const rw = await VhdxImage.open(crashed, { readOnly: false });
        for (let off = 0; off < size; off += MiB) {
          const a = GOT.subarray(0, Math.min(MiB, size - off));
          const b = WANT.subarray(0, a.length);
          await ro.read(off, a);
          await rw.read(off, b);
          const m = crashCheck(a, off, run.durable, run.since);
          if (m) assert.fail(`crash at operation ${at}: ${m}`);
          if (!bytesEqual(a, b)) assert.fail(`crash at operation ${at}: the writable open (replayed in place) reads differently at ${off}`);
        }
        await ro.close();
        await rw.close();
        assert.deepEqual(await checkInvariants(crashed), []);
        assert.equal(roSrc.counts.writes, 0, 'a read-only open writes nothing');
      },
    ),
    { numRuns: 60, seed: 7031 },
  );
  assert.ok(crashes >= 60);
});
