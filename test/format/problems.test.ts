// The parsers of src/format/ give problems as data (src/format/problem.ts): the open throws the
// first fatal one, check reports them all. These tests pin each parser's list, so open and check
// cannot drift apart again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HEADER, parseHeaders } from '../../src/format/header.js';
import { encodeRegionTable, chooseRegionTable, parseRegionEntries, REGION_TABLE_HEADER, type RegionTableEntry } from '../../src/format/region-table.js';
import {
  encodeMetadataTable,
  metadataEntries,
  parseDiskParameters,
  parseMetadataTable,
  placeMetadataItem,
  setMetadataItem,
  systemItemsToRead,
  FILE_PARAMETERS,
  VIRTUAL_DISK_SIZE,
  VIRTUAL_DISK_ID,
  LOGICAL_SECTOR_SIZE,
  PHYSICAL_SECTOR_SIZE,
  METADATA_FLAG_IS_REQUIRED,
  type MetadataTableEntry,
} from '../../src/format/metadata.js';
import { batGeometry, parseBatRegion } from '../../src/format/bat.js';
import { parseLogPlacement, type LogPlacement } from '../../src/format/log-entry.js';
import { blockSizeRule, sectorSizeRule, virtualSizeRule, logSizeRule } from '../../src/format/geometry.js';
import { orThrow, problemError, type Problem } from '../../src/format/problem.js';
import * as C from '../../src/format/constants.js';
import { VhdxError } from '../../src/errors.js';

const MiB = 1024 * 1024;
const NIL = '00000000-0000-0000-0000-000000000000';
const GUID = '11111111-2222-3333-4444-555555555555';
const brief = (problems: readonly Problem[]) => problems.map((p) => [p.severity, p.reason, p.structure, p.fileOffset]);

// ------------------------------------------------------------------------------------------
// Headers

function header(seq: number, changes: Partial<Parameters<typeof HEADER.encode>[0]> = {}): Uint8Array {
  return HEADER.encode({
    sequenceNumber: BigInt(seq),
    fileWriteGuid: GUID,
    dataWriteGuid: GUID,
    logGuid: NIL,
    logVersion: 0,
    version: 1,
    logLength: MiB,
    logOffset: MiB,
    ...changes,
  });
}

function section(h1: Uint8Array | null, h2: Uint8Array | null): Uint8Array {
  const b = new Uint8Array(C.REGION_TABLE_OFFSETS[0]);
  if (h1) b.set(h1, C.HEADER_OFFSETS[0]);
  if (h2) b.set(h2, C.HEADER_OFFSETS[1]);
  return b;
}

test('headers: the greater sequence number is current, with no problems', () => {
  const r = parseHeaders(section(header(1), header(2)));
  assert.deepEqual(r.problems, []);
  assert.equal(r.value!.current.slot, 2);
  assert.deepEqual(r.value!.damaged, []);
});

test('headers: a damaged copy is a corruption the open survives, and the slot is to be rewritten', () => {
  const h1 = header(5);
  h1[300]! ^= 1;
  const r = parseHeaders(section(h1, header(2)));
  assert.deepEqual(brief(r.problems), [['corruption', 'BAD_CHECKSUM', 'header 1', C.HEADER_OFFSETS[0]]]);
  assert.equal(r.problems[0]!.message, 'header 1 fails its checksum');
  assert.equal(r.value!.current.slot, 2);
  assert.deepEqual(r.value!.damaged, [1]);
});

