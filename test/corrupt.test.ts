// Crafted corrupt images, each test named after the VhdxError reason it must produce. Every
// mutation keeps the header and region table checksums valid (they are recomputed after the
// change), so the checks under test are reached instead of the checksum checks. Each test also
// proves that opening never writes: the source is read-only and its bytes are compared after.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, VhdxError, describe, type RandomAccessSource, type ErrorReason } from '../src/index.js';
import {
  buildImage,
  batEntryAt,
  editHeaders,
  editRegionTables,
  writeLog,
  fillByte,
  getU32,
  hex,
  HEADER_AT,
  itemIndex,
  itemValueAt,
  KiB,
  metadataEntryAt,
  MiB,
  putBatEntry,
  REGION_BAT,
  REGION_INDEX,
  REGION_TABLE_AT,
  regionEntryAt,
  resealHeaders,
  setU16,
  setU32,
  setU64,
  PayloadState,
} from './helpers/build.js';
import { encodeGuid } from '../src/codec/guid.js';

// A 64 MiB dynamic disk with 1 MiB blocks: log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB,
// blocks 0 and 5 allocated at 4 MiB and 5 MiB; 6 MiB in all.
const base = await buildImage({ virtualSize: 64 * MiB, blockSize: MiB, allocate: [0, 5] });
const { plan } = base;
const MD = plan.metadata.offset;
const BAT = plan.bat.offset;
/** BAT index of the sector bitmap entry of chunk 0 (C = 4096 with 1 MiB blocks and 512-byte sectors). */
const BITMAP_0 = plan.geometry.chunkRatio;
const OTHER_GUID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

const fresh = () => base.bytes.slice();

/** Where an error must point: the structure it names, its file offset, words its message holds. */
interface Where {
  structure?: string;
  offset?: number;
  mentions?: string;
}

function checkError(err: unknown, reason: ErrorReason, where: Where = {}): true {
  assert.ok(err instanceof VhdxError, `expected a VhdxError, got: ${err instanceof Error ? err.stack : String(err)}`);
  assert.equal(err.reason, reason, `wrong reason for: ${err.message}`);
  if (where.structure !== undefined) {
    assert.ok(err.message.includes(where.structure), `message should name "${where.structure}": ${err.message}`);
    assert.equal(err.structure, where.structure, err.message);
  }
  if (where.offset !== undefined) {
    assert.ok(err.message.includes(`file offset ${hex(where.offset)})`), `message should name offset ${hex(where.offset)}: ${err.message}`);
    assert.equal(err.offset, where.offset, err.message);
  }
  if (where.mentions !== undefined) assert.ok(err.message.includes(where.mentions), `message should mention "${where.mentions}": ${err.message}`);
  return true;
}

/** A read-only source over a copy of `bytes`, and a check that it still holds exactly `bytes`. */
function sourceOf(bytes: Uint8Array): { src: MemorySource; assertUnchanged(): void } {
  const src = new MemorySource(bytes.slice(), { readOnly: true });
  return {
    src,
    assertUnchanged() {
      assert.equal(src.size, bytes.length, 'source size changed');
      assert.ok(Buffer.compare(src.bytes(), bytes) === 0, 'source bytes changed');
    },
  };
}

/** Opening `bytes` must fail with `reason`, naming `where`. */
async function openFails(bytes: Uint8Array, reason: ErrorReason, where?: Where): Promise<void> {
  const { src, assertUnchanged } = sourceOf(bytes);
  await assert.rejects(VhdxImage.open(src), (err) => checkError(err, reason, where));
  assertUnchanged();
}

/**
 * `bytes` opens (BAT entries are validated lazily) but reading, block status and the allocation
 * scan must each fail with `reason`, naming `where`.
 */
async function useFails(bytes: Uint8Array, reason: ErrorReason, where?: Where): Promise<void> {
  for (const op of ['read', 'blockStatus', 'allocationStats']) {
    const { src, assertUnchanged } = sourceOf(bytes);
    const img = await VhdxImage.open(src);
    const run =
      op === 'read' ? img.read(0, new Uint8Array(4096)) : op === 'blockStatus' ? img.blockStatus(0, img.size) : img.allocationStats();
    await assert.rejects(run, (err) => checkError(err, reason, where), `${op} should fail`);
    await img.close();
    assertUnchanged();
  }
}

