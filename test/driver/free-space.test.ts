// Freed space reused (src/driver/free-space.ts and the allocation side of src/driver/writer.ts):
// discard-and-rewrite cycles keep the file's size, a reused place never shows what was there
// before, places are found again after a reopen, a claim that overlaps live data is never
// reused, space a crash left after the last object is reused, close leaves no leak and ends
// the file at its last object, and the caps on the in-memory record hold.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, commitChild, type OpenOptions, type RandomAccessSource, type WritableSource } from '../../src/index.js';
import { FaultySource } from '../../src/testing.js';
import { planLayout, writeNewImage, setBatEntry, type LayoutOptions } from '../../src/driver/layout.js';
import { PayloadState, payloadBatIndex } from '../../src/format/bat.js';
import { checkImage } from '../../src/driver/check.js';
import { checkInvariants } from '../helpers/invariants.js';
import { pattern } from '../helpers/model.js';
import { readPayloadEntry } from '../helpers/build.js';
import { makeBase, makeChild } from '../helpers/chain.js';
import type { VhdxError } from '../../src/errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const B = (n: number): number => n * MiB;

async function newDisk(layout: LayoutOptions) {
  const plan = planLayout({ blockSize: MiB, ...layout });
  const mem = new MemorySource();
  await writeNewImage(mem, plan);
  return { plan, disk: new FaultySource(mem.bytes().slice(), { trace: true }) };
}

const open = (disk: RandomAccessSource, opts: OpenOptions = {}): Promise<VhdxImage> => VhdxImage.open(disk, { readOnly: false, ...opts });


async function readBack(img: VhdxImage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

/** The image is sound, names all its space and ends at its last object. */
async function assertTidy(disk: FaultySource, what: string): Promise<void> {
  assert.deepEqual(await checkInvariants(disk, { noLeaks: true }), [], what);
  const r = await checkImage(disk);
  assert.equal(r.imageEndOffset, disk.size, `${what}: the file ends at its last object`);
}

test('five discard-and-rewrite rounds of an 8 MiB disk do not grow the file (issue 11 saw 44 MiB)', async (t) => {
  for (const [blockSize, sessions] of <[number, boolean][]>[
    [MiB, true],
    [MiB, false],
    [32 * MiB, true],
  ]) {
    const { plan, disk } = await newDisk({ virtualSize: B(8), blockSize });
    const sizes: number[] = [];
    let img = await open(disk);
    for (let round = 0; round < 5; round++) {
      await img.write(0, pattern(round, B(8)));
      if (sessions) {
        await img.close();
        img = await open(disk);
      } else await img.flush();
      sizes.push(disk.size);
      await img.discard(0, B(8));
      if (sessions) {
        await img.close();
        img = await open(disk);
      } else await img.flush();
    }
    await img.write(0, pattern(9, B(8)));
    await img.close();
    const full = plan.fileSize + Math.ceil(B(8) / blockSize) * blockSize;
    t.diagnostic(`${blockSize / MiB} MiB blocks, ${sessions ? 'a session per step' : 'one session'}: file after each write ${sizes.map((s) => s / MiB).join(', ')} MiB; at the end ${disk.size / MiB} MiB`);
    assert.deepEqual(sizes, Array(5).fill(full), 'every round fits in the space of the first');
    assert.equal(disk.size, full);
    const ro = await VhdxImage.open(disk);
    assert.deepEqual(await readBack(ro, 0, B(8)), pattern(9, B(8)));
    await ro.close();
    await assertTidy(disk, `${blockSize / MiB} MiB blocks`);
  }
});

test('a reused place reads as zeros wherever the new write does not reach, and keeps the old owner from it', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(16) });
  let img = await open(disk);
  for (const b of [0, 1, 2]) await img.write(B(b), pattern(b + 1, MiB));
  await img.close();
  const place1 = (await readPayloadEntry(disk, plan, 1)).fileOffsetMB;
  img = await open(disk);
  await img.discard(B(1), MiB);
  await img.flush();
  // Block 1 keeps naming its place (UNMAPPED), so nothing leaks.
  assert.deepEqual(await readPayloadEntry(disk, plan, 1), { state: PayloadState.UNMAPPED, fileOffsetMB: place1 });
  // A small write into a new block takes that place, zeros around it.
  await img.write(B(9) + 5000, pattern(7, 3000));
  await img.flush();
  assert.deepEqual(await readPayloadEntry(disk, plan, 9), { state: PayloadState.FULLY_PRESENT, fileOffsetMB: place1 });
  assert.deepEqual(await readPayloadEntry(disk, plan, 1), { state: PayloadState.UNMAPPED, fileOffsetMB: 0 }, 'the old owner gave it up');
  const got = await readBack(img, B(9), MiB);
  assert.ok(isZero(got.subarray(0, 5000)) && isZero(got.subarray(8000)), 'the discarded data is gone');
  assert.deepEqual(got.subarray(5000, 8000), pattern(7, 3000));
  assert.ok(isZero(await readBack(img, B(1), MiB)));
  await img.close();
  await assertTidy(disk, 'after reuse');
});

