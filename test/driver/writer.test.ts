// src/driver/writer.ts (with headers.ts and log-writer.ts): the header update protocol, group
// commit, the log ring, allocation, zeroing and discard, fixed disks, read-only refusal, and
// replaying a dirty image in place. Images are made in memory with planLayout/writeNewImage and
// run on a FaultySource whose trace records every write, flush and truncate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemorySource, VhdxImage, type RandomAccessSource, type WritableSource } from '../../src/index.js';
import { FaultySource, type FaultyOp } from '../../src/testing.js';
import { planLayout, writeNewImage, type ImagePlan, type LayoutOptions } from '../../src/driver/layout.js';
import { HEADER } from '../../src/format/header.js';
import { PayloadState } from '../../src/format/bat.js';
import { parseLogEntry } from '../../src/format/log-entry.js';
import { corpusFile, corpusManifest, corpusDir } from '../helpers/env.js';
import { needCorpus } from '../helpers/corpus-prefix.js';
import { checkInvariants } from '../helpers/invariants.js';
import { pattern } from '../helpers/model.js';
import { buildImage, putBatEntry, readPayloadEntry } from '../helpers/build.js';
import type { VhdxError } from '../../src/errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const B = (n: number): number => n * MiB;
const NIL = '00000000-0000-0000-0000-000000000000';
const HEADER_SLOTS = [64 * KiB, 128 * KiB];

/** A new image on a tracing FaultySource. */
async function newImage(layout: LayoutOptions) {
  const plan = planLayout({ blockSize: MiB, ...layout });
  const mem = new MemorySource();
  await writeNewImage(mem, plan);
  const base = mem.bytes().slice();
  const disk = new FaultySource(base, { trace: true });
  return { plan, disk, base };
}

/** The operations `disk` recorded (it was made with `trace`). */
function traced(disk: FaultySource): FaultyOp[] {
  assert.ok(disk.trace, 'the disk records its operations');
  return disk.trace;
}

/** The bytes of a traced write. */
function dataOf(op: FaultyOp | undefined): Uint8Array {
  assert.ok(op?.data, 'a traced write carries its bytes');
  return op.data;
}

/** Where a traced write went. */
function region(plan: ImagePlan, op: FaultyOp): string {
  if (op.kind !== 'write') return op.kind;
  if (HEADER_SLOTS.includes(op.offset)) return 'header';
  if (op.offset >= plan.log.offset && op.offset < plan.log.offset + plan.log.length) return 'log';
  if (op.offset >= plan.bat.offset && op.offset < plan.bat.offset + plan.bat.length) return 'bat';
  if (op.offset >= plan.payloadOffset) return 'payload';
  return 'other';
}

/** The header a traced header write carries, with its slot. */
type Header = ReturnType<typeof HEADER.decode>;

function headerOf(op: FaultyOp) {
  return { ...HEADER.decode(dataOf(op)), slot: HEADER_SLOTS.indexOf(op.offset) + 1 };
}

/** Headers as they are in the file now: [slot 1, slot 2]. */
async function fileHeaders(src: RandomAccessSource): Promise<[Header, Header]> {
  const headerAt = async (at: number): Promise<Header> => {
    const b = new Uint8Array(4096);
    await src.read(at, b);
    return HEADER.decode(b);
  };
  return Promise.all([headerAt(HEADER_SLOTS[0]!), headerAt(HEADER_SLOTS[1]!)]);
}
const currentOf = ([a, b]: readonly [Header, Header]): Header => (a.sequenceNumber > b.sequenceNumber ? a : b);