/** Set a u32 field of both region table copies, then reseal them. */
function regionField32(bytes: Uint8Array, i: number, field: number, value: number): void {
  editRegionTables(bytes, (rt) => setU32(bytes, rt + 16 + i * 32 + field, value));
}
function regionField64(bytes: Uint8Array, i: number, field: number, value: number | bigint): void {
  editRegionTables(bytes, (rt) => setU64(bytes, rt + 16 + i * 32 + field, value));
}
const regionWhere = (i: number): Where => ({ structure: `region table 1 entry ${i}`, offset: regionEntryAt(0, i) });
const metaWhere = (i: number): Where => ({ structure: `metadata table entry ${i}`, offset: metadataEntryAt(plan, i) });

// ---- controls: the unmutated image and tolerated oddities open -------------------------------

test('control: the base image opens, reads its blocks and is left untouched', async () => {
  const bytes = fresh();
  const { src, assertUnchanged } = sourceOf(bytes);
  const img = await VhdxImage.open(src);
  const b = new Uint8Array(6 * MiB);
  await img.read(0, b);
  assert.equal(b[0], fillByte(0));
  assert.equal(b[5 * MiB + 77], fillByte(5));
  assert.equal(b[MiB], 0);
  const stats = await img.allocationStats();
  assert.equal(stats.allocatedBlocks, 2);
  await img.close();
  assertUnchanged();
});

test('control: an unknown optional region and an unknown optional item are tolerated', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => {
    setU32(bytes, rt + 8, 3);
    encodeGuid(OTHER_GUID, bytes, rt + 16 + 64);
    setU64(bytes, rt + 16 + 64 + 16, 16 * MiB); // beyond the file would be out of bounds: keep it inside
    setU32(bytes, rt + 16 + 64 + 24, MiB);
    setU32(bytes, rt + 16 + 64 + 28, 0);
  });
  // Make room for the region: the file must reach 17 MiB.
  const grown = new Uint8Array(17 * MiB);
  grown.set(bytes);
  const md = grown;
  const n = plan.items.length;
  setU16(md, MD + 10, n + 1);
  encodeGuid(OTHER_GUID, md, metadataEntryAt(plan, n));
  setU32(md, metadataEntryAt(plan, n, 16), 128 * KiB);
  setU32(md, metadataEntryAt(plan, n, 20), 16);
  setU32(md, metadataEntryAt(plan, n, 24), 1); // IsUser, not required
  const { src } = sourceOf(grown);
  const img = await VhdxImage.open(src);
  assert.equal(img.layout.regions.length, 3);
  assert.equal(img.layout.metadataItems.length, n + 1);
  await img.close();
});

// ---- identifier and headers -----------------------------------------------------------------

test('NOT_VHDX: no "vhdxfile" signature', async () => {
  const bytes = fresh();
  bytes[7] = 0x58; // "vhdxfilX"
  await openFails(bytes, 'NOT_VHDX', { structure: 'file identifier', offset: 0 });
  await openFails(new Uint8Array(2 * MiB), 'NOT_VHDX', { structure: 'file identifier', offset: 0 });
  await openFails(new Uint8Array([0x76, 0x68, 0x64]), 'NOT_VHDX', { offset: 0 });
});

test('TRUNCATED_FILE: the file ends inside the 1 MiB header section', async () => {
  await openFails(fresh().slice(0, 512 * KiB), 'TRUNCATED_FILE', { offset: 512 * KiB });
  await openFails(fresh().slice(0, MiB - 1), 'TRUNCATED_FILE', { offset: MiB - 1 });
});

test('BAD_CHECKSUM: both headers fail their checksum', async () => {
  const bytes = fresh();
  bytes[HEADER_AT[0] + 200]! ^= 1;
  bytes[HEADER_AT[1] + 200]! ^= 1;
  await openFails(bytes, 'BAD_CHECKSUM', { structure: 'header 1', offset: HEADER_AT[0] });
});

test('BAD_CHECKSUM: header 1 without signature, header 2 with a bad checksum names header 2', async () => {
  const bytes = fresh();
  bytes[HEADER_AT[0]] = 0x48; // "Head"
  bytes[HEADER_AT[1] + 200]! ^= 1;
  await openFails(bytes, 'BAD_CHECKSUM', { structure: 'header 2', offset: HEADER_AT[1] });
});