test('a block written again goes back to its own place: the claim is reused, not leaked', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(8) });
  let img = await open(disk);
  for (const b of [0, 1, 2, 3]) await img.write(B(b), pattern(b + 1, MiB));
  await img.discard(B(1), B(2));
  await img.close();
  const before = disk.size;
  const claim = (await readPayloadEntry(disk, plan, 2)).fileOffsetMB;
  assert.notEqual(claim, 0);
  img = await open(disk);
  await img.write(B(2) + 100, pattern(8, 100));
  await img.close();
  assert.equal((await readPayloadEntry(disk, plan, 2)).fileOffsetMB, claim);
  assert.equal(disk.size, before);
  const ro = await VhdxImage.open(disk);
  const got = await readBack(ro, B(2), MiB);
  assert.ok(isZero(got.subarray(0, 100)) && isZero(got.subarray(200)));
  await ro.close();
  await assertTidy(disk, 'own place');
});

test('write-zeroes: the freed place is reused; unreused, close gives it back zeroed as a claim (no leak)', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(8) });
  let img = await open(disk);
  for (const b of [0, 1, 2, 3]) await img.write(B(b), pattern(b + 1, MiB));
  await img.close();
  const size = disk.size;
  const place1 = (await readPayloadEntry(disk, plan, 1)).fileOffsetMB;
  img = await open(disk);
  await img.writeZeroes(B(1), MiB);
  await img.close();
  assert.equal(disk.size, size);
  // ZERO may not name a place: close zeroed it and made block 1 an UNMAPPED claim on it.
  assert.deepEqual(await readPayloadEntry(disk, plan, 1), { state: PayloadState.UNMAPPED, fileOffsetMB: place1 });
  const raw = new Uint8Array(MiB);
  await disk.read(place1 * MiB, raw);
  assert.ok(isZero(raw), 'the place holds zeros: every reader reads zeros there');
  await assertTidy(disk, 'zeroed block inside the file');

  // The last block zeroed: its place is cut off at close.
  img = await open(disk);
  await img.writeZeroes(B(3), MiB);
  await img.close();
  assert.equal(disk.size, size - MiB);
  await assertTidy(disk, 'zeroed last block');

  // Within one session: block 6 takes block 1's claim (the lowest free place); block 7 then
  // finds only block 0's place, freed but not committed: the zeroing is committed first.
  img = await open(disk);
  const place0 = (await readPayloadEntry(disk, plan, 0)).fileOffsetMB;
  await img.writeZeroes(B(0), MiB);
  await img.write(B(6), pattern(6, 4096));
  const commits = disk.counts.flushes;
  await img.write(B(7), pattern(7, 4096));
  assert.ok(disk.counts.flushes > commits, 'a commit came first');
  await img.flush();
  assert.deepEqual(await readPayloadEntry(disk, plan, 6), { state: PayloadState.FULLY_PRESENT, fileOffsetMB: place1 });
  assert.deepEqual(await readPayloadEntry(disk, plan, 7), { state: PayloadState.FULLY_PRESENT, fileOffsetMB: place0 });
  for (const b of [6, 7]) assert.ok(isZero((await readBack(img, B(b), MiB)).subarray(4096)));
  await img.close();
  assert.equal(disk.size, size - MiB);
  await assertTidy(disk, 'zeroed places reused');
});

test('places freed by discard are found again after a reopen, lowest first', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(64) });
  let img = await open(disk);
  for (let b = 0; b < 10; b++) await img.write(B(b), pattern(b + 1, 4096));
  await img.discard(B(2), B(3)); // blocks 2, 3, 4 inside the file
  await img.close();
  const places = await Promise.all([2, 3, 4].map(async (b) => (await readPayloadEntry(disk, plan, b)).fileOffsetMB));
  const size = disk.size;
  img = await open(disk);
  for (const b of [40, 41, 42, 43]) await img.write(B(b) + 512, pattern(b, 512));
  await img.close();
  const got = await Promise.all([40, 41, 42].map(async (b) => (await readPayloadEntry(disk, plan, b)).fileOffsetMB));
  assert.deepEqual(got, [...places].sort((a, b) => a - b));
  assert.equal(disk.size, size + MiB, 'only the fourth block grew the file');
  await assertTidy(disk, 'after the reopen');
});

