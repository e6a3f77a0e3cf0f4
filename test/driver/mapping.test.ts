// The mapping layer (src/driver/mapping.ts): every payload block state, on fixed, dynamic and
// differencing disks with 512- and 4096-byte sectors, read through ranges that cross block,
// sector and chunk boundaries (1 MiB blocks: a chunk of 2^23 sectors is 4096 or 32768 blocks;
// the disks are sparse), checked against a model of what each byte is: data at a file offset,
// zeros (with or without storage behind them), the parent's, or unallocated. On plain disks the
// image's reads and block status are checked against the same model.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VhdxImage } from '../../src/index.js';
import { FaultySource } from '../../src/testing.js';
import { planLayout, writeNewImage, setBatEntry } from '../../src/driver/layout.js';
import { openLayout } from '../../src/driver/open.js';
import { BlockMap, LOOKUP_MISS, LOOKUP_PARENT, LOOKUP_ZERO, type Run } from '../../src/driver/mapping.js';
import { BitmapState, PayloadState, bitmapBatIndex, payloadBatIndex } from '../../src/format/bat.js';
import { LOCATOR_TYPE_VHDX } from '../helpers/chain.js';
import { bytesEqual, pattern } from '../helpers/model.js';

const MiB = 1024 * 1024;
const SECTORS_PER_CHUNK = 2 ** 23;
const P = PayloadState;

/** Block states by name; CLAIM is UNMAPPED keeping a place (free space, not the block's content). */
const STATE: Record<'NP' | 'UNDEF' | 'ZERO' | 'UNMAPPED' | 'DRAFT' | 'CLAIM' | 'FULL' | 'PARTIAL', number> = { NP: P.NOT_PRESENT, UNDEF: P.UNDEFINED, ZERO: P.ZERO, UNMAPPED: P.UNMAPPED, DRAFT: P.UNMAPPED_DRAFT, CLAIM: P.UNMAPPED, FULL: P.FULLY_PRESENT, PARTIAL: P.PARTIALLY_PRESENT };

