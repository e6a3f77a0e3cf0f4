// src/format/metadata.ts: the metadata table and system items (MS-VHDX §2.6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FILE_PARAMETERS,
  FILE_PARAMETERS_HAS_PARENT,
  FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED,
  LOGICAL_SECTOR_SIZE,
  METADATA_ENTRIES_AT,
  METADATA_ENTRY_SIZE,
  METADATA_FLAG_IS_REQUIRED,
  METADATA_FLAG_IS_USER,
  METADATA_FLAG_IS_VIRTUAL_DISK,
  METADATA_TABLE_ENTRY,
  METADATA_TABLE_HEADER,
  PHYSICAL_SECTOR_SIZE,
  VIRTUAL_DISK_ID,
  VIRTUAL_DISK_SIZE,
  encodeMetadataTable,
  type MetadataTableEntry,
} from '../../src/format/metadata.js';
import { REGION_ENTRIES_AT, REGION_ENTRY_SIZE, REGION_TABLE_ENTRY, REGION_TABLE_HEADER } from '../../src/format/region-table.js';
import * as C from '../../src/format/constants.js';
import { assertBytesEqual, assertRoundTrip, assertVhdxError } from '../helpers/hex.js';
import { corpusManifest } from '../helpers/env.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import type { RoundTrip } from '../helpers/hex.js';
import * as F from './fixtures/metadata.js';

const ENTRY_FIXTURES: [Uint8Array, MetadataTableEntry][] = [
  [F.FILE_PARAMETERS_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.fileParameters],
  [F.VIRTUAL_DISK_SIZE_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.virtualDiskSize],
  [F.LOGICAL_SECTOR_SIZE_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.logicalSectorSize],
  [F.PHYSICAL_SECTOR_SIZE_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.physicalSectorSize],
  [F.VIRTUAL_DISK_ID_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.virtualDiskId],
  [F.PARENT_LOCATOR_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.parentLocator],
  [F.EMPTY_USER_ENTRY_FIXTURE, F.METADATA_ENTRY_VALUES.emptyUser],
];
const TABLE_ENTRIES = ENTRY_FIXTURES.slice(0, 5).map(([, v]) => v);

function decodeTable(b: Uint8Array) {
  const header = METADATA_TABLE_HEADER.decode(b);
  const entries = [];
  for (let i = 0; i < header.entryCount; i++) entries.push(METADATA_TABLE_ENTRY.decode(b.subarray(METADATA_ENTRIES_AT + i * METADATA_ENTRY_SIZE)));
  return { header, entries };
}

test('layout constants follow the notes', () => {
  assert.equal(METADATA_TABLE_HEADER.size, 32);
  assert.equal(METADATA_TABLE_ENTRY.size, 32);
  assert.equal(METADATA_ENTRIES_AT, 32);
  assert.equal(METADATA_ENTRY_SIZE, 32);
  assert.deepEqual([METADATA_FLAG_IS_USER, METADATA_FLAG_IS_VIRTUAL_DISK, METADATA_FLAG_IS_REQUIRED], [1, 2, 4]);
  assert.deepEqual([FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED, FILE_PARAMETERS_HAS_PARENT], [1, 2]);
  assert.equal(METADATA_ENTRIES_AT + C.MAX_METADATA_ENTRIES * METADATA_ENTRY_SIZE, C.METADATA_TABLE_SIZE, '2047 entries fill the table exactly');
  assert.deepEqual(
    [C.ITEM_FILE_PARAMETERS, C.ITEM_VIRTUAL_DISK_SIZE, C.ITEM_LOGICAL_SECTOR_SIZE, C.ITEM_PHYSICAL_SECTOR_SIZE, C.ITEM_VIRTUAL_DISK_ID, C.ITEM_PARENT_LOCATOR],
    Object.values(F.METADATA_ENTRY_VALUES).slice(0, 6).map((v) => v.itemId),
  );
});

test('table header: decode and identity', () => {
  assert.deepEqual(assertRoundTrip(METADATA_TABLE_HEADER, F.METADATA_TABLE_HEADER_FIXTURE), F.METADATA_TABLE_HEADER_VALUE);
});

test('table entries: decode and identity', () => {
  for (const [bytes, value] of ENTRY_FIXTURES) assert.deepEqual(assertRoundTrip(METADATA_TABLE_ENTRY, bytes), value);
});