test('a claim whose place another block uses (a damaged or foreign image) is never reused', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(16) });
  let img = await open(disk);
  for (const b of [0, 1]) await img.write(B(b), pattern(b + 1, MiB));
  await img.close();
  const place1 = (await readPayloadEntry(disk, plan, 1)).fileOffsetMB;
  // Block 5: UNMAPPED, naming block 1's live place.
  await setBatEntry(disk, plan, payloadBatIndex(plan.geometry, 5), { state: PayloadState.UNMAPPED, fileOffsetMB: place1 });
  img = await open(disk);
  await img.write(B(8), pattern(8, 4096));
  await img.close();
  assert.notEqual((await readPayloadEntry(disk, plan, 8)).fileOffsetMB, place1);
  const ro = await VhdxImage.open(disk);
  assert.deepEqual(await readBack(ro, B(1), MiB), pattern(2, MiB), 'block 1 is intact');
  await ro.close();
});

test('space a crash left after the last object is reused, zeroed first, and cut at close', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(16) });
  let img = await open(disk);
  await img.write(0, pattern(1, MiB));
  await img.close();
  const end = disk.size;
  // Three MiB of old bytes after the last object, as a crashed session's unrecorded blocks leave.
  await disk.write(end, new Uint8Array(B(3)).fill(0xee));
  img = await open(disk);
  await img.write(B(5) + 100, pattern(5, 100));
  await img.close();
  assert.equal((await readPayloadEntry(disk, plan, 5)).fileOffsetMB * MiB, end, 'the block took the first leaked MiB');
  assert.equal(disk.size, end + MiB, 'the rest was cut');
  const ro = await VhdxImage.open(disk);
  const got = await readBack(ro, B(5), MiB);
  assert.ok(isZero(got.subarray(0, 100)) && isZero(got.subarray(200)), 'no old byte shows');
  await ro.close();
  await assertTidy(disk, 'after reusing leaked space');
});

