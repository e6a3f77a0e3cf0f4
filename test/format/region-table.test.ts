// src/format/region-table.ts: the 64 KiB region table at 192 KiB and 256 KiB (MS-VHDX §2.2.3).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  REGION_ENTRIES_AT,
  REGION_ENTRY_SIZE,
  REGION_FLAG_REQUIRED,
  REGION_TABLE_ENTRY,
  REGION_TABLE_HEADER,
  encodeRegionTable,
  type RegionTableEntry,
} from '../../src/format/region-table.js';
import { MAX_REGION_ENTRIES, REGION_BAT, REGION_METADATA, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE } from '../../src/format/constants.js';
import type { DecodeOptions } from '../../src/codec/struct.js';
import { assertBytesEqual, assertRoundTrip, assertVhdxError } from '../helpers/hex.js';
import { corpusManifest } from '../helpers/env.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import {
  BAT_ENTRY_FIXTURE,
  BAT_ENTRY_VALUE,
  EMPTY_REGION_TABLE_FIXTURE,
  METADATA_ENTRY_FIXTURE,
  METADATA_ENTRY_VALUE,
  OPTIONAL_ENTRY_FIXTURE,
  OPTIONAL_ENTRY_VALUE,
  REGION_TABLE_FIXTURE,
} from './fixtures/region-table.js';

/** Decode a whole table: its header and its entries. */
function decodeTable(b: Uint8Array, opts?: DecodeOptions) {
  const header = REGION_TABLE_HEADER.decode(b, opts);
  const entries: RegionTableEntry[] = [];
  for (let i = 0; i < header.entryCount; i++) entries.push(REGION_TABLE_ENTRY.decode(b.subarray(REGION_ENTRIES_AT + i * REGION_ENTRY_SIZE)));
  return { header, entries };
}

test('layout constants follow the notes', () => {
  assert.equal(REGION_TABLE_HEADER.size, 65536);
  assert.equal(REGION_TABLE_SIZE, 65536);
  assert.equal(REGION_TABLE_ENTRY.size, 32);
  assert.equal(REGION_ENTRIES_AT, 16);
  assert.equal(REGION_ENTRY_SIZE, 32);
  assert.equal(REGION_FLAG_REQUIRED, 1);
  assert.deepEqual(REGION_TABLE_OFFSETS, [196608, 262144]);
  assert.equal(REGION_BAT, BAT_ENTRY_VALUE.guid);
  assert.equal(REGION_METADATA, METADATA_ENTRY_VALUE.guid);
  assert.ok(REGION_ENTRIES_AT + MAX_REGION_ENTRIES * REGION_ENTRY_SIZE <= REGION_TABLE_SIZE, '2047 entries fit');
});

test('entries: decode and identity', () => {
  assert.deepEqual(assertRoundTrip(REGION_TABLE_ENTRY, BAT_ENTRY_FIXTURE, BAT_ENTRY_VALUE), BAT_ENTRY_VALUE);
  assert.deepEqual(assertRoundTrip(REGION_TABLE_ENTRY, METADATA_ENTRY_FIXTURE, METADATA_ENTRY_VALUE), METADATA_ENTRY_VALUE);
  assert.deepEqual(assertRoundTrip(REGION_TABLE_ENTRY, OPTIONAL_ENTRY_FIXTURE, OPTIONAL_ENTRY_VALUE), OPTIONAL_ENTRY_VALUE);
  assert.equal(OPTIONAL_ENTRY_VALUE.flags & REGION_FLAG_REQUIRED, 0);
});

test('the table Windows wrote: the checksum over 64 KiB verifies, header and entries decode', () => {
  const { header, entries } = decodeTable(REGION_TABLE_FIXTURE, { name: 'region table 1', fileOffset: 196608 });
  assert.deepEqual(header, { signature: 'regi', checksum: 0xc66b8cae, entryCount: 2 });
  assert.deepEqual(entries, [BAT_ENTRY_VALUE, METADATA_ENTRY_VALUE]);
});