test('control: one damaged header falls back to the other', async () => {
  const bytes = fresh();
  bytes[HEADER_AT[1] + 200]! ^= 1; // header 2 (sequence 1) is the current one
  const { src } = sourceOf(bytes);
  const img = await VhdxImage.open(src);
  assert.equal(img.layout.current.slot, 1);
  await img.close();
});

test('NO_VALID_HEADER: neither header has its signature', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => {
    bytes[h] = 0x48; // "Head", checksum recomputed
  });
  await openFails(bytes, 'NO_VALID_HEADER', { structure: 'header 1', offset: HEADER_AT[0] });
});

test('NO_VALID_HEADER: equal sequence numbers, different content', async () => {
  const bytes = fresh();
  setU64(bytes, HEADER_AT[0] + 8, 7);
  setU64(bytes, HEADER_AT[1] + 8, 7);
  bytes[HEADER_AT[1] + 16]! ^= 0xff; // another FileWriteGuid
  resealHeaders(bytes);
  await openFails(bytes, 'NO_VALID_HEADER', { structure: 'header 1', offset: HEADER_AT[0] });
});

test('BAD_VERSION: header version 2 in the current header', async () => {
  const bytes = fresh();
  setU16(bytes, HEADER_AT[1] + 66, 2);
  resealHeaders(bytes);
  await openFails(bytes, 'BAD_VERSION', { structure: 'header 2', offset: HEADER_AT[1] });
});

test('BAD_VERSION: log version 1', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => setU16(bytes, h + 64, 1));
  await openFails(bytes, 'BAD_VERSION', { structure: 'header 2', offset: HEADER_AT[1] });
});

// ---- log placement and content --------------------------------------------------------------

test('LOG_MISALIGNED: log offset not a multiple of 1 MiB', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => setU64(bytes, h + 72, MiB + 4 * KiB));
  await openFails(bytes, 'LOG_MISALIGNED', { structure: 'log', offset: MiB + 4 * KiB });
});

test('LOG_MISALIGNED: log length not a multiple of 1 MiB', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => setU32(bytes, h + 68, 64 * KiB));
  await openFails(bytes, 'LOG_MISALIGNED', { structure: 'log', offset: MiB });
});

test('LOG_OVERLAP: log inside the header section', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => setU64(bytes, h + 72, 0));
  await openFails(bytes, 'LOG_OVERLAP', { structure: 'log', offset: 0 });
});

test('LOG_OVERLAP: log overlapping the metadata region', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => setU64(bytes, h + 72, MD));
  await openFails(bytes, 'LOG_OVERLAP', regionWhere(REGION_INDEX.metadata));
});

test('LOG_OUT_OF_BOUNDS: log beyond the end of the file', async () => {
  const bytes = fresh();
  editHeaders(bytes, (h) => setU64(bytes, h + 72, 100 * MiB));
  await openFails(bytes, 'LOG_OUT_OF_BOUNDS', { structure: 'log', offset: 100 * MiB });
});