async function readBack(img: VhdxImage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

test('header protocol: both slots updated in turn, sequence +1 per write, flushed each time', async () => {
  const { plan, disk } = await newImage({ virtualSize: B(64) });
  const before = await fileHeaders(disk);
  const img = await VhdxImage.open(disk, { readOnly: false });
  assert.equal(traced(disk).length, 0, 'a writable open writes nothing until the first change');
  await img.write(0, pattern(1, 4096));
  await img.write(B(5), pattern(2, 4096));
  await img.flush();
  await img.write(B(9) + 512, pattern(3, 512));
  await img.writeZeroes(B(5), MiB);
  await img.flush();
  await img.close();

  const trace = traced(disk);
  const headerWrites = trace.map((op, i) => ({ op, i })).filter(({ op }) => region(plan, op) === 'header');
  // Session start (2), LogGuid set at the first commit (2), LogGuid cleared at close (2).
  assert.equal(headerWrites.length, 6);
  let seq = currentOf(before).sequenceNumber;
  let slot = currentOf(before) === before[0] ? 1 : 2;
  for (const { op, i } of headerWrites) {
    const h = headerOf(op);
    assert.equal(h.sequenceNumber, seq + 1n, 'sequence number +1 per header write');
    assert.notEqual(h.slot, slot, 'written over the non-current slot');
    assert.equal(trace[i + 1]?.kind, 'flush', 'each header write is flushed before anything else');
    seq = h.sequenceNumber;
    slot = h.slot;
  }
  // Nothing but headers before the session's first two header writes.
  assert.equal(headerWrites[0]?.i, 0);
  assert.equal(headerWrites[1]?.i, 2);

  // FileWriteGuid and DataWriteGuid: new values once, at the session's start.
  const hs = headerWrites.map(({ op }) => headerOf(op));
  const first = hs[0]!;
  assert.notEqual(first.fileWriteGuid, currentOf(before).fileWriteGuid);
  assert.notEqual(first.dataWriteGuid, currentOf(before).dataWriteGuid);
  for (const h of hs) {
    assert.equal(h.fileWriteGuid, first.fileWriteGuid);
    assert.equal(h.dataWriteGuid, first.dataWriteGuid);
  }
  // LogGuid: clear at the start, set once an entry is in the log and flushed, cleared at close.
  assert.deepEqual(
    hs.map((h) => (h.logGuid === NIL ? 'clear' : 'set')),
    ['clear', 'clear', 'set', 'set', 'clear', 'clear'],
  );
  const setAt = headerWrites[2]!.i;
  const logBefore = trace.slice(0, setAt).map((op, i) => ({ op, i })).filter(({ op }) => region(plan, op) === 'log');
  assert.equal(logBefore.length, 1, 'one log entry written before LogGuid is set');
  const [logged] = logBefore;
  assert.ok(logged);
  assert.ok(trace.slice(logged.i + 1, setAt).some((op) => op.kind === 'flush'), 'and flushed');
  const entry = parseLogEntry(
    (() => {
      const ring = new Uint8Array(plan.log.length);
      ring.set(dataOf(logged.op), logged.op.offset - plan.log.offset);
      return ring;
    })(),
    logged.op.offset - plan.log.offset,
    hs[2]!.logGuid,
  );
  assert.ok(entry, 'the entry is valid for the LogGuid the header gets');
  // BAT sectors reach their place only after LogGuid is set.
  const firstBat = trace.findIndex((op) => region(plan, op) === 'bat');
  assert.ok(firstBat > headerWrites[3]!.i, 'BAT written in place only after LogGuid is in both headers');

  const after = await fileHeaders(disk);
  assert.equal(currentOf(after).logGuid, NIL, 'LogGuid clear after close');
  assert.equal(after[0].sequenceNumber + after[1].sequenceNumber, 2n * seq - 1n, 'the two slots hold the last two sequence numbers');
  assert.deepEqual(await checkInvariants(disk), []);

  // A second session: new FileWriteGuid and DataWriteGuid again.
  const img2 = await VhdxImage.open(disk, { readOnly: false });
  await img2.write(B(1), pattern(4, 4096));
  await img2.close();
  const again = currentOf(await fileHeaders(disk));
  assert.notEqual(again.fileWriteGuid, first.fileWriteGuid);
  assert.notEqual(again.dataWriteGuid, first.dataWriteGuid);
  assert.equal(again.logGuid, NIL);
});

test('a writable session without changes writes nothing', async () => {
  const { disk } = await newImage({ virtualSize: B(16) });
  const img = await VhdxImage.open(disk, { readOnly: false });
  await readBack(img, 0, MiB);
  await img.flush();
  await img.close();
  assert.equal(disk.counts.writes, 0);
  assert.equal(disk.counts.truncates, 0);
});

test('group commit: 512 allocations then one flush make one log entry', async () => {
  // 512 blocks whose BAT entries share one 4 KiB sector (C = 4096 > 512 at 512-byte sectors).
  const { plan, disk } = await newImage({ virtualSize: B(600) });
  const img = await VhdxImage.open(disk, { readOnly: false });
  await img.write(0, pattern(0, 512)); // session start out of the way
  await img.flush();
  const mark = traced(disk).length;
  const flushes = disk.counts.flushes;
  for (let b = 1; b < 513; b++) await img.write(B(b) + 1024, pattern(b, 1024));
  const mid = traced(disk).slice(mark);
  assert.equal(mid.filter((op) => op.kind === 'flush').length, 0, 'no flush before the caller asks');
  assert.equal(mid.filter((op) => region(plan, op) === 'log').length, 0, 'no log entry before the flush');
  assert.equal(mid.filter((op) => op.kind === 'truncate').length, 512, 'one file extension per block');
  await img.flush();
  const ops = traced(disk).slice(mark);
  const log = ops.filter((op) => region(plan, op) === 'log');
  assert.equal(log.length, 1, 'one log entry');
  assert.equal(ops.filter((op) => region(plan, op) === 'bat').length, 2, 'two BAT sectors applied (blocks 0..511 and 512)');
  // Payload flush, log flush, applied-BAT flush (LogGuid was set by the first commit).
  assert.equal(disk.counts.flushes - flushes, 3);
  assert.equal(ops.filter((op) => region(plan, op) === 'header').length, 0);
  for (const b of [1, 256, 511, 512]) assert.deepEqual(await readBack(img, B(b) + 1024, 1024), pattern(b, 1024));
  await img.close();
  assert.deepEqual(await checkInvariants(disk), []);
});

test('log ring: many commits wrap a 1 MiB log, and an entry split by the ring end replays', async () => {
  // One block per BAT sector (512 blocks apart), so commits carry many sectors: entries of up to
  // half the ring, the third of which wraps around its end.
  const spread = 512;
  const { plan, disk, base } = await newImage({ virtualSize: B(300 * spread) });
  let n = 0;
  const writeBlocks = async (img: VhdxImage, count: number): Promise<void> => {
    for (let k = 0; k < count; k++, n++) await img.write(B(n * spread) + 4096, pattern(n, 4096));
  };
  const scenario = async (src: RandomAccessSource): Promise<VhdxImage> => {
    n = 0;
    const img = await VhdxImage.open(src, { readOnly: false });
    await writeBlocks(img, 126);
    await img.flush();
    await writeBlocks(img, 126);
    await img.flush();
    await writeBlocks(img, 5);
    await img.flush();
    return img;
  };
  const img = await scenario(disk);
  const logGuid = img.header.logGuid;
  assert.notEqual(logGuid, NIL);
  const logWrites = traced(disk).filter((op) => region(plan, op) === 'log');
  // Entries of 127 sectors at 0 and 127 of the 256-sector ring, then one of 6 that wraps: written in two pieces.
  const ringEnd = plan.log.offset + plan.log.length;
  const split = logWrites.findIndex((op) => op.offset + dataOf(op).length === ringEnd && op.offset !== plan.log.offset);
  assert.ok(split >= 0, 'an entry reaches the end of the ring');
  assert.equal(logWrites[split + 1]?.offset, plan.log.offset, 'and continues at its start');
  const total = n;
  for (let b = 0; b < total; b++) assert.deepEqual(await readBack(img, B(b * spread) + 4096, 4096), pattern(b, 4096));

  // Power lost right after the wrapped entry was flushed, before its BAT sectors were applied:
  // the replay must come from the wrapped entry.
  const firstApply = traced(disk).find((op) => op.index > logWrites[split + 1]!.index && region(plan, op) === 'bat');
  assert.ok(firstApply, 'BAT sectors applied after the wrapped entry');
  const dying = new FaultySource(base, { crashAt: firstApply.index });
  await assert.rejects(scenario(dying), (e: VhdxError) => e.reason === 'IO_ERROR');
  const crashed = dying.crashImage({ keep: 'none' });
  const ro = await VhdxImage.open(crashed.clone());
  assert.equal(ro.layout.log.dirty, true);
  assert.equal(ro.layout.log.entries, 1);
  for (let b = 0; b < total; b++) assert.deepEqual(await readBack(ro, B(b * spread) + 4096, 4096), pattern(b, 4096), `block ${b * spread}`);
  const rw = await VhdxImage.open(crashed, { readOnly: false });
  for (let b = 0; b < total; b++) assert.deepEqual(await readBack(rw, B(b * spread) + 4096, 4096), pattern(b, 4096));
  await rw.close();
  assert.deepEqual(await checkInvariants(crashed), []);

  // Keep committing: one entry per FUA write, the ring wraps many times over.
  for (let k = 0; k < 300; k++) await img.write(B((k % total) * spread) + 8192, pattern(1000 + k, 512), { fua: k % 2 === 0 });
  await writeBlocks(img, 30);
  const last = n * spread; // blocks after the last one written, each its own commit
  for (let k = 0; k < 150; k++) {
    await img.write(B(last + k), pattern(2000 + k, 512));
    await img.flush();
  }
  const starts = traced(disk).filter((op) => region(plan, op) === 'log' && dataOf(op)[0] === 0x6c && dataOf(op)[3] === 0x65);
  assert.ok(starts.length >= 150, `${starts.length} log entries`);
  assert.ok(new Set(starts.map((op) => op.offset)).size < starts.length, 'entries reuse ring positions: the ring wrapped');
  await img.close();
  const reopened = await VhdxImage.open(disk);
  for (let b = 0; b < total; b++) assert.deepEqual(await readBack(reopened, B(b * spread) + 4096, 4096), pattern(b, 4096));
  for (let k = 0; k < 150; k++) assert.deepEqual(await readBack(reopened, B(last + k), 512), pattern(2000 + k, 512));
  assert.deepEqual(await checkInvariants(disk), []);
});

test('concurrent writes to one unallocated block allocate it once', async () => {
  const { plan, disk } = await newImage({ virtualSize: B(32) });
  const img = await VhdxImage.open(disk, { readOnly: false });
  const parts = Array.from({ length: 16 }, (_, k): [number, Uint8Array] => [B(3) + k * 64 * KiB + 100, pattern(k, 3000)]);
  // Also one write spanning blocks 3 and 4, and a flush in the middle of it all.
  await Promise.all([...parts.map(([at, d]) => img.write(at, d)), img.write(B(4) - 512, pattern(99, 1024)), img.flush()]);
  assert.equal(disk.counts.truncates, 2, 'blocks 3 and 4 each allocated once');
  for (const [at, d] of parts) assert.deepEqual(await readBack(img, at, d.length), d);
  assert.deepEqual(await readBack(img, B(4) - 512, 1024), pattern(99, 1024));
  const status = await img.blockStatus(0, img.size);
  assert.deepEqual(
    status.map((x) => [x.offset / MiB, x.length / MiB, x.type]),
    [
      [0, 3, 'unallocated'],
      [3, 2, 'data'],
      [5, 27, 'unallocated'],
    ],
  );
  await img.close();
  const e3 = await readPayloadEntry(disk, plan, 3);
  const e4 = await readPayloadEntry(disk, plan, 4);
  assert.equal(e3.state, PayloadState.FULLY_PRESENT);
  assert.equal(e4.state, PayloadState.FULLY_PRESENT);
  assert.notEqual(e3.fileOffsetMB, e4.fileOffsetMB);
  assert.deepEqual(await checkInvariants(disk), []);
});

test('write-zeroes of a whole block makes it ZERO without writing data; discard makes it UNMAPPED', async () => {
  const { plan, disk } = await newImage({ virtualSize: B(16) + 4096 }); // a short last block
  const img = await VhdxImage.open(disk, { readOnly: false });
  for (const b of [2, 3, 16]) await img.write(B(b), pattern(b, 4096));
  await img.flush();
  const mark = traced(disk).length;
  await img.writeZeroes(B(2), MiB);
  await img.discard(B(3), MiB);
  await img.writeZeroes(B(16), 4096); // the whole (short) last block
  await img.writeZeroes(B(5), 3 * MiB); // unallocated blocks become ZERO too
  assert.equal(traced(disk).length, mark, 'nothing written until the flush');
  for (const b of [2, 3, 16]) assert.deepEqual(await readBack(img, B(b), 4096), new Uint8Array(4096));
  const st = await img.blockStatus(B(2), B(2));
  assert.deepEqual(st.map((x) => x.type), ['zero']);
  await img.flush();
  const after = traced(disk).slice(mark);
  assert.equal(after.filter((op) => region(plan, op) === 'payload').length, 0, 'no payload written');
  assert.equal((await readPayloadEntry(disk, plan, 2)).state, PayloadState.ZERO);
  assert.equal((await readPayloadEntry(disk, plan, 3)).state, PayloadState.UNMAPPED);
  assert.equal((await readPayloadEntry(disk, plan, 16)).state, PayloadState.ZERO);
  for (const b of [5, 6, 7]) assert.equal((await readPayloadEntry(disk, plan, b)).state, PayloadState.ZERO);
  assert.equal((await readPayloadEntry(disk, plan, 2)).fileOffsetMB, 0);
  // Partial ranges of allocated blocks get zeros written in place; the block stays allocated.
  await img.write(B(9), pattern(9, MiB));
  await img.writeZeroes(B(9) + 4096, 8192);
  await img.discard(B(9) + 65536, 512);
  const got = await readBack(img, B(9), MiB);
  const want = pattern(9, MiB);
  want.fill(0, 4096, 4096 + 8192);
  want.fill(0, 65536, 65536 + 512);
  assert.deepEqual(got, want);
  // A ZERO block written again is allocated afresh, reading zeros around the new data.
  await img.write(B(2) + 100, pattern(7, 100));
  const re = await readBack(img, B(2), 4096);
  const reWant = new Uint8Array(4096);
  reWant.set(pattern(7, 100), 100);
  assert.deepEqual(re, reWant);
  await img.close();
  assert.equal((await readPayloadEntry(disk, plan, 9)).state, PayloadState.FULLY_PRESENT);
  assert.equal((await readPayloadEntry(disk, plan, 2)).state, PayloadState.FULLY_PRESENT);
  assert.deepEqual(await checkInvariants(disk), []);
});

test('fixed disks keep every block FULLY_PRESENT: zeroing and discard write zeros', async () => {
  const { plan, disk } = await newImage({ virtualSize: B(8), fixed: true, logicalSectorSize: 4096 });
  const img = await VhdxImage.open(disk, { readOnly: false });
  assert.equal(img.can.fastZero, false);
  const before = await Promise.all([0, 1, 2, 3].map((b) => readPayloadEntry(disk, plan, b)));
  await img.write(B(1), pattern(1, MiB));
  await img.write(B(2), pattern(2, MiB));
  await img.flush();
  const mark = disk.counts.bytesWritten;
  await img.writeZeroes(B(1), MiB);
  await img.discard(B(2), MiB);
  assert.equal(disk.counts.bytesWritten - mark, 2 * MiB, 'zeros written over both blocks');
  await img.close();
  assert.equal(disk.counts.truncates, 0, 'a fixed disk never grows');
  for (const b of [0, 1, 2, 3]) assert.deepEqual(await readPayloadEntry(disk, plan, b), before[b]);
  assert.equal(before[1]?.state, PayloadState.FULLY_PRESENT);
  const ro = await VhdxImage.open(disk);
  assert.deepEqual(await readBack(ro, B(1), 2 * MiB), new Uint8Array(2 * MiB));
  assert.deepEqual((await ro.blockStatus(0, ro.size)).map((x) => x.type), ['data']);
  // Fast zeroing cannot be honoured on a fixed disk.
  const rw = await VhdxImage.open(disk, { readOnly: false });
  await assert.rejects(rw.writeZeroes(B(3), MiB, { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP');
  await rw.close();
  assert.deepEqual(await checkInvariants(disk), []);
});

test('fast write-zeroes: whole blocks and unallocated ranges succeed, part of an allocated block is ENOTSUP', async () => {
  const { disk } = await newImage({ virtualSize: B(16) });
  const img = await VhdxImage.open(disk, { readOnly: false });
  assert.equal(img.can.fastZero, true);
  await img.write(B(1), pattern(1, MiB));
  await img.write(B(4), pattern(4, MiB));
  await img.writeZeroes(B(1), MiB, { fast: true });
  await img.writeZeroes(B(6) + 512, 4096, { fast: true }); // unallocated: nothing to write
  const writes = disk.counts.writes;
  await assert.rejects(img.writeZeroes(B(4) + 4096, 4096, { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP');
  assert.equal(disk.counts.writes, writes, 'nothing written by the refused request');
  assert.deepEqual(await readBack(img, B(4), MiB), pattern(4, MiB), 'the refused range is unchanged');
  assert.deepEqual(await readBack(img, B(1), MiB), new Uint8Array(MiB));
  await img.close();
  assert.deepEqual(await checkInvariants(disk), []);
});

test('a read-only image refuses writes with EROFS; a read-only source cannot be opened writable', async () => {
  const { disk } = await newImage({ virtualSize: B(8) });
  const img = await VhdxImage.open(disk);
  assert.equal(img.readOnly, true);
  assert.deepEqual(img.can, { zero: false, fastZero: false, discard: false, extents: true, fua: false });
  await assert.rejects(img.write(0, new Uint8Array(512)), (e: VhdxError) => e.code === 'EROFS' && e.reason === 'READ_ONLY');
  await assert.rejects(img.writeZeroes(0, MiB), (e: VhdxError) => e.code === 'EROFS');
  await assert.rejects(img.discard(0, MiB), (e: VhdxError) => e.code === 'EROFS');
  await img.flush();
  await img.close();
  assert.equal(disk.counts.writes + disk.counts.truncates + disk.counts.flushes, 0);
  const mem = new MemorySource(disk.bytes(), { readOnly: true });
  await assert.rejects(VhdxImage.open(mem, { readOnly: false }), (e: VhdxError) => e.code === 'EROFS');
});

test('writes are checked against the disk size', async () => {
  const { disk } = await newImage({ virtualSize: B(8) });
  const img = await VhdxImage.open(disk, { readOnly: false });
  await assert.rejects(img.write(B(8) - 100, new Uint8Array(200)), (e: VhdxError) => e.reason === 'OUT_OF_RANGE');
  await assert.rejects(img.writeZeroes(-1, 10), (e: VhdxError) => e.reason === 'OUT_OF_RANGE');
  await assert.rejects(img.discard(0, B(9)), (e: VhdxError) => e.reason === 'OUT_OF_RANGE');
  await img.close();
  assert.equal(disk.counts.writes, 0);
  await assert.rejects(img.write(0, new Uint8Array(1)), (e: VhdxError) => e.reason === 'CLOSED');
});

const REPLAY = 'vhdx-log-replay.vhdx.gz';
test('a dirty image opened writable is replayed in place (corpus vhdx-log-replay.vhdx)', { skip: needCorpus(REPLAY) }, async () => {
  const entry = (corpusManifest() ?? []).find((e) => e.file === REPLAY);
  assert.ok(entry, `${REPLAY} is in the manifest at ${join(corpusDir, 'manifest.json')}`);
  const path = await corpusFile(REPLAY);
  const src = new FaultySource(readFileSync(path), { trace: true });
  const before = currentOf(await fileHeaders(src));
  assert.notEqual(before.logGuid, NIL, 'the image has a dirty log');
  const img = await VhdxImage.open(src, { readOnly: false });
  assert.equal(img.layout.log.dirty, false, 'the log was replayed before the layout was read');
  assert.ok(src.counts.writes > 0 && src.counts.flushes > 0);
  const replayed = currentOf(await fileHeaders(src));
  assert.equal(replayed.logGuid, NIL, 'LogGuid cleared by the replay');
  assert.notEqual(replayed.fileWriteGuid, before.fileWriteGuid, 'the replay is a change to the file: new FileWriteGuid');
  assert.equal(replayed.dataWriteGuid, before.dataWriteGuid, 'but not to the data: same DataWriteGuid');
  assert.equal(await hashDisk(img), entry.rawSha256);
  await img.close();
  // Read-only afterwards: clean, same content, and the structures hold.
  const ro = await VhdxImage.open(src);
  assert.equal(ro.layout.log.dirty, false);
  assert.equal(await hashDisk(ro), entry.rawSha256);
  assert.deepEqual(await checkInvariants(src), []);
});

async function hashDisk(img: VhdxImage): Promise<string> {
  const h = createHash('sha256');
  const buf = new Uint8Array(16 * MiB);
  for (let at = 0; at < img.size; at += buf.length) {
    const n = Math.min(buf.length, img.size - at);
    await img.read(at, buf.subarray(0, n));
    h.update(buf.subarray(0, n));
  }
  return h.digest('hex');
}

/** A source whose writes matching `hold` wait until `release()` (delegating everything to `inner`). */
function gated(inner: FaultySource, hold: (offset: number, data: Uint8Array) => boolean) {
  let release = (): void => undefined;
  const gate = new Promise<void>((r) => (release = r));
  const src: WritableSource = {
    get size() {
      return inner.size;
    },
    readOnly: false,
    read: (o: number, b: Uint8Array) => inner.read(o, b),
    write: async (o: number, d: Uint8Array) => {
      if (hold(o, d)) await gate;
      return inner.write(o, d);
    },
    flush: () => inner.flush(),
    truncate: (n: number) => inner.truncate(n),
    close: () => inner.close(),
  };
  return { src, release: () => release() };
}

const turns = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
};

test('a write into a new block that has resolved is made durable by the next flush, even while another write into the block is in flight', async () => {
  const { plan, disk } = await newImage({ virtualSize: B(16) });
  const big = pattern(2, 512 * KiB);
  const small = pattern(1, 4096);
  // Hold the big write's data (it lands at the first block placed after the static structures).
  const { src, release } = gated(disk, (o, d) => o === plan.payloadOffset && d.length === big.length);
  const img = await VhdxImage.open(src, { readOnly: false });
  const w2 = img.write(B(3), big);
  let w1Resolved = false;
  const w1 = img.write(B(3) + 768 * KiB, small).then(() => {
    w1Resolved = true;
  });
  await turns(50);
  if (w1Resolved) {
    // The caller saw its write complete, so a flush must make it durable: a crash right after
    // the flush (nothing unflushed survives) must still read it.
    await img.flush();
    const crashed = disk.crashImage({ keep: 'none' });
    const ro = await VhdxImage.open(crashed);
    assert.deepEqual(await readBack(ro, B(3) + 768 * KiB, 4096), small, 'a completed write lost by a crash after a flush');
  }
  release();
  await Promise.all([w1, w2]);
  await img.close();
  const ro = await VhdxImage.open(disk);
  assert.deepEqual(await readBack(ro, B(3), big.length), big);
  assert.deepEqual(await readBack(ro, B(3) + 768 * KiB, 4096), small);
  assert.equal(disk.counts.truncates, 1, 'the block was placed once');
});

test('two blocks sharing file space: the first change is refused (BLOCK_OVERLAP) and nothing is written', async () => {
  // Found by the write fuzz target: blocks 5 and 9 named one place, so zeroing block 9 wiped
  // block 5's data. check calls it BLOCK_OVERLAP; a writer must refuse the image alike.
  const { bytes, plan, blockFileOffset } = await buildImage({ allocate: [0, 5] });
  putBatEntry(bytes, plan, 9, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: blockFileOffset[5]! / MiB });
  const before = bytes.slice();
  const disk = new FaultySource(bytes.slice(), { trace: true });
  const img = await VhdxImage.open(disk, { readOnly: false });
  await assert.rejects(img.writeZeroes(B(9), 4096), (e: VhdxError) => e.reason === 'BLOCK_OVERLAP' && e.structure === 'BAT entry 9');
  await assert.rejects(img.write(0, new Uint8Array(512)), (e: VhdxError) => e.reason === 'BLOCK_OVERLAP', 'every later change too');
  await img.close();
  assert.deepEqual(traced(disk).filter((op) => op.kind === 'write' || op.kind === 'truncate'), [], 'nothing written');
  assert.ok(Buffer.from(disk.bytes()).equals(Buffer.from(before)));
});
