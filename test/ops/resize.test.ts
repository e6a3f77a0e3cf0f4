// Resize in place (src/ops/resize.ts): power loss at every write and flush of a grow that
// extends the BAT region (blocks moved out of its way, one log entry with both region tables and
// the size) and of a shrink (GPT backup moved, size changed, blocks released and moved down, file
// cut) must leave the old disk or the new one, opening read-only and writable, with the kept
// range's bytes intact and the added range reading as zeros. Refusals change nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, resize, type RandomAccessSource, type VhdxError } from '../../src/index.js';
import { FaultySource, type CrashImageOptions } from '../../src/testing.js';
import { planLayout, writeNewImage, type LayoutOptions } from '../../src/driver/layout.js';
import { checkInvariants } from '../helpers/invariants.js';
import { pattern } from '../helpers/model.js';
import { needTool, run, scratch } from '../helpers/env.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** A new image in memory with `writes` ([offset, bytes]) written and closed: its bytes. */
/** Writes of a test: [offset, bytes]. */
type Writes = readonly (readonly [number, Uint8Array])[];

async function imageWith(layout: LayoutOptions, writes: Writes): Promise<Uint8Array> {
  const mem = new MemorySource();
  await writeNewImage(mem, planLayout(layout));
  const img = await VhdxImage.open(mem, { readOnly: false });
  for (const [at, data] of writes) await img.write(at, data);
  await img.close();
  return mem.bytes().slice();
}

async function readAt(img: VhdxImage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

/** The post-crash image reads as the old disk or the new one; returns which size it has. */
/** What a resize should leave: the old size or the new one, with `writes` intact. */
interface Expect {
  oldSize: number;
  newSize: number;
  writes: Writes;
}

async function assertOldOrNew(src: RandomAccessSource, { oldSize, newSize, writes, what }: Expect & { what: string }): Promise<number> {
  const ro = await VhdxImage.open(src, { readOnly: true });
  const size = ro.size;
  assert.ok(size === oldSize || size === newSize, `${what}: size ${size} is neither ${oldSize} nor ${newSize}`);
  for (const [at, data] of writes) {
    if (at + data.length > size) continue;
    assert.ok(Buffer.from(await readAt(ro, at, data.length)).equals(Buffer.from(data)), `${what}: data at ${at} intact (size ${size})`);
  }
  if (size > oldSize) {
    for (const at of [oldSize, size - MiB]) assert.ok((await readAt(ro, at, MiB)).every((x) => x === 0), `${what}: added range reads zeros at ${at}`);
  }
  await ro.close();
  const rw = await VhdxImage.open(src, { readOnly: false });
  assert.equal(rw.size, size, `${what}: the writable open agrees`);
  await rw.close();
  const findings = await checkInvariants(src);
  assert.deepEqual(findings, [], `${what}: ${findings.join('; ')}`);
  return size;
}

/** Run `work` on a FaultySource over `bytes` dying at each mutation in turn; check every crash image. */
async function powerLossSweep(bytes: Uint8Array, work: (src: FaultySource) => Promise<void>, expect: Expect): Promise<void> {
  const dry = new FaultySource(bytes, { writeCache: true });
  await work(dry);
  const total = dry.mutations;
  assert.ok(total > 10, `the operation issues ${total} writes and flushes`);
  const seen = new Set<number>();
  for (let n = 1; n <= total; n++) {
    const dying = new FaultySource(bytes, { crashAt: n });
    await assert.rejects(work(dying), `crash at ${n}`);
    // Nothing pending lands, or a random part with one write torn ('all pending land' is left
    // out to keep the suite lean: the random subsets and the no-crash run cover landing writes).
    const variants: CrashImageOptions[] = [{ keep: 'none' }, { keep: 'random', seed: n, tear: true }];
    for (const v of variants) seen.add(await assertOldOrNew(dying.crashImage(v), { ...expect, what: `crash at ${n}/${total} ${JSON.stringify(v)}` }));
  }
  // Both outcomes happen across the sweep: the test would notice a resize that never lands.
  assert.deepEqual([...seen].sort(), [expect.oldSize, expect.newSize].sort());
  const done = await assertOldOrNew(dry, { ...expect, what: 'no crash' });
  assert.equal(done, expect.newSize);
}

// 1 MiB blocks: a 64 MiB disk's BAT region is 1 MiB; at 130 GiB it needs 2 MiB, so the blocks
// right after the region (the first written) move to the end before it grows in place.
const GROW: { layout: LayoutOptions & { virtualSize: number }; writes: Writes; newSize: number } = {
  layout: { virtualSize: 64 * MiB, blockSize: MiB, logicalSectorSize: 512 },
  writes: [
    [0, pattern(1, 2 * MiB)],
    [5 * MiB + 100, pattern(2, 5000)],
    [63 * MiB, pattern(3, MiB)],
  ],
  newSize: 130 * GiB,
};

test('power loss at every write and flush of a grow that extends the BAT region leaves the old disk or the new one', async () => {
  const bytes = await imageWith(GROW.layout, GROW.writes);
  const work = async (src: FaultySource) => {
    const img = await VhdxImage.open(src, { readOnly: false });
    const r = await resize(img, GROW.newSize);
    assert.equal(r.batGrowth, MiB);
    assert.ok(r.blocksMoved >= 1, `the block after the BAT moved (${r.blocksMoved})`);
    await r.image.close();
  };
  await powerLossSweep(bytes, work, { oldSize: GROW.layout.virtualSize, newSize: GROW.newSize, writes: GROW.writes });
});

// qemu-img's layout (and Hyper-V's .avhdx): log, BAT, then the metadata region right after the
// BAT. The BAT cannot grow in place: a larger one is written at the end of the file and one log
// entry switches both region table copies (and the size) to it.
test('power loss at every write and flush of a grow that relocates the BAT (metadata after it, qemu-img\'s layout) leaves the old disk or the new one', { skip: needTool('qemu-img') }, async () => {
  const dir = scratch('vhdx-resize-reloc-');
  const path = join(dir, 'q.vhdx');
  run('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', path, String(64 * MiB)]);
  const mem = new MemorySource(new Uint8Array(readFileSync(path)));
  const img = await VhdxImage.open(mem, { readOnly: false });
  const { batRegion, metadataRegion } = img.layout;
  assert.equal(metadataRegion.fileOffset, batRegion.fileOffset + batRegion.length, 'qemu-img puts the metadata right after the BAT');
  for (const [at, data] of GROW.writes) await img.write(at, data);
  await img.close();
  const bytes = mem.bytes().slice();
  const work = async (src: FaultySource) => {
    const r = await resize(await VhdxImage.open(src, { readOnly: false }), GROW.newSize);
    assert.equal(r.batGrowth, MiB);
    assert.equal(r.blocksMoved, 0, 'nothing moves: the BAT goes elsewhere');
    assert.ok(r.image.layout.batRegion.fileOffset >= bytes.length, `the BAT is at the old end of the file (${r.image.layout.batRegion.fileOffset})`);
    assert.equal(r.image.layout.batRegion.length, 2 * MiB);
    await r.image.close();
  };
  await powerLossSweep(bytes, work, { oldSize: 64 * MiB, newSize: GROW.newSize, writes: GROW.writes });
});