test('LOG_NO_VALID_SEQUENCE: LogGuid set over a garbage log', async () => {
  const bytes = fresh();
  let x = 12345;
  for (let i = plan.log.offset; i < plan.log.offset + plan.log.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  editHeaders(bytes, (h) => encodeGuid(OTHER_GUID, bytes, h + 48));
  await openFails(bytes, 'LOG_NO_VALID_SEQUENCE', { structure: 'log', offset: plan.log.offset });
});

test('LOG_NO_VALID_SEQUENCE: valid log entries written for another LogGuid', async () => {
  const dirty = await buildImage({ virtualSize: 64 * MiB, blockSize: MiB, logAllocate: [1] });
  const bytes = dirty.bytes;
  editHeaders(bytes, (h) => encodeGuid(OTHER_GUID, bytes, h + 48));
  await openFails(bytes, 'LOG_NO_VALID_SEQUENCE', { structure: 'log', offset: plan.log.offset });
});

test('LOG_REPLAY_FAILED: a log entry zeroing past its LastFileOffset', async () => {
  const { bytes, plan: p } = await buildImage({ virtualSize: 64 * MiB, blockSize: MiB });
  const logGuid = '3c2b1a09-8765-4321-8fed-cba987654321';
  // A petabyte of zeros: a replay in place would write until the disk was full.
  writeLog(bytes, p, logGuid, [[{ kind: 'zero', fileOffset: p.payloadOffset, length: 2 ** 50 }]]);
  editHeaders(bytes, (h) => encodeGuid(logGuid, bytes, h + 48));
  await openFails(bytes, 'LOG_REPLAY_FAILED', { structure: 'log' });
});

test('LOG_REPLAY_FAILED: a LastFileOffset larger than any VHDX file', async () => {
  const { bytes, plan: p } = await buildImage({ virtualSize: 64 * MiB, blockSize: MiB });
  const logGuid = '3c2b1a09-8765-4321-8fed-cba987654321';
  writeLog(bytes, p, logGuid, [[{ kind: 'zero', fileOffset: p.payloadOffset, length: 4 * KiB }]], { lastFileOffset: 2 ** 50 });
  editHeaders(bytes, (h) => encodeGuid(logGuid, bytes, h + 48));
  await openFails(bytes, 'LOG_REPLAY_FAILED', { structure: 'log' });
});

test('control: the dirty-log image replays in memory and reads the logged block', async () => {
  const dirty = await buildImage({ virtualSize: 64 * MiB, blockSize: MiB, logAllocate: [1] });
  const { src, assertUnchanged } = sourceOf(dirty.bytes);
  const img = await VhdxImage.open(src);
  assert.equal(img.layout.log.dirty, true);
  assert.equal(img.layout.log.entries, 2);
  const b = new Uint8Array(4096);
  await img.read(MiB, b);
  assert.equal(b[100], fillByte(1));
  await img.close();
  assertUnchanged();
});

test('LOG_FILE_TRUNCATED: file shorter than the log head\'s FlushedFileOffset', async () => {
  const dirty = await buildImage({ virtualSize: 64 * MiB, blockSize: MiB, logAllocate: [1] });
  // Drop the logged block: the file now ends before FlushedFileOffset.
  await openFails(dirty.bytes.slice(0, plan.payloadOffset), 'LOG_FILE_TRUNCATED', { structure: 'log' });
});

// ---- region table ---------------------------------------------------------------------------

test('BAD_CHECKSUM: both region table copies fail their checksum', async () => {
  const bytes = fresh();
  bytes[REGION_TABLE_AT[0] + 4000]! ^= 1;
  bytes[REGION_TABLE_AT[1] + 4000]! ^= 1;
  await openFails(bytes, 'BAD_CHECKSUM', { structure: 'region table 1', offset: REGION_TABLE_AT[0] });
});

test('BAD_CHECKSUM: region table 1 without signature, copy 2 with a bad checksum names region table 2', async () => {
  const bytes = fresh();
  bytes[REGION_TABLE_AT[0]] = 0x52; // "Regi"
  bytes[REGION_TABLE_AT[1] + 4000]! ^= 1;
  await openFails(bytes, 'BAD_CHECKSUM', { structure: 'region table 2', offset: REGION_TABLE_AT[1] });
});

test('control: region table copy 2 damaged -> copy 1 is used and copy 2 reported invalid', async () => {
  const bytes = fresh();
  bytes[REGION_TABLE_AT[1] + 4000]! ^= 1;
  const { src } = sourceOf(bytes);
  const img = await VhdxImage.open(src);
  assert.equal(img.layout.regionTableCopy, 1);
  assert.deepEqual(img.layout.regionTableCopiesValid, [true, false]);
  await img.close();
});

test('NO_VALID_REGION_TABLE: neither copy has its signature', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => {
    bytes[rt] = 0x52; // "Regi"
  });
  await openFails(bytes, 'NO_VALID_REGION_TABLE', { structure: 'region table 1', offset: REGION_TABLE_AT[0] });
});

test('region table fallback: copy 1 damaged, copy 2 good -> opens, info reports regionTableCopy 2', async () => {
  const bytes = fresh();
  bytes[REGION_TABLE_AT[0] + 4000]! ^= 1;
  const { src, assertUnchanged } = sourceOf(bytes);
  const img = await VhdxImage.open(src);
  assert.equal(img.layout.regionTableCopy, 2);
  const info = await describe(img);
  assert.equal(info.regionTable.copyUsed, 2);
  assert.deepEqual(info.regionTable.copiesValid, [false, true]);
  const b = new Uint8Array(512);
  await img.read(5 * MiB, b);
  assert.equal(b[511], fillByte(5));
  await img.close();
  assertUnchanged();
});

test('REGION_ENTRY_COUNT: 0xFFFFFFFF region entries', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => setU32(bytes, rt + 8, 0xffffffff));
  await openFails(bytes, 'REGION_ENTRY_COUNT', { structure: 'region table 1', offset: REGION_TABLE_AT[0] });
});