test('headers: neither valid is fatal, naming the copy that has its signature', () => {
  const h2 = header(2);
  h2[300]! ^= 1;
  const r = parseHeaders(section(new Uint8Array(4096), h2));
  assert.equal(r.value, null);
  assert.deepEqual(brief(r.problems), [
    ['corruption', 'BAD_SIGNATURE', 'header 1', C.HEADER_OFFSETS[0]],
    ['corruption', 'BAD_CHECKSUM', 'header 2', C.HEADER_OFFSETS[1]],
    ['fatal', 'BAD_CHECKSUM', 'header 2', C.HEADER_OFFSETS[1]],
  ]);
  assert.match(r.problems[2]!.message, /^neither header is valid; header 2 has its signature but its checksum does not match$/);
  const none = parseHeaders(section(null, null));
  assert.deepEqual(brief(none.problems).at(-1), ['fatal', 'NO_VALID_HEADER', 'header 1', C.HEADER_OFFSETS[0]]);
});

test('headers: equal sequence numbers are info when identical, fatal when they differ', () => {
  const same = parseHeaders(section(header(3), header(3)));
  assert.deepEqual(brief(same.problems), [['info', 'EQUAL_SEQUENCE_NUMBERS', 'header 1', C.HEADER_OFFSETS[0]]]);
  assert.equal(same.value!.current.slot, 1);
  const differ = parseHeaders(section(header(3), header(3, { logLength: 2 * MiB })));
  assert.equal(differ.value, null);
  assert.deepEqual(brief(differ.problems), [['fatal', 'NO_VALID_HEADER', 'header 1', C.HEADER_OFFSETS[0]]]);
});

test('headers: a bad version is fatal in the current header, a corruption in the other', () => {
  const cur = parseHeaders(section(header(1), header(2, { version: 2 })));
  assert.deepEqual(brief(cur.problems), [['fatal', 'BAD_VERSION', 'header 2', C.HEADER_OFFSETS[1]]]);
  const older = parseHeaders(section(header(1, { logVersion: 1 }), header(2)));
  assert.deepEqual(brief(older.problems), [['corruption', 'BAD_VERSION', 'header 1', C.HEADER_OFFSETS[0]]]);
  assert.deepEqual(older.value!.damaged, [1]);
});

test('headers: reserved bytes set are a warning at their offset; a slot the bytes do not reach is left out', () => {
  const h1 = header(1);
  h1[4000] = 1;
  HEADER.seal(h1);
  const r = parseHeaders(section(h1, header(2)));
  assert.deepEqual(brief(r.problems), [['warning', 'RESERVED_NONZERO', 'header 1', C.HEADER_OFFSETS[0] + 80]]);
  const short = parseHeaders(section(header(1), header(2)).subarray(0, C.HEADER_OFFSETS[1]));
  assert.deepEqual(short.problems, []);
  assert.equal(short.value!.current.slot, 1);
});

// ------------------------------------------------------------------------------------------
// Region table

const regions = (entries?: RegionTableEntry[]): Uint8Array =>
  encodeRegionTable(
    entries ?? [
      { guid: C.REGION_BAT, fileOffset: 3 * MiB, length: MiB, flags: 1 },
      { guid: C.REGION_METADATA, fileOffset: 2 * MiB, length: MiB, flags: 1 },
    ],
  );
const limits = { fileSize: 4 * MiB, logOffset: MiB, logLength: MiB };

test('region table: copy 1 when valid; a damaged or different copy 2 is a corruption to rewrite', () => {
  const t = regions();
  assert.deepEqual(chooseRegionTable([t, t]), { value: { copy: 1, valid: [true, true], bad: [] }, problems: [] });
  const damaged = t.slice();
  damaged[100]! ^= 1;
  const r1 = chooseRegionTable([damaged, t]);
  assert.deepEqual(r1.value, { copy: 2, valid: [false, true], bad: [1] });
  assert.deepEqual(brief(r1.problems), [['corruption', 'BAD_CHECKSUM', 'region table 1', C.REGION_TABLE_OFFSETS[0]]]);
  const other = regions([{ guid: C.REGION_BAT, fileOffset: 3 * MiB, length: MiB, flags: 1 }]);
  const r2 = chooseRegionTable([t, other]);
  assert.deepEqual(r2.value!.bad, [2]);
  assert.deepEqual(brief(r2.problems), [['corruption', 'REGION_TABLE_MISMATCH', 'region table 2', C.REGION_TABLE_OFFSETS[1]]]);
});