test('the whole 64 KiB table: decode, and encodeMetadataTable gives back the same bytes', () => {
  const { header, entries } = decodeTable(F.METADATA_TABLE_FIXTURE);
  assert.equal(header.entryCount, 5);
  assert.deepEqual(entries, TABLE_ENTRIES);
  assertBytesEqual(encodeMetadataTable(entries), F.METADATA_TABLE_FIXTURE);
});

test('encodeMetadataTable holds 2047 entries and refuses 2048', () => {
  const entries = Array.from({ length: C.MAX_METADATA_ENTRIES }, (_, i) => ({
    itemId: `${i.toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`,
    offset: 65536 + i * 8,
    length: 8,
    flags: METADATA_FLAG_IS_USER,
  }));
  const b = encodeMetadataTable(entries);
  assert.equal(b.length, 65536);
  assert.deepEqual(decodeTable(b).entries, entries);
  assertVhdxError(() => encodeMetadataTable([...entries, entries[0]!]), 'BAD_ARGUMENT', 'EINVAL');
});

test('a wrong table signature is BAD_SIGNATURE naming the table', () => {
  const b = F.METADATA_TABLE_HEADER_FIXTURE.slice();
  b[7] = 0x41; // "metadatA"
  const e = assertVhdxError(() => METADATA_TABLE_HEADER.decode(b, { fileOffset: 2 * 1048576 }), 'BAD_SIGNATURE', 'EINVAL');
  assert.match(e.message, /metadata table at file offset 0x200000/);
});

test('file parameters: dynamic, fixed and differencing', () => {
  assert.deepEqual(assertRoundTrip(FILE_PARAMETERS, F.FILE_PARAMETERS_FIXTURE), F.FILE_PARAMETERS_VALUE);
  const fixed = assertRoundTrip(FILE_PARAMETERS, F.FILE_PARAMETERS_FIXED_FIXTURE);
  assert.deepEqual(fixed, { blockSize: 2 * 1048576, flags: FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED });
  const diff = assertRoundTrip(FILE_PARAMETERS, F.FILE_PARAMETERS_DIFFERENCING_FIXTURE);
  assert.deepEqual(diff, { blockSize: C.MAX_BLOCK_SIZE, flags: FILE_PARAMETERS_HAS_PARENT });
});