test('the record is bounded: past the unowned cap write-zeroes writes zeros and keeps the block; past the count cap a claim just stays on disk', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(16) });
  let img = await open(disk);
  for (let b = 0; b < 8; b++) await img.write(B(b), pattern(b + 1, MiB));
  await img.close();
  img = await open(disk, { maxUnownedFreeBytes: B(2), maxFreeBlocks: 3 });
  await img.writeZeroes(B(1), B(3)); // blocks 1 and 2 recorded; block 3 zeroed in place
  await assert.rejects(img.writeZeroes(B(4), MiB, { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP', 'fast zero would write data');
  assert.equal((await readPayloadEntry(disk, plan, 3)).state, PayloadState.FULLY_PRESENT);
  assert.ok(isZero(await readBack(img, B(3), MiB)));
  await img.discard(B(5), B(2)); // one more record fits; block 6's claim is only on disk
  await img.close();
  for (const b of [1, 2, 5, 6]) assert.equal((await readPayloadEntry(disk, plan, b)).state, PayloadState.UNMAPPED, `block ${b}`);
  await assertTidy(disk, 'capped record');
  const ro = await VhdxImage.open(disk);
  for (let b = 1; b < 7; b++) if (b !== 4) assert.ok(isZero(await readBack(ro, B(b), MiB)), `block ${b} reads zeros`);
  assert.deepEqual(await readBack(ro, B(4), MiB), pattern(5, MiB));
  await ro.close();
});

test('a fast zero over more whole blocks than the record can take fails before it changes any', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(16) });
  let img = await open(disk);
  for (let b = 0; b < 6; b++) await img.write(B(b), pattern(b + 1, MiB));
  await img.close();
  img = await open(disk, { maxUnownedFreeBytes: B(2) });
  // Blocks 0-3: four places to give up, room for two. Without the check, blocks 0 and 1 changed
  // state before block 2 failed (ENOTSUP mid-request).
  await assert.rejects(img.writeZeroes(0, B(4), { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP' && /record of free space is full/.test(e.message));
  for (let b = 0; b < 4; b++) assert.deepEqual(await readBack(img, B(b), MiB), pattern(b + 1, MiB), `block ${b} untouched`);
  await img.writeZeroes(0, B(2), { fast: true }); // what fits still works
  await img.close();
  // Close gives the two places back as UNMAPPED claims (see the writer's contract).
  for (const b of [0, 1]) assert.notEqual((await readPayloadEntry(disk, plan, b)).state, PayloadState.FULLY_PRESENT, `block ${b}`);
  for (const b of [2, 3]) assert.equal((await readPayloadEntry(disk, plan, b)).state, PayloadState.FULLY_PRESENT, `block ${b}`);
  await assertTidy(disk, 'after the refused fast zero');
  const ro = await VhdxImage.open(disk);
  for (const b of [0, 1]) assert.ok(isZero(await readBack(ro, B(b), MiB)), `block ${b} reads zeros`);
  for (const b of [2, 3]) assert.deepEqual(await readBack(ro, B(b), MiB), pattern(b + 1, MiB), `block ${b} kept`);
  await ro.close();
});

test('a failed write into a reused place leaves the entry as it was, and the place free', async () => {
  const { plan, disk } = await newDisk({ virtualSize: B(16) });
  let img = await open(disk);
  for (const b of [0, 1, 2]) await img.write(B(b), pattern(b + 1, MiB));
  await img.discard(B(1), MiB);
  await img.close();
  const place1 = (await readPayloadEntry(disk, plan, 1)).fileOffsetMB;
  // The same disk, with writes at one offset failing while `failing` is set.
  let failing = true;
  const flaky: WritableSource = {
    get size() {
      return disk.size;
    },
    readOnly: false,
    read: (o: number, b: Uint8Array) => disk.read(o, b),
    write: (o: number, d: Uint8Array) => (failing && o === place1 * MiB + 4096 ? Promise.reject(Object.assign(new Error('injected EIO'), { code: 'EIO' })) : disk.write(o, d)),
    truncate: (n: number) => disk.truncate(n),
    flush: () => disk.flush(),
    close: () => disk.close(),
  };
  img = await open(flaky);
  await assert.rejects(img.write(B(7) + 4096, pattern(7, 4096)), /injected EIO/);
  failing = false;
  assert.equal((await readBack(img, B(7), 8192)).every((x) => x === 0), true, 'block 7 still reads as zeros');
  await img.write(B(9), pattern(9, 4096));
  await img.close();
  assert.equal((await readPayloadEntry(disk, plan, 7)).state, PayloadState.NOT_PRESENT);
  assert.equal((await readPayloadEntry(disk, plan, 9)).fileOffsetMB, place1, 'the place went to the next allocation');
  await assertTidy(disk, 'after a failed write');
});

test('a commit split over several log entries keeps a reused claim\'s release and its new owner in one', async () => {
  // 512 entries per BAT sector (1 MiB blocks, 512-byte sectors): one block per sector.
  const spread = 512;
  const { plan, disk } = await newDisk({ virtualSize: B(300 * spread) });
  let img = await open(disk);
  await img.write(0, pattern(1, 4096));
  await img.write(B(spread), pattern(2, 4096));
  await img.discard(0, MiB); // block 0 keeps its place as a claim (BAT sector 0)
  await img.close();
  const claim = (await readPayloadEntry(disk, plan, 0)).fileOffsetMB;
  assert.notEqual(claim, 0);
  img = await open(disk);
  const mark = disk.trace!.length;
  // A write far away takes the claim (two BAT sectors linked), then one write-zeroes changes
  // about 200 more sectors (ZERO blocks, no allocation): more than one log entry holds.
  await img.write(B(250 * spread) + 512, pattern(250, 512));
  await img.writeZeroes(B(2 * spread), B(198 * spread));
  await img.flush();
  assert.equal((await readPayloadEntry(disk, plan, 250 * spread)).fileOffsetMB, claim, 'the claim was reused');
  assert.deepEqual(await readPayloadEntry(disk, plan, 0), { state: PayloadState.UNMAPPED, fileOffsetMB: 0 });
  // BAT sectors written in place between two flushes came from one log entry.
  const groups: number[][] = [];
  for (const op of disk.trace!.slice(mark)) {
    if (op.kind === 'flush') groups.push([]);
    else if (op.kind === 'write' && op.offset >= plan.bat.offset && op.offset < plan.bat.offset + plan.bat.length) groups[groups.length - 1]!.push((op.offset - plan.bat.offset) / 4096);
  }
  const applied = groups.filter((g) => g.length > 0);
  assert.ok(applied.length >= 2, `the commit took ${applied.length} log entries`);
  const sectorOf = (block: number): number => Math.floor(payloadBatIndex(plan.geometry, block) / 512);
  const withOld = applied.find((g) => g.includes(sectorOf(0)));
  assert.ok(withOld?.includes(sectorOf(250 * spread)), `sectors ${sectorOf(0)} and ${sectorOf(250 * spread)} in one entry: ${JSON.stringify(applied.map((g) => g.length))}`);
  await img.close();
  await assertTidy(disk, 'after the split commit');
});

test('commit frees the parent\'s blocks the child zeroed: the parent closes with no leak and reuses them', async () => {
  const { src: psrc, model } = await makeBase({ size: B(8), fill: [{ kind: 'data', offset: 0, length: B(6) }] });
  const sizeBefore = psrc.size;
  const p = await VhdxImage.open(psrc);
  const csrc = await makeChild(p, { blockSize: MiB });
  await p.close();
  const chain = () => VhdxImage.open(csrc, { readOnly: false, parent: () => VhdxImage.open(psrc, { readOnly: false }) });
  const c = await chain();
  // Blocks 0 and 1 discarded and zeroed, 3 and 4 zeroed (the last places in the parent's file),
  // block 5 (zeros in the parent, which holds no place for it) written.
  await c.discard(B(0), MiB);
  await c.writeZeroes(B(1), MiB);
  await c.writeZeroes(B(3), B(2));
  await c.write(B(5) + 10, pattern(5, 100));
  model.zero(B(0), B(2));
  model.zero(B(3), B(2));
  model.write(B(5) + 10, pattern(5, 100));
  await commitChild(c);
  await c.close();
  // Block 5 took block 0's place (the lowest, once its zeroing was committed); blocks 3 and 4's
  // places were cut off the end; block 1's, inside the file, was given back zeroed as a claim.
  const afterCommit = psrc.size;
  assert.equal(afterCommit, sizeBefore - B(2), 'the parent shrank by the two places at its end');
  assert.deepEqual(await checkInvariants(psrc, { noLeaks: true }), [], 'the parent names all its space');
  // The blocks the commit zeroed are claims the parent's next allocations take.
  const parent = await VhdxImage.open(psrc, { readOnly: false });
  await parent.write(B(7), pattern(7, 4096));
  model.write(B(7), pattern(7, 4096));
  await parent.close();
  assert.equal(psrc.size, afterCommit, 'block 7 took a freed place inside the file');
  assert.deepEqual(await checkInvariants(psrc, { noLeaks: true }), []);
  const ro = await VhdxImage.open(psrc);
  const got = await readBack(ro, 0, B(8));
  const want = new Uint8Array(B(8));
  model.read(0, want);
  assert.ok(Buffer.from(got).equals(Buffer.from(want)), 'the parent reads as the chain did, and block 7');
  await ro.close();
});

test('FreeBlocks: lowest durable first, own place by block, trailing run, both caps', async () => {
  const { FreeBlocks } = await import('../../src/driver/free-space.js');
  const f = new FreeBlocks(MiB, 4, 2 * MiB);
  const rec = (mb: number, block: number, owned: boolean, durable = true) => ({ fileOffset: mb * MiB, block, owned, durable });
  assert.equal(f.add(rec(9, 1, true)), true);
  assert.equal(f.add(rec(5, 2, false, false)), true);
  assert.equal(f.add(rec(7, 3, false)), true);
  assert.equal(f.add(rec(8, 4, false)), false, 'a third unowned MiB is past the 2 MiB cap');
  assert.equal(f.add(rec(6, 1, true)), false, 'one record per block');
  assert.equal(f.add(rec(8, 5, true)), true);
  assert.equal(f.add(rec(3, 6, true)), false, 'the count cap');
  assert.equal(f.of(2)?.fileOffset, 5 * MiB);
  assert.equal(f.hasPending(), true);
  assert.equal(f.takeLowest()?.fileOffset, 7 * MiB, 'the place at 5 MiB waits for its commit');
  f.markDurable();
  assert.equal(f.hasPending(), false);
  // 8 and 9 end the space before 10 MiB; 5 does not touch them.
  assert.deepEqual(f.takeTrailing(10 * MiB).map((b) => b.fileOffset / MiB), [9, 8]);
  assert.deepEqual(f.all().map((b) => b.fileOffset / MiB), [5]);
  assert.equal(f.unownedBytes, MiB);
});