test('region table: neither copy valid reports each copy, then the fatal problem', () => {
  const t = regions();
  t[100]! ^= 1;
  const r = chooseRegionTable([t, t.slice()]);
  assert.equal(r.value, null);
  assert.deepEqual(brief(r.problems), [
    ['corruption', 'BAD_CHECKSUM', 'region table 1', C.REGION_TABLE_OFFSETS[0]],
    ['corruption', 'BAD_CHECKSUM', 'region table 2', C.REGION_TABLE_OFFSETS[1]],
    ['fatal', 'BAD_CHECKSUM', 'region table 1', C.REGION_TABLE_OFFSETS[0]],
  ]);
  const none = chooseRegionTable([new Uint8Array(C.REGION_TABLE_SIZE), null]);
  assert.deepEqual(brief(none.problems).at(-1), ['fatal', 'NO_VALID_REGION_TABLE', 'region table 1', C.REGION_TABLE_OFFSETS[0]]);
});

test('region entries: the regions, reserved flags as warnings, and each rule as a fatal problem', () => {
  const ok = parseRegionEntries(regions(), 1, limits);
  assert.deepEqual(ok.problems, []);
  assert.equal(ok.value!.bat.fileOffset, 3 * MiB);
  assert.equal(ok.value!.metadata.fileOffset, 2 * MiB);

  const flags = parseRegionEntries(
    regions([
      { guid: C.REGION_BAT, fileOffset: 3 * MiB, length: MiB, flags: 5 },
      { guid: C.REGION_METADATA, fileOffset: 2 * MiB, length: MiB, flags: 1 },
    ]),
    2,
    limits,
  );
  assert.deepEqual(brief(flags.problems), [['warning', 'RESERVED_NONZERO', 'region table 2 entry 0', C.REGION_TABLE_OFFSETS[1] + 16 + 28]]);
  assert.match(flags.problems[0]!.message, /\(BAT region\) has reserved flag bits set \(0x5\)/);

  const cases: [RegionTableEntry[], string, string][] = [
    [[{ guid: C.REGION_BAT, fileOffset: 3 * MiB, length: MiB, flags: 1 }], 'MISSING_REQUIRED_REGION', 'region table 1'],
    [[{ guid: C.REGION_BAT, fileOffset: 3 * MiB, length: MiB, flags: 1 }, { guid: C.REGION_BAT, fileOffset: 2 * MiB, length: MiB, flags: 1 }], 'REGION_DUPLICATE', 'region table 1 entry 1'],
    [[{ guid: C.REGION_BAT, fileOffset: 4 * MiB, length: MiB, flags: 1 }], 'REGION_OUT_OF_BOUNDS', 'region table 1 entry 0'],
    [[{ guid: C.REGION_BAT, fileOffset: MiB, length: MiB, flags: 1 }], 'LOG_OVERLAP', 'region table 1 entry 0'],
    [[{ guid: C.REGION_BAT, fileOffset: 3 * MiB + 4096, length: MiB, flags: 1 }], 'REGION_MISALIGNED', 'region table 1 entry 0'],
    [[{ guid: GUID, fileOffset: 3 * MiB, length: MiB, flags: 1 }], 'UNKNOWN_REQUIRED_REGION', 'region table 1 entry 0'],
  ];
  for (const [entries, reason, structure] of cases) {
    const r = parseRegionEntries(regions(entries), 1, limits);
    assert.equal(r.value, null, reason);
    assert.deepEqual(r.problems.map((p) => [p.severity, p.reason, p.structure]), [['fatal', reason, structure]], reason);
  }
});

// ------------------------------------------------------------------------------------------
// Metadata