test('virtual disk size: 1 GiB and the 64 TiB limit; beyond 2^53 is NUMBER_TOO_LARGE', () => {
  assert.deepEqual(assertRoundTrip(VIRTUAL_DISK_SIZE, F.VIRTUAL_DISK_SIZE_FIXTURE), { virtualDiskSize: 1073741824 });
  assert.deepEqual(assertRoundTrip(VIRTUAL_DISK_SIZE, F.VIRTUAL_DISK_SIZE_MAX_FIXTURE), { virtualDiskSize: C.MAX_VIRTUAL_SIZE });
  const huge = new Uint8Array(8).fill(0xff);
  assertVhdxError(() => VIRTUAL_DISK_SIZE.decode(huge, { fileOffset: 0x210008 }), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
});

test('virtual disk id, logical and physical sector sizes', () => {
  assert.deepEqual(assertRoundTrip(VIRTUAL_DISK_ID, F.VIRTUAL_DISK_ID_FIXTURE), { virtualDiskId: 'fc7209f1-f6eb-4616-9b77-e994e3017ddd' });
  assert.deepEqual(assertRoundTrip(LOGICAL_SECTOR_SIZE, F.LOGICAL_SECTOR_SIZE_FIXTURE), { logicalSectorSize: 512 });
  assert.deepEqual(assertRoundTrip(LOGICAL_SECTOR_SIZE, F.LOGICAL_SECTOR_SIZE_4K_FIXTURE), { logicalSectorSize: 4096 });
  assert.deepEqual(assertRoundTrip(PHYSICAL_SECTOR_SIZE, F.PHYSICAL_SECTOR_SIZE_FIXTURE), { physicalSectorSize: 4096 });
  assert.deepEqual(assertRoundTrip(PHYSICAL_SECTOR_SIZE, F.PHYSICAL_SECTOR_SIZE_512_FIXTURE), { physicalSectorSize: 512 });
});

test('items decode at the offsets their table entries give', () => {
  const items = F.ITEMS_FIXTURE;
  const at = (v: { offset: number }): number => v.offset - 65536;
  const E = F.METADATA_ENTRY_VALUES;
  assert.equal(FILE_PARAMETERS.decode(items.subarray(at(E.fileParameters))).blockSize, 32 * 1048576);
  assert.equal(VIRTUAL_DISK_SIZE.decode(items.subarray(at(E.virtualDiskSize))).virtualDiskSize, 1073741824);
  assert.equal(LOGICAL_SECTOR_SIZE.decode(items.subarray(at(E.logicalSectorSize))).logicalSectorSize, 512);
  assert.equal(PHYSICAL_SECTOR_SIZE.decode(items.subarray(at(E.physicalSectorSize))).physicalSectorSize, 4096);
  assert.equal(VIRTUAL_DISK_ID.decode(items.subarray(at(E.virtualDiskId))).virtualDiskId, 'fc7209f1-f6eb-4616-9b77-e994e3017ddd');
});

test('corpus: the metadata region of iotest-dynamic-1G.vhdx holds the fixtures', { skip: needCorpus('iotest-dynamic-1G.vhdx.gz') }, async () => {
  const table = await corpusBytes('iotest-dynamic-1G.vhdx.gz', 2 * 1048576, 65536);
  assertBytesEqual(table.subarray(0, 192), F.METADATA_TABLE_FIXTURE.subarray(0, 192));
  // Windows leaves a stale copy of the last entry after the table's five; readers stop at
  // EntryCount, and encodeMetadataTable writes zeros there.
  assertBytesEqual(table.subarray(192, 224), F.VIRTUAL_DISK_ID_ENTRY_FIXTURE);
  assert.ok(table.subarray(224).every((x) => x === 0));
  assert.deepEqual(decodeTable(table).entries, TABLE_ENTRIES);
  assertBytesEqual(await corpusBytes('iotest-dynamic-1G.vhdx.gz', 2 * 1048576 + 65536, 40), F.ITEMS_FIXTURE);
});

for (const entry of corpusManifest() ?? []) {
  test(`corpus: ${entry.file}: metadata items match the manifest and entries round-trip`, { skip: needCorpus(entry.file) }, async () => {
    const rt = await corpusBytes(entry.file, C.REGION_TABLE_OFFSETS[0], 65536);
    const n = REGION_TABLE_HEADER.decode(rt).entryCount;
    const regions = Array.from({ length: n }, (_, i) => REGION_TABLE_ENTRY.decode(rt.subarray(REGION_ENTRIES_AT + i * REGION_ENTRY_SIZE)));
    const meta = regions.find((r) => r.guid === C.REGION_METADATA);
    assert.ok(meta, 'metadata region');
    const { entries } = decodeTable(await corpusBytes(entry.file, meta.fileOffset, 65536));
    const end = Math.max(...entries.map((e) => e.offset + e.length));
    assert.ok(end <= meta.length, 'items lie inside the region');
    const region = await corpusBytes(entry.file, meta.fileOffset, end);
    const item = <T extends object>(id: string, struct: RoundTrip<T>): T => {
      const e = entries.find((x) => x.itemId === id);
      assert.ok(e, `item ${id}`);
      assert.equal(e.length, struct.size);
      const b = region.subarray(e.offset, e.offset + e.length);
      const v = assertRoundTrip(struct, b);
      return v;
    };
    const fp = item(C.ITEM_FILE_PARAMETERS, FILE_PARAMETERS);
    assert.equal(fp.blockSize, entry.blockSize);
    assert.equal((fp.flags & FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED) !== 0, entry.type === 'fixed');
    assert.equal((fp.flags & FILE_PARAMETERS_HAS_PARENT) !== 0, entry.type === 'differencing');
    assert.equal(item(C.ITEM_VIRTUAL_DISK_SIZE, VIRTUAL_DISK_SIZE).virtualDiskSize, entry.virtualSize);
    assert.equal(item(C.ITEM_LOGICAL_SECTOR_SIZE, LOGICAL_SECTOR_SIZE).logicalSectorSize, entry.logicalSectorSize);
    assert.equal(item(C.ITEM_PHYSICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE).physicalSectorSize, entry.physicalSectorSize);
    const id = item(C.ITEM_VIRTUAL_DISK_ID, VIRTUAL_DISK_ID).virtualDiskId;
    if (entry.diskId) assert.equal(id, entry.diskId);
    assert.equal(entries.some((e) => e.itemId === C.ITEM_PARENT_LOCATOR), entry.type === 'differencing');
    // The table's header and entries re-encode byte for byte.
    const used = METADATA_ENTRIES_AT + entries.length * METADATA_ENTRY_SIZE;
    assertBytesEqual(encodeMetadataTable(entries).subarray(0, used), region.subarray(0, used));
  });
}