test('encodeRegionTable reproduces the table byte for byte (decode then encode is the identity)', () => {
  assertBytesEqual(encodeRegionTable([BAT_ENTRY_VALUE, METADATA_ENTRY_VALUE]), REGION_TABLE_FIXTURE);
  assertBytesEqual(encodeRegionTable(decodeTable(REGION_TABLE_FIXTURE).entries), REGION_TABLE_FIXTURE);
});

test('an empty table: the header struct alone round-trips', () => {
  assert.deepEqual(assertRoundTrip(REGION_TABLE_HEADER, EMPTY_REGION_TABLE_FIXTURE), {
    signature: 'regi',
    checksum: new DataView(EMPTY_REGION_TABLE_FIXTURE.buffer).getUint32(4, true),
    entryCount: 0,
  });
  assertBytesEqual(encodeRegionTable([]), EMPTY_REGION_TABLE_FIXTURE);
});

test('the checksum covers the entries and the zeros after them', () => {
  for (const at of [12, 16, 40, 79, 80, 65535]) {
    const b = REGION_TABLE_FIXTURE.slice();
    b[at]! ^= 1;
    const e = assertVhdxError(() => REGION_TABLE_HEADER.decode(b, { name: 'region table 2', fileOffset: 262144 }), 'BAD_CHECKSUM', 'EINVAL');
    assert.match(e.message, /region table 2 at file offset 0x40000/);
  }
});

test('a wrong signature is BAD_SIGNATURE', () => {
  const b = REGION_TABLE_FIXTURE.slice();
  b[3] = 0x6e; // "regn"
  REGION_TABLE_HEADER.seal(b);
  assertVhdxError(() => REGION_TABLE_HEADER.decode(b), 'BAD_SIGNATURE', 'EINVAL');
});

test('an entry offset beyond 2^53 is NUMBER_TOO_LARGE, not a rounded number', () => {
  const b = OPTIONAL_ENTRY_FIXTURE.slice();
  b[22] = 0x20; // FileOffset 0x0020fffffff00000
  const e = assertVhdxError(() => REGION_TABLE_ENTRY.decode(b, { fileOffset: 196608 + 16 }), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
  assert.equal(e.offset, 196608 + 16 + 16);
});

test('a full table of 2047 entries encodes and decodes', () => {
  const entries = Array.from({ length: MAX_REGION_ENTRIES }, (_, i) => ({
    guid: `${(i + 1).toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`,
    fileOffset: (i + 1) * 1048576,
    length: 1048576,
    flags: i & 1,
  }));
  const b = encodeRegionTable(entries);
  assert.equal(b.length, 65536);
  const t = decodeTable(b);
  assert.equal(t.header.entryCount, MAX_REGION_ENTRIES);
  assert.deepEqual(t.entries[2046], entries[2046]);
  assert.deepEqual(t.entries, entries);
});

test('corpus: region table 1 of iotest-dynamic-1G.vhdx is the fixture', { skip: needCorpus('iotest-dynamic-1G.vhdx.gz') }, async () => {
  assertBytesEqual(await corpusBytes('iotest-dynamic-1G.vhdx.gz', 196608, 65536), REGION_TABLE_FIXTURE);
});

for (const entry of corpusManifest() ?? []) {
  test(`corpus: ${entry.file}: both region tables decode, are identical and re-encode byte for byte`, { skip: needCorpus(entry.file) }, async () => {
    const [t1, t2] = await Promise.all(REGION_TABLE_OFFSETS.map((at) => corpusBytes(entry.file, at, 65536)));
    assert.ok(t1 && t2);
    assertBytesEqual(t2, t1, 'the two copies');
    const { entries } = decodeTable(t1, { name: 'region table 1', fileOffset: REGION_TABLE_OFFSETS[0] });
    assert.deepEqual(entries.map((e) => e.guid).sort(), [REGION_BAT, REGION_METADATA].sort());
    for (const e of entries) {
      // Windows sets Required on both; QEMU-made images leave it clear on one of them.
      assert.equal(e.flags & ~REGION_FLAG_REQUIRED, 0);
      assert.equal(e.fileOffset % 1048576, 0);
      assert.ok(e.fileOffset >= 1048576);
    }
    assertBytesEqual(encodeRegionTable(entries), t1, 'encodeRegionTable(decoded entries)');
  });
}