const ITEMS: [string, Uint8Array][] = [
  [C.ITEM_FILE_PARAMETERS, FILE_PARAMETERS.encode({ blockSize: MiB, flags: 0 })],
  [C.ITEM_VIRTUAL_DISK_SIZE, VIRTUAL_DISK_SIZE.encode({ virtualDiskSize: 64 * MiB })],
  [C.ITEM_VIRTUAL_DISK_ID, VIRTUAL_DISK_ID.encode({ virtualDiskId: GUID })],
  [C.ITEM_LOGICAL_SECTOR_SIZE, LOGICAL_SECTOR_SIZE.encode({ logicalSectorSize: 512 })],
  [C.ITEM_PHYSICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE.encode({ physicalSectorSize: 4096 })],
];
const MD_AT = 2 * MiB;

function metadataTable(changes: (entries: MetadataTableEntry[]) => MetadataTableEntry[] = (e) => e): Uint8Array {
  let at = C.METADATA_TABLE_SIZE;
  const entries = ITEMS.map(([itemId, bytes]) => {
    const e = { itemId, offset: at, length: bytes!.length, flags: METADATA_FLAG_IS_REQUIRED };
    at += bytes!.length;
    return e;
  });
  return encodeMetadataTable(changes(entries));
}

test('metadata table: items with names and flags; reserved bits a warning; each rule a fatal problem', () => {
  const r = parseMetadataTable(metadataTable(), MD_AT, MiB);
  assert.deepEqual(r.problems, []);
  assert.deepEqual(r.value!.map((i) => i.name), ['fileParameters', 'virtualDiskSize', 'virtualDiskId', 'logicalSectorSize', 'physicalSectorSize']);

  const reserved = parseMetadataTable(metadataTable((e) => e.map((x, i) => (i === 1 ? { ...x, flags: x.flags | 8 } : x))), MD_AT, MiB);
  assert.deepEqual(brief(reserved.problems), [['warning', 'RESERVED_NONZERO', 'metadata table entry 1', MD_AT + 32 + 32]]);

  const cases: [(entries: MetadataTableEntry[]) => MetadataTableEntry[], string, string][] = [
    [(e) => e.map((x, i) => (i === 1 ? { ...x, offset: e[0]!.offset } : x)), 'METADATA_ITEM_OVERLAP', 'metadata table'],
    [(e) => [...e, { ...e[0]! }], 'METADATA_DUPLICATE_ITEM', 'metadata table entry 5'],
    [(e) => [...e, { itemId: GUID, offset: 0, length: 0, flags: METADATA_FLAG_IS_REQUIRED }], 'UNKNOWN_REQUIRED_ITEM', 'metadata table entry 5'],
    [(e) => e.map((x, i) => (i === 0 ? { ...x, offset: MiB - 4 } : x)), 'METADATA_ITEM_BOUNDS', 'metadata table entry 0'],
  ];
  for (const [change, reason, structure] of cases) {
    const p = parseMetadataTable(metadataTable(change), MD_AT, MiB);
    assert.equal(p.value, null, reason);
    assert.deepEqual(p.problems.map((x) => [x.severity, x.reason, x.structure]), [['fatal', reason, structure]], reason);
  }
  const many = metadataTable();
  new DataView(many.buffer).setUint16(10, C.MAX_METADATA_ENTRIES + 1, true);
  assert.equal(parseMetadataTable(many, MD_AT, MiB).problems[0]!.reason, 'METADATA_ENTRY_COUNT');
});

function diskParameters(values: readonly (Uint8Array | undefined)[]) {
  const items = parseMetadataTable(metadataTable(), MD_AT, MiB).value;
  const toRead = orThrow(systemItemsToRead(items!, MD_AT));
  return parseDiskParameters(items!, new Map(toRead.map((it, i) => [it.itemId, values[i] ?? ITEMS[i]![1]])), MD_AT);
}