test('REGION_ENTRY_COUNT: 2048 region entries (one past the limit)', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => setU32(bytes, rt + 8, 2048));
  await openFails(bytes, 'REGION_ENTRY_COUNT', { structure: 'region table 1', offset: REGION_TABLE_AT[0] });
});

test('REGION_OVERLAP: the metadata region grows over the BAT', async () => {
  const bytes = fresh();
  regionField32(bytes, REGION_INDEX.metadata, 24, 2 * MiB); // [2 MiB, 4 MiB) over the BAT at 3 MiB
  await openFails(bytes, 'REGION_OVERLAP', { structure: 'region table 1', offset: REGION_TABLE_AT[0] });
});

test('REGION_OVERLAP: two regions at the same offset', async () => {
  const bytes = fresh();
  regionField64(bytes, REGION_INDEX.metadata, 16, BAT);
  await openFails(bytes, 'REGION_OVERLAP', { structure: 'region table 1', offset: REGION_TABLE_AT[0] });
});

test('REGION_OVERLAP: a region inside the header section', async () => {
  const bytes = fresh();
  regionField64(bytes, REGION_INDEX.bat, 16, 0);
  await openFails(bytes, 'REGION_OVERLAP', regionWhere(REGION_INDEX.bat));
});

test('REGION_MISALIGNED: region offset not a multiple of 1 MiB', async () => {
  const bytes = fresh();
  regionField64(bytes, REGION_INDEX.bat, 16, BAT + 4 * KiB);
  await openFails(bytes, 'REGION_MISALIGNED', regionWhere(REGION_INDEX.bat));
});

test('REGION_MISALIGNED: region length not a multiple of 1 MiB, or zero', async () => {
  const bytes = fresh();
  regionField32(bytes, REGION_INDEX.metadata, 24, 64 * KiB);
  await openFails(bytes, 'REGION_MISALIGNED', regionWhere(REGION_INDEX.metadata));
  const zero = fresh();
  regionField32(zero, REGION_INDEX.metadata, 24, 0);
  await openFails(zero, 'REGION_MISALIGNED', regionWhere(REGION_INDEX.metadata));
});

test('REGION_OUT_OF_BOUNDS: BAT region beyond the end of the file', async () => {
  const bytes = fresh();
  regionField64(bytes, REGION_INDEX.bat, 16, 100 * MiB);
  await openFails(bytes, 'REGION_OUT_OF_BOUNDS', regionWhere(REGION_INDEX.bat));
});

test('REGION_OUT_OF_BOUNDS: file truncated in the middle of the BAT', async () => {
  await openFails(fresh().slice(0, BAT + 512 * KiB), 'REGION_OUT_OF_BOUNDS', regionWhere(REGION_INDEX.bat));
});

test('REGION_OUT_OF_BOUNDS: file truncated in the middle of the metadata region', async () => {
  await openFails(fresh().slice(0, MD + 100 * KiB), 'REGION_OUT_OF_BOUNDS', regionWhere(REGION_INDEX.bat));
});

test('SHORT_READ: the file shrinks mid-BAT after its size was taken', async () => {
  // A source that still reports its old size but whose data stops half way through the BAT.
  const bytes = fresh();
  const inner = new MemorySource(bytes.slice(0, BAT + 4 * KiB), { readOnly: true });
  const src: RandomAccessSource = { size: bytes.length, readOnly: true, read: (o, into) => inner.read(o, into), close: async () => {} };
  const img = await VhdxImage.open(src);
  await assert.rejects(img.allocationStats(), (err) => checkError(err, 'SHORT_READ', { structure: 'BAT', offset: BAT }));
  await assert.rejects(img.read(0, new Uint8Array(512)), (err) => checkError(err, 'SHORT_READ', { structure: 'BAT', offset: BAT }));
  await img.close();
});

test('REGION_DUPLICATE: the BAT region listed twice', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => encodeGuid(REGION_BAT, bytes, rt + 16 + 32));
  await openFails(bytes, 'REGION_DUPLICATE', regionWhere(1));
});