// A shrink that releases blocks past the new end, moves a kept block that sits high in the file
// down into a released place, and cuts the file.
const SHRINK: typeof GROW = {
  layout: { virtualSize: 48 * MiB, blockSize: MiB, logicalSectorSize: 512 },
  writes: [
    [40 * MiB, pattern(4, 3 * MiB)], // written first: low in the file, released by the shrink
    [0, pattern(5, MiB)],
    [20 * MiB + 4096, pattern(6, 8192)], // written last: high in the file, kept, moves down
  ],
  newSize: 24 * MiB + 512,
};

test('power loss at every write and flush of a shrink leaves the old disk or the new one, and a shrink cuts the file', async () => {
  const bytes = await imageWith(SHRINK.layout, SHRINK.writes);
  const work = async (src: FaultySource) => {
    const img = await VhdxImage.open(src, { readOnly: false });
    const r = await resize(img, SHRINK.newSize, { shrink: true, force: true });
    assert.ok(r.blocksMoved >= 1, `kept blocks moved down (${r.blocksMoved})`);
    await r.image.close();
  };
  const kept = SHRINK.writes.filter(([at]) => at < SHRINK.newSize);
  await powerLossSweep(bytes, work, { oldSize: SHRINK.layout.virtualSize, newSize: SHRINK.newSize, writes: kept });
  const mem = new MemorySource(bytes);
  const r = await resize(await VhdxImage.open(mem, { readOnly: false }), SHRINK.newSize, { shrink: true, force: true });
  await r.image.close();
  assert.ok(mem.size < bytes.length, `the file was cut (${bytes.length} -> ${mem.size})`);
  assert.deepEqual(await checkInvariants(mem, { noLeaks: true }), []);
});

test('a shrink without the shrink option, or through data, is refused and changes nothing', async () => {
  const bytes = await imageWith(SHRINK.layout, SHRINK.writes);
  const mem = new MemorySource(bytes.slice());
  const img = await VhdxImage.open(mem, { readOnly: false });
  await assert.rejects(resize(img, 32 * MiB), (e: VhdxError) => e.reason === 'SHRINK_NOT_ASKED' && /--shrink/.test(e.message));
  await assert.rejects(resize(img, 32 * MiB, { shrink: true }), (e: VhdxError) => e.reason === 'SHRINK_CUTS_DATA' && /43 ?\d*|need/.test(e.message));
  await assert.rejects(resize(img, 1000, { shrink: true }), (e: VhdxError) => e.reason === 'BAD_ARGUMENT');
  await img.close();
  assert.ok(Buffer.from(mem.bytes()).equals(Buffer.from(bytes)), 'the file is unchanged');
});

test('a fixed disk grows with its new blocks allocated and written, a 4096-byte-sector disk too', async () => {
  const layouts: LayoutOptions[] = [
    { virtualSize: 8 * MiB, blockSize: MiB, logicalSectorSize: 512, fixed: true },
    { virtualSize: 8 * MiB + 4096, blockSize: MiB, logicalSectorSize: 4096 },
  ];
  for (const layout of layouts) {
    const writes: Writes = [[layout.virtualSize - 4096, pattern(7, 4096)]];
    const mem = new MemorySource(await imageWith(layout, writes));
    const r = await resize(await VhdxImage.open(mem, { readOnly: false }), 20 * MiB);
    const st = await r.image.allocationStats();
    if (layout.fixed) assert.equal(st.allocatedBlocks, 20, 'every block of the fixed disk is allocated');
    await r.image.close();
    await assertOldOrNew(mem, { oldSize: layout.virtualSize, newSize: 20 * MiB, writes, what: JSON.stringify(layout) });
  }
});