test('system items: a missing or mis-sized item, and the geometry rules, are fatal at the item', () => {
  const items = parseMetadataTable(metadataTable((e) => e.slice(1)), MD_AT, MiB).value;
  assert.deepEqual(brief(systemItemsToRead(items!, MD_AT).problems), [['fatal', 'MISSING_REQUIRED_ITEM', 'metadata table', MD_AT]]);
  const long = parseMetadataTable(metadataTable((e) => e.map((x, i) => (i === 4 ? { ...x, length: 8 } : x))), MD_AT, MiB).value;
  assert.deepEqual(brief(systemItemsToRead(long!, MD_AT).problems), [['fatal', 'BAD_ITEM_LENGTH', 'physicalSectorSize', MD_AT + 65536 + 36]]);

  const ok = diskParameters([]);
  assert.deepEqual(ok.problems, []);
  assert.equal(ok.value!.virtualSize, 64 * MiB);
  const block = diskParameters([FILE_PARAMETERS.encode({ blockSize: 3 * MiB, flags: 0 })]);
  assert.deepEqual(brief(block.problems), [['fatal', 'BAD_BLOCK_SIZE', 'fileParameters', MD_AT + 65536]]);
  assert.equal(block.problems[0]!.message, `block size ${3 * MiB} ${blockSizeRule(3 * MiB)}`);
  const sector = diskParameters([undefined, undefined, undefined, LOGICAL_SECTOR_SIZE.encode({ logicalSectorSize: 1024 })]);
  assert.deepEqual(brief(sector.problems), [['fatal', 'BAD_SECTOR_SIZE', 'logicalSectorSize', MD_AT + 65536 + 32]]);
  const size = diskParameters([undefined, VIRTUAL_DISK_SIZE.encode({ virtualDiskSize: 1000 })]);
  assert.deepEqual(brief(size.problems), [['fatal', 'BAD_VIRTUAL_SIZE', 'virtualDiskSize', MD_AT + 65536 + 8]]);
  const child = diskParameters([FILE_PARAMETERS.encode({ blockSize: MiB, flags: 2 })]);
  assert.deepEqual(brief(child.problems), [['fatal', 'MISSING_REQUIRED_ITEM', 'metadata table', MD_AT]]);
});

test('geometry rules: one verdict for create and open', () => {
  assert.equal(blockSizeRule(MiB), null);
  assert.equal(blockSizeRule(256 * MiB), null);
  for (const bad of [0, MiB / 2, 3 * MiB, 512 * MiB, 1.5]) assert.match(blockSizeRule(bad)!, /power of two/);
  assert.equal(sectorSizeRule(512), null);
  assert.equal(sectorSizeRule(4096), null);
  assert.match(sectorSizeRule(1024)!, /512 or 4096/);
  assert.equal(virtualSizeRule(MiB, 512), null);
  assert.match(virtualSizeRule(0, 512)!, /positive/);
  assert.match(virtualSizeRule(64 * 2 ** 40 + 4096, 512)!, /64 TiB/);
  assert.match(virtualSizeRule(MiB + 512, 4096)!, /4096-byte/);
  assert.equal(logSizeRule(MiB), null);
  assert.match(logSizeRule(MiB + 4096)!, /multiple of 1 MiB/);
});