test('UNKNOWN_REQUIRED_REGION: an unknown region marked required', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => {
    setU32(bytes, rt + 8, 3);
    encodeGuid(OTHER_GUID, bytes, rt + 16 + 64);
    setU64(bytes, rt + 16 + 64 + 16, 8 * MiB);
    setU32(bytes, rt + 16 + 64 + 24, MiB);
    setU32(bytes, rt + 16 + 64 + 28, 1);
  });
  await openFails(bytes, 'UNKNOWN_REQUIRED_REGION', { ...regionWhere(2), mentions: OTHER_GUID });
});

test('MISSING_REQUIRED_REGION: no metadata region', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => {
    encodeGuid(OTHER_GUID, bytes, rt + 16 + 32);
    setU32(bytes, rt + 16 + 32 + 28, 0); // an unknown optional region now
  });
  await openFails(bytes, 'MISSING_REQUIRED_REGION', { structure: 'region table 1', offset: REGION_TABLE_AT[0], mentions: 'metadata' });
});

test('MISSING_REQUIRED_REGION: no BAT region (empty table)', async () => {
  const bytes = fresh();
  editRegionTables(bytes, (rt) => setU32(bytes, rt + 8, 0));
  await openFails(bytes, 'MISSING_REQUIRED_REGION', { structure: 'region table 1', offset: REGION_TABLE_AT[0], mentions: 'BAT' });
});

// ---- metadata -------------------------------------------------------------------------------

test('METADATA_ENTRY_COUNT: 0xFFFF metadata entries', async () => {
  const bytes = fresh();
  setU16(bytes, MD + 10, 0xffff);
  await openFails(bytes, 'METADATA_ENTRY_COUNT', { structure: 'metadata table', offset: MD });
});

test('BAD_SIGNATURE: metadata table without its signature', async () => {
  const bytes = fresh();
  bytes[MD] = 0x4d; // "Metadata"
  await openFails(bytes, 'BAD_SIGNATURE', { structure: 'metadata table', offset: MD });
});

test('UNKNOWN_REQUIRED_ITEM: an unknown system item marked required', async () => {
  const bytes = fresh();
  const n = plan.items.length;
  setU16(bytes, MD + 10, n + 1);
  encodeGuid(OTHER_GUID, bytes, metadataEntryAt(plan, n));
  setU32(bytes, metadataEntryAt(plan, n, 16), 128 * KiB);
  setU32(bytes, metadataEntryAt(plan, n, 20), 8);
  setU32(bytes, metadataEntryAt(plan, n, 24), 4); // IsRequired
  await openFails(bytes, 'UNKNOWN_REQUIRED_ITEM', { ...metaWhere(n), mentions: OTHER_GUID });
});

test('UNKNOWN_REQUIRED_ITEM: a user item with a system GUID marked required', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'virtualDiskId');
  setU32(bytes, metadataEntryAt(plan, i, 24), 1 | 4); // IsUser | IsRequired: not the system item
  await openFails(bytes, 'UNKNOWN_REQUIRED_ITEM', metaWhere(i));
});

test('MISSING_REQUIRED_ITEM: no logical sector size item', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'logicalSectorSize');
  encodeGuid(OTHER_GUID, bytes, metadataEntryAt(plan, i));
  setU32(bytes, metadataEntryAt(plan, i, 24), 0);
  await openFails(bytes, 'MISSING_REQUIRED_ITEM', { structure: 'metadata table', offset: MD, mentions: 'logicalSectorSize' });
});

test('MISSING_REQUIRED_ITEM: HasParent set without a parent locator', async () => {
  const bytes = fresh();
  setU32(bytes, itemValueAt(plan, 'fileParameters') + 4, 2);
  await openFails(bytes, 'MISSING_REQUIRED_ITEM', { structure: 'metadata table', offset: MD, mentions: 'parent locator' });
});

test('METADATA_DUPLICATE_ITEM: the same system item twice', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'physicalSectorSize');
  encodeGuid(plan.items[itemIndex(plan, 'logicalSectorSize')]!.itemId, bytes, metadataEntryAt(plan, i));
  await openFails(bytes, 'METADATA_DUPLICATE_ITEM', metaWhere(i));
});

test('METADATA_ITEM_BOUNDS: item runs past the end of the metadata region', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'virtualDiskSize');
  setU32(bytes, metadataEntryAt(plan, i, 16), plan.metadata.length - 4);
  await openFails(bytes, 'METADATA_ITEM_BOUNDS', metaWhere(i));
});