/** xorshift, for sector runs and ranges. */
function rng(seed: number): (n: number) => number {
  let x = seed;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

/**
 * A disk of 1 MiB blocks that ends three sectors into the block after the first two of chunk 1,
 * with states set around its start and around the chunk boundary. Returns the source, the
 * layout, and `at(offset)`: the model's { kind, fileOffset, stored } of the byte at `offset`.
 */
type StateName = keyof typeof STATE;
type DiskType = 'dynamic' | 'fixed' | 'differencing';

/** A block as the disk is built: its state, its place in the file, a partial block's sector bits. */
interface BlockSpec {
  state: number;
  place: number;
  bits: Uint8Array | null;
}

/** What the model says of one byte. */
type ModelByte = { kind: 'data'; fileOffset: number; stored: boolean } | { kind: 'zero' | 'parent' | 'unallocated'; stored: boolean };

async function build({ lss, type }: { lss: 512 | 4096; type: DiskType }) {
  const C = (SECTORS_PER_CHUNK * lss) / MiB;
  const size = (C + 2) * MiB + 3 * lss;
  const diff = type === 'differencing';
  const fixed = type === 'fixed';
  const locator = { locatorType: LOCATOR_TYPE_VHDX, entries: [{ key: 'parent_linkage', value: '{11111111-2222-3333-4444-555555555555}' }, { key: 'relative_path', value: '.\\p.vhdx' }] };
  const plan = planLayout({ virtualSize: size, blockSize: MiB, logicalSectorSize: lss, fixed, ...(diff ? { parentLocator: locator } : {}) });
  const src = new FaultySource(new Uint8Array(0), { writeCache: false });
  await writeNewImage(src, plan);
  const g = plan.geometry;
  let end = Math.ceil(src.size / MiB) * MiB;
  const newPlace = async () => {
    const at = end;
    end += MiB;
    await src.truncate(end);
    return at;
  };
  const last = C + 2;
  const specs = new Map<number, StateName>([
    [0, 'NP'], [1, 'UNDEF'], [2, 'ZERO'], [3, 'UNMAPPED'], [4, 'DRAFT'], [5, 'CLAIM'], [6, 'FULL'], [7, 'FULL'], [8, diff ? 'PARTIAL' : 'FULL'],
    [10, diff ? 'PARTIAL' : 'ZERO'],
    [9, 'FULL'], // placed after a gap: not contiguous in the file with block 8
    [C - 3, diff ? 'PARTIAL' : 'UNDEF'], [C - 2, 'ZERO'], [C - 1, 'FULL'], [C, 'FULL'], [C + 1, diff ? 'PARTIAL' : 'NP'], [last, 'FULL'],
  ]);
  const blocks = new Map<number, BlockSpec>();
  const random = rng(lss + (diff ? 7 : fixed ? 3 : 1));
  const bitmapOf = new Map<number, Uint8Array>(); // chunk → bytes of its sector bitmap block
  for (const [b, name] of specs) {
    const extent = Math.min(MiB, size - b * MiB);
    const spec: BlockSpec = { state: STATE[name], place: 0, bits: null };
    if (b === 9 && !fixed) await newPlace();
    if (name === 'FULL' || name === 'PARTIAL') {
      spec.place = fixed ? plan.payloadOffset + b * MiB : await newPlace();
      await src.write(spec.place, pattern(b + 1, extent));
    } else if (name === 'CLAIM') {
      spec.place = await newPlace();
      await src.write(spec.place, pattern(99, extent)); // old bytes nobody may show
    }
    if (name === 'PARTIAL') {
      // Runs of set and clear bits; the first run clear in one block, set in the next.
      const sectors = extent / lss;
      const bits = new Uint8Array(sectors);
      spec.bits = bits;
      let v = b % 2;
      for (let s = 0; s < sectors; ) {
        const n = 1 + random(40);
        bits.fill(v, s, Math.min(sectors, s + n));
        s += n;
        v ^= 1;
      }
      const chunk = Math.floor(b / C);
      const bm = bitmapOf.get(chunk) ?? new Uint8Array(MiB);
      bitmapOf.set(chunk, bm);
      const first = (b * MiB) / lss - chunk * SECTORS_PER_CHUNK;
      bits.forEach((bit, i) => {
        if (bit) bm[(first + i) >>> 3]! |= 1 << ((first + i) & 7);
      });
    }
    blocks.set(b, spec);
    await setBatEntry(src, plan, payloadBatIndex(g, b), { state: spec.state, fileOffsetMB: name === 'CLAIM' || spec.state >= P.FULLY_PRESENT ? spec.place / MiB : 0 });
  }
  for (const [chunk, bm] of bitmapOf) {
    const at = await newPlace();
    await src.write(at, bm);
    await setBatEntry(src, plan, bitmapBatIndex(g, chunk), { state: BitmapState.PRESENT, fileOffsetMB: at / MiB });
  }
  const at = (o: number): ModelByte => {
    const b = Math.floor(o / MiB);
    const spec = blocks.get(b) ?? (fixed ? { state: P.FULLY_PRESENT, place: plan.payloadOffset + b * MiB, bits: null } : { state: P.NOT_PRESENT, place: 0, bits: null });
    const data: ModelByte = { kind: 'data', fileOffset: spec.place + (o - b * MiB), stored: true };
    if (spec.state === P.FULLY_PRESENT) return data;
    if (spec.state === P.PARTIALLY_PRESENT) return spec.bits![Math.floor((o - b * MiB) / lss)] ? data : { kind: 'parent', stored: false };
    if (spec.state === P.NOT_PRESENT) return diff ? { kind: 'parent', stored: false } : { kind: 'unallocated', stored: fixed };
    return { kind: 'zero', stored: fixed };
  };
  const layout = await openLayout(src);
  return { src, layout, size, C, lss, at, blocks };
}

/** Ranges crossing block, sector and chunk boundaries, at the disk's start, the chunk boundary and its end. */
type Disk = Awaited<ReturnType<typeof build>>;
type Range = [offset: number, length: number];

function ranges({ size, C, lss }: Pick<Disk, 'size' | 'C' | 'lss'>, seed: number): Range[] {
  const out: Range[] = [];
  const random = rng(seed);
  for (const base of [0, (C - 4) * MiB, C * MiB - 2 * MiB, size - 3 * MiB]) {
    for (let k = 0; k < 24; k++) {
      const offset = Math.min(size - 1, base + random(5 * MiB));
      const length = 1 + random(k % 3 === 0 ? 3 * MiB : k % 3 === 1 ? 2 * lss : 64 * 1024);
      out.push([offset, Math.min(length, size - offset)]);
    }
  }
  // Exactly across the chunk boundary, whole blocks, a sector, the last byte.
  out.push([C * MiB - 700, 1400], [C * MiB - MiB, 2 * MiB], [(C - 1) * MiB, MiB], [6 * MiB, 2 * MiB], [8 * MiB + lss, lss], [size - 1, 1], [0, size]);
  return out;
}

function mergeable(a: Run, b: Run): boolean {
  return a.kind === b.kind && a.stored === b.stored && a.offset + a.length === b.offset && (a.kind !== 'data' || a.fileOffset + a.length === b.fileOffset);
}

/** Check `runs` of [offset, offset + length) against the model; a message or null. */
function checkRuns(d: Pick<Disk, 'size' | 'lss' | 'at'>, runs: readonly Run[], offset: number, length: number): string | null {
  const end = offset + length;
  let pos = offset;
  for (let i = 0; i < runs.length; i++) {
    const r = runs[i]!;
    const rEnd = r.offset + r.length;
    if (r.offset !== pos || !(r.length > 0)) return `run ${i} at ${r.offset}+${r.length} where ${pos} was expected`;
    if (i > 0 && mergeable(runs[i - 1]!, r)) return `runs ${i - 1} and ${i} are not merged`;
    if (rEnd > end) {
      if (i !== runs.length - 1) return `run ${i} ends past the range but is not the last`;
      if (r.kind === 'parent') return 'a parent run ends past the range';
      if (Math.floor((rEnd - 1) / MiB) !== Math.floor((end - 1) / MiB)) return `the last run ends past the range's last block (${rEnd})`;
    }
    if (r.kind !== 'data' && r.fileOffset !== -1) return `a ${r.kind} run has file offset ${r.fileOffset}`;
    // Every sector the run covers (clipped to the disk), by its first byte in the run.
    for (let p = r.offset; p < Math.min(rEnd, d.size); p = (Math.floor(p / d.lss) + 1) * d.lss) {
      const m = d.at(p);
      if (m.kind !== r.kind || m.stored !== r.stored || (m.kind === 'data' && m.fileOffset !== r.fileOffset + (p - r.offset))) {
        return `byte ${p}: the run says ${r.kind}${r.kind === 'data' ? `@${r.fileOffset + (p - r.offset)}` : ''} stored=${r.stored}, the model ${m.kind}${m.kind === 'data' ? `@${m.fileOffset}` : ''} stored=${m.stored}`;
      }
    }
    pos = rEnd;
  }
  return pos >= end ? null : `the runs end at ${pos}, before ${end}`;
}

/** What fastLookup must say of a range inside one block, its BAT page cached. */
function wantLookup(d: Pick<Disk, 'blocks' | 'at'>, offset: number, length: number): number {
  const b = Math.floor(offset / MiB);
  if (Math.floor((offset + length - 1) / MiB) !== b) return LOOKUP_MISS;
  const spec = d.blocks.get(b);
  if (spec?.state === P.PARTIALLY_PRESENT) return LOOKUP_MISS;
  const m = d.at(offset);
  return m.kind === 'data' ? m.fileOffset : m.kind === 'parent' ? LOOKUP_PARENT : LOOKUP_ZERO;
}

for (const type of ['dynamic', 'fixed', 'differencing'] as const) {
  for (const lss of [512, 4096] as const) {
    test(`the mapping of a ${type} disk with ${lss}-byte sectors agrees with the model in every block state, across blocks, sectors and chunks`, async () => {
      const d = await build({ lss, type });
      const map = new BlockMap(d.layout);
      const list = ranges(d, lss * 31 + type.length);
      for (const [offset, length] of list) {
        const runs = await map.runs(offset, length);
        const m = checkRuns(d, runs, offset, length);
        assert.equal(m, null, `${type}/${lss}, [${offset}, +${length}): ${m}\n${JSON.stringify(runs.slice(0, 8))}`);
        if (length <= MiB) assert.equal(map.fastLookup(offset, length), wantLookup(d, offset, length), `fastLookup of [${offset}, +${length})`);
        assert.ok(!runs.some((r) => r.kind === 'parent') || type === 'differencing', 'a disk without a parent yields no parent run');
      }
      if (type === 'differencing') return;
      // The image reads and reports block status by the same model.
      const img = await VhdxImage.open(d.src);
      for (const [offset, length] of list.filter(([, n]) => n <= 4 * MiB)) {
        const got = new Uint8Array(length);
        await img.read(offset, got);
        const want = new Uint8Array(length);
        for (let p = offset; p < offset + length; ) {
          const n = Math.min(offset + length, (Math.floor(p / lss) + 1) * lss) - p;
          const m = d.at(p);
          if (m.kind === 'data') await d.src.read(m.fileOffset, want.subarray(p - offset, p - offset + n));
          p += n;
        }
        assert.ok(bytesEqual(got, want), `${type}/${lss}: read of [${offset}, +${length})`);
        const runs = await map.runs(offset, length);
        const extents = await img.blockStatus(offset, length);
        assert.deepEqual(
          extents,
          runs.map((r) => ({ offset: r.offset, length: r.length, type: r.kind, ...(r.kind === 'data' ? { fileOffset: r.fileOffset } : r.stored ? { stored: true } : {}) })),
          `${type}/${lss}: block status of [${offset}, +${length})`,
        );
      }
      await img.close();
    });
  }
}

// A differencing disk grown past its parent (resize): what would show the parent past the
// parent's end is a zero run (not stored). The parent ends inside a partially present block (8),
// so the cut falls between a block's sectors, and inside the chunk's run of NOT_PRESENT blocks.
for (const lss of [512, 4096] as const) {
  test(`the mapping of a differencing disk with ${lss}-byte sectors larger than its parent shows zeros past the parent's end`, async () => {
    const d = await build({ lss, type: 'differencing' });
    for (const parentEnd of [8 * MiB + 5 * lss, 20 * MiB]) {
      const map = new BlockMap(d.layout, {}, parentEnd);
      assert.equal(map.parentEnd, parentEnd);
      const model = { ...d, at: (o: number): ModelByte => (o >= parentEnd && d.at(o).kind === 'parent' ? { kind: 'zero', stored: false } : d.at(o)) };
      const list: Range[] = [...ranges(d, lss * 7), [parentEnd - lss, 2 * lss], [parentEnd - 100, 200], [Math.floor(parentEnd / MiB) * MiB, MiB]];
      for (const [offset, length] of list) {
        const runs = await map.runs(offset, length);
        const m = checkRuns(model, runs, offset, length);
        assert.equal(m, null, `parent end ${parentEnd}, [${offset}, +${length}): ${m}\n${JSON.stringify(runs.slice(0, 8))}`);
        if (length <= MiB) assert.equal(map.fastLookup(offset, length), wantLookup(model, offset, length), `fastLookup of [${offset}, +${length})`);
      }
    }
  });
}