test('metadata editing: an item keeps its place when it fits, else goes after the last item; the table changes only there', () => {
  const table = metadataTable((e) => [...e, { itemId: C.ITEM_PARENT_LOCATOR, offset: 65536 + 40, length: 100, flags: METADATA_FLAG_IS_REQUIRED }]);
  const entries = metadataEntries(table);
  assert.equal(placeMetadataItem(entries, C.ITEM_PARENT_LOCATOR, 200, MiB), 65536 + 40);
  const after = placeMetadataItem(entries, C.ITEM_PARENT_LOCATOR, 100, MiB);
  assert.equal(after, 65536 + 40);
  // Grow it past an item placed after it: it moves after the last one.
  const blocked = [...entries, { itemId: GUID, offset: 65536 + 200, length: 10, flags: 1 }];
  assert.equal(placeMetadataItem(blocked, C.ITEM_PARENT_LOCATOR, 200, MiB), 65536 + 210);
  assert.equal(placeMetadataItem(entries, C.ITEM_PARENT_LOCATOR, MiB, MiB), null);

  const edited = setMetadataItem(table, C.ITEM_PARENT_LOCATOR, { offset: 65536 + 4096, length: 300 });
  assert.deepEqual(metadataEntries(edited).at(-1), { itemId: C.ITEM_PARENT_LOCATOR, offset: 65536 + 4096, length: 300, flags: METADATA_FLAG_IS_REQUIRED });
  const changed = [...edited.keys()].filter((i) => edited[i] !== table[i]);
  assert.ok(changed.every((i) => i >= 32 + 5 * 32 + 16 && i < 32 + 5 * 32 + 24), 'only the offset and length fields');
  const appended = setMetadataItem(metadataTable(), C.ITEM_PARENT_LOCATOR, { offset: 65536 + 4096, length: 300 });
  assert.equal(metadataEntries(appended).length, 6);
});

// ------------------------------------------------------------------------------------------
// BAT region, log placement, and the error an open throws

test('BAT region: too small and too large are fatal at the region', () => {
  // 4096 blocks of 1 MiB make a chunk: the region may hold one whole chunk's entries.
  const g = batGeometry(64 * MiB, MiB, 512, false);
  assert.deepEqual(parseBatRegion({ fileOffset: 3 * MiB, length: MiB }, g, false), { value: { entries: 4097 }, problems: [] });
  assert.deepEqual(brief(parseBatRegion({ fileOffset: 3 * MiB, length: 256 }, g, false).problems), [['fatal', 'BAT_TOO_SMALL', 'BAT region', 3 * MiB]]);
  assert.deepEqual(brief(parseBatRegion({ fileOffset: 3 * MiB, length: 2 * MiB }, g, false).problems), [['fatal', 'BAT_TOO_LARGE', 'BAT region', 3 * MiB]]);
});

test('log placement: alignment, place, bounds and a dirty empty log', () => {
  const cases: [LogPlacement, string][] = [
    [{ logOffset: MiB + 4096, logLength: MiB, dirty: false }, 'LOG_MISALIGNED'],
    [{ logOffset: 0, logLength: MiB, dirty: false }, 'LOG_OVERLAP'],
    [{ logOffset: 4 * MiB, logLength: MiB, dirty: false }, 'LOG_OUT_OF_BOUNDS'],
    [{ logOffset: MiB, logLength: 0, dirty: true }, 'LOG_NO_VALID_SEQUENCE'],
  ];
  for (const [placement, reason] of cases) {
    assert.deepEqual(brief(parseLogPlacement(placement, 4 * MiB).problems), [['fatal', reason, 'log', placement.logOffset]], reason);
  }
  assert.deepEqual(parseLogPlacement({ logOffset: MiB, logLength: MiB, dirty: true }, 4 * MiB).problems, []);
});

test('the error an open throws for a problem carries its code, reason, place and message', () => {
  const t = new Uint8Array(C.REGION_TABLE_SIZE);
  const r = chooseRegionTable([t, t]);
  assert.throws(
    () => orThrow(r),
    (e) =>
      e instanceof VhdxError &&
      e.code === 'EINVAL' &&
      e.reason === 'NO_VALID_REGION_TABLE' &&
      e.structure === 'region table 1' &&
      e.offset === C.REGION_TABLE_OFFSETS[0] &&
      e.message === 'neither region table copy has the "regi" signature (region table 1 at file offset 0x30000)',
  );
  const e = problemError({ severity: 'fatal', reason: 'NUMBER_TOO_LARGE', message: 'x', code: 'EOVERFLOW' });
  assert.equal(e.code, 'EOVERFLOW');
  assert.equal(e.message, 'x');
  assert.ok(REGION_TABLE_HEADER.signatureOk(regions()));
  assert.ok(!REGION_TABLE_HEADER.signatureOk(regions().subarray(0, 2)));
});