test('METADATA_ITEM_BOUNDS: item inside the metadata table (offset below 64 KiB)', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'virtualDiskSize');
  setU32(bytes, metadataEntryAt(plan, i, 16), 100);
  await openFails(bytes, 'METADATA_ITEM_BOUNDS', metaWhere(i));
});

test('METADATA_ITEM_BOUNDS: item longer than 1 MiB', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'virtualDiskId');
  setU32(bytes, metadataEntryAt(plan, i, 20), 0xffffffff);
  await openFails(bytes, 'METADATA_ITEM_BOUNDS', metaWhere(i));
});

test('METADATA_ITEM_OVERLAP: two items share bytes', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'virtualDiskSize');
  setU32(bytes, metadataEntryAt(plan, i, 16), plan.items[itemIndex(plan, 'fileParameters')]!.offset + 4);
  await openFails(bytes, 'METADATA_ITEM_OVERLAP', { structure: 'metadata table', offset: MD });
});

test('BAD_ITEM_LENGTH: file parameters of 16 bytes', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'fileParameters');
  // Move it to free space so that only the length is wrong.
  setU32(bytes, metadataEntryAt(plan, i, 16), 256 * KiB);
  setU32(bytes, metadataEntryAt(plan, i, 20), 16);
  await openFails(bytes, 'BAD_ITEM_LENGTH', { structure: 'fileParameters', offset: MD + 256 * KiB });
});

test('BAD_ITEM_LENGTH: virtual disk size present but empty', async () => {
  const bytes = fresh();
  const i = itemIndex(plan, 'virtualDiskSize');
  setU32(bytes, metadataEntryAt(plan, i, 16), 0);
  setU32(bytes, metadataEntryAt(plan, i, 20), 0);
  await openFails(bytes, 'BAD_ITEM_LENGTH', { structure: 'virtualDiskSize' });
});

test('BAD_BLOCK_SIZE: not a power of two', async () => {
  const bytes = fresh();
  setU32(bytes, itemValueAt(plan, 'fileParameters'), 3 * MiB);
  await openFails(bytes, 'BAD_BLOCK_SIZE', { structure: 'fileParameters', offset: itemValueAt(plan, 'fileParameters') });
});

test('BAD_BLOCK_SIZE: out of range (512 MiB, 512 KiB, 0)', async () => {
  for (const bs of [512 * MiB, 512 * KiB, 0]) {
    const bytes = fresh();
    setU32(bytes, itemValueAt(plan, 'fileParameters'), bs);
    await openFails(bytes, 'BAD_BLOCK_SIZE', { structure: 'fileParameters', offset: itemValueAt(plan, 'fileParameters') });
  }
});

test('BAD_SECTOR_SIZE: logical sector size 1024', async () => {
  const bytes = fresh();
  setU32(bytes, itemValueAt(plan, 'logicalSectorSize'), 1024);
  await openFails(bytes, 'BAD_SECTOR_SIZE', { structure: 'logicalSectorSize', offset: itemValueAt(plan, 'logicalSectorSize') });
});

test('BAD_SECTOR_SIZE: physical sector size 0', async () => {
  const bytes = fresh();
  setU32(bytes, itemValueAt(plan, 'physicalSectorSize'), 0);
  await openFails(bytes, 'BAD_SECTOR_SIZE', { structure: 'physicalSectorSize', offset: itemValueAt(plan, 'physicalSectorSize') });
});

test('BAD_VIRTUAL_SIZE: over 64 TiB', async () => {
  const bytes = fresh();
  setU64(bytes, itemValueAt(plan, 'virtualDiskSize'), 64 * 2 ** 40 + 512);
  await openFails(bytes, 'BAD_VIRTUAL_SIZE', { structure: 'virtualDiskSize', offset: itemValueAt(plan, 'virtualDiskSize') });
});

test('BAD_VIRTUAL_SIZE: not a multiple of the logical sector size', async () => {
  const bytes = fresh();
  setU64(bytes, itemValueAt(plan, 'virtualDiskSize'), 64 * MiB + 100);
  await openFails(bytes, 'BAD_VIRTUAL_SIZE', { structure: 'virtualDiskSize', offset: itemValueAt(plan, 'virtualDiskSize') });
});

test('BAD_VIRTUAL_SIZE: zero', async () => {
  const bytes = fresh();
  setU64(bytes, itemValueAt(plan, 'virtualDiskSize'), 0);
  await openFails(bytes, 'BAD_VIRTUAL_SIZE', { structure: 'virtualDiskSize', offset: itemValueAt(plan, 'virtualDiskSize') });
});

test('NUMBER_TOO_LARGE: virtual size beyond 2^53', async () => {
  const bytes = fresh();
  setU64(bytes, itemValueAt(plan, 'virtualDiskSize'), 2n ** 63n);
  await openFails(bytes, 'NUMBER_TOO_LARGE', { structure: 'virtual disk size', offset: itemValueAt(plan, 'virtualDiskSize') });
});

// ---- BAT size -------------------------------------------------------------------------------

test('BAT_TOO_SMALL: a 1 TiB disk with a 1 MiB BAT', async () => {
  const bytes = fresh();
  setU64(bytes, itemValueAt(plan, 'virtualDiskSize'), 2 ** 40);
  await openFails(bytes, 'BAT_TOO_SMALL', { structure: 'BAT region', offset: BAT });
});

test('BAT_TOO_LARGE: BAT region larger than its entries need', async () => {
  // 65 entries need 1 MiB; give the BAT 2 MiB (the file is grown so the region stays inside it).
  const bytes = new Uint8Array(8 * MiB);
  bytes.set(fresh());
  regionField32(bytes, REGION_INDEX.bat, 24, 2 * MiB);
  await openFails(bytes, 'BAT_TOO_LARGE', { structure: 'BAT region', offset: BAT });
});

// ---- BAT entries (validated when their page is first used) ----------------------------------

test('BAT_ENTRY_OUT_OF_BOUNDS: a present block beyond the end of the file', async () => {
  const bytes = fresh();
  putBatEntry(bytes, plan, 2, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 1000 });
  await useFails(bytes, 'BAT_ENTRY_OUT_OF_BOUNDS', { structure: 'BAT entry 2', offset: batEntryAt(plan, 2) });
});

test('BAT_ENTRY_OUT_OF_BOUNDS: file truncated in the middle of an allocated block', async () => {
  await useFails(fresh().slice(0, 5 * MiB + 512 * KiB), 'BAT_ENTRY_OUT_OF_BOUNDS', { structure: 'BAT entry 5', offset: batEntryAt(plan, 5) });
});

test('BAT_ENTRY_OUT_OF_BOUNDS: the largest FileOffsetMB', async () => {
  const bytes = fresh();
  putBatEntry(bytes, plan, 3, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 2 ** 44 - 1 });
  await useFails(bytes, 'BAT_ENTRY_OUT_OF_BOUNDS', { structure: 'BAT entry 3', offset: batEntryAt(plan, 3) });
});

test('BAT_ENTRY_IN_HEADER: a present block at file offset 0', async () => {
  const bytes = fresh();
  putBatEntry(bytes, plan, 2, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 0 });
  await useFails(bytes, 'BAT_ENTRY_IN_HEADER', { structure: 'BAT entry 2', offset: batEntryAt(plan, 2) });
});

test('BAD_BLOCK_STATE: PARTIALLY_PRESENT in a dynamic disk', async () => {
  const bytes = fresh();
  putBatEntry(bytes, plan, 2, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: 4 });
  await useFails(bytes, 'BAD_BLOCK_STATE', { structure: 'BAT entry 2', offset: batEntryAt(plan, 2) });
});

test('BAD_BLOCK_STATE: sector bitmap state 6 (PRESENT) in a dynamic disk', async () => {
  const bytes = fresh();
  putBatEntry(bytes, plan, BITMAP_0, { state: 6, fileOffsetMB: 4 });
  await useFails(bytes, 'BAD_BLOCK_STATE', { structure: `BAT entry ${BITMAP_0}`, offset: batEntryAt(plan, BITMAP_0) });
});

test('BAD_BLOCK_STATE: undefined payload state 4', async () => {
  const bytes = fresh();
  putBatEntry(bytes, plan, 7, { state: 4, fileOffsetMB: 0 });
  await useFails(bytes, 'BAD_BLOCK_STATE', { structure: 'BAT entry 7', offset: batEntryAt(plan, 7) });
});

test('BAD_BAT_ENTRY: reserved bits set', async () => {
  const bytes = fresh();
  setU32(bytes, batEntryAt(plan, 0), getU32(bytes, batEntryAt(plan, 0)) | 0x100);
  await useFails(bytes, 'BAD_BAT_ENTRY', { structure: 'BAT entry 0', offset: batEntryAt(plan, 0) });
});
