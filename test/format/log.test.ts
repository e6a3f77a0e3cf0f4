// src/format/log.ts: log entry header, zero and data descriptors, data sector (MS-VHDX §2.3).
// Finding and validating whole entries in a ring is src/format/log-entry.ts: test/format/log-entry.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DESCRIPTORS_IN_FIRST_SECTOR,
  DESCRIPTORS_PER_SECTOR,
  LOG_DATA_DESCRIPTOR,
  LOG_DATA_SECTOR,
  LOG_DESCRIPTOR_SIZE,
  LOG_ENTRY_HEADER,
  LOG_ZERO_DESCRIPTOR,
  descriptorSectors,
} from '../../src/format/log.js';
import { LOG_SECTOR_SIZE } from '../../src/format/constants.js';
import { crc32cWithZeroField } from '../../src/codec/crc32c.js';
import type { DecodeOptions } from '../../src/codec/struct.js';
import { assertBytesEqual, assertRoundTrip, assertVhdxError, concat } from '../helpers/hex.js';
import * as F from './fixtures/log.js';

test('sizes follow the notes', () => {
  assert.equal(LOG_ENTRY_HEADER.size, 64);
  assert.equal(LOG_ZERO_DESCRIPTOR.size, 32);
  assert.equal(LOG_DATA_DESCRIPTOR.size, 32);
  assert.equal(LOG_DATA_SECTOR.size, 4096);
  assert.equal(LOG_DESCRIPTOR_SIZE, 32);
  assert.equal(LOG_SECTOR_SIZE, 4096);
  assert.equal(LOG_ENTRY_HEADER.size + DESCRIPTORS_IN_FIRST_SECTOR * LOG_DESCRIPTOR_SIZE, 4096, '126 descriptors after the header');
  assert.equal(DESCRIPTORS_PER_SECTOR * LOG_DESCRIPTOR_SIZE, 4096, '128 in each later sector');
});

test('entry header: decode and identity', () => {
  assert.deepEqual(assertRoundTrip(LOG_ENTRY_HEADER, F.LOG_ENTRY_HEADER_FIXTURE), F.LOG_ENTRY_HEADER_VALUE);
});

test('entry header: the checksum is a plain field (it covers the whole entry, not just these 64 bytes)', () => {
  assert.equal(Reflect.get(LOG_ENTRY_HEADER.fields.checksum, 'crc32c'), undefined);
  const b = F.LOG_ENTRY_HEADER_FIXTURE.slice();
  b[16]! ^= 1; // another sequence number, same stored checksum: still decodes
  assert.equal(LOG_ENTRY_HEADER.decode(b).sequenceNumber, F.SEQ ^ 1n);
  assert.equal(LOG_ENTRY_HEADER.decode(b).checksum, 0x12345678);
});

test('entry header of a whole entry: its checksum is the CRC of EntryLength bytes', () => {
  const h = assertRoundTrip(LOG_ENTRY_HEADER, F.LOG_ENTRY_FIXTURE.subarray(0, 64));
  assert.equal(h.entryLength, F.LOG_ENTRY_FIXTURE.length);
  assert.equal(h.checksum, crc32cWithZeroField(F.LOG_ENTRY_FIXTURE, 4));
  assert.equal(h.descriptorCount, 1);
  assert.deepEqual(LOG_DATA_DESCRIPTOR.decode(F.LOG_ENTRY_FIXTURE.subarray(64, 96)), F.LOG_DATA_DESCRIPTOR_VALUE);
  assert.deepEqual(LOG_DATA_SECTOR.decode(F.LOG_ENTRY_FIXTURE.subarray(4096)), F.LOG_DATA_SECTOR_VALUE);
});

test('zero descriptor: decode and identity', () => {
  assert.deepEqual(assertRoundTrip(LOG_ZERO_DESCRIPTOR, F.LOG_ZERO_DESCRIPTOR_FIXTURE), F.LOG_ZERO_DESCRIPTOR_VALUE);
});

test('data descriptor: decode and identity', () => {
  assert.deepEqual(assertRoundTrip(LOG_DATA_DESCRIPTOR, F.LOG_DATA_DESCRIPTOR_FIXTURE), F.LOG_DATA_DESCRIPTOR_VALUE);
});

test('data sector: decode and identity; the sequence number splits into high and low halves', () => {
  const v = assertRoundTrip(LOG_DATA_SECTOR, F.LOG_DATA_SECTOR_FIXTURE);
  assert.deepEqual(v, F.LOG_DATA_SECTOR_VALUE);
  assert.equal((BigInt(v.sequenceHigh) << 32n) | BigInt(v.sequenceLow), F.SEQ);
});

test('descriptor and data sector rebuild the 4 KiB they log', () => {
  const d = LOG_DATA_DESCRIPTOR.decode(F.LOG_DATA_DESCRIPTOR_FIXTURE);
  const s = LOG_DATA_SECTOR.decode(F.LOG_DATA_SECTOR_FIXTURE);
  const sector = concat(d.leadingBytes, s.data, d.trailingBytes);
  assert.equal(sector.length, 4096);
  // It is a BAT page: entry 0 FULLY_PRESENT at 4 MiB, entry 511 FULLY_PRESENT at FileOffsetMB 0x12345.
  const view = new DataView(sector.buffer);
  assert.equal(view.getBigUint64(0, true), 0x400006n);
  assert.equal(view.getBigUint64(8, true), 0x2400006n);
  assert.equal(view.getBigUint64(4088, true), (0x12345n << 20n) | 6n);
});

test('each signature is checked: BAD_SIGNATURE', () => {
  const cases: [{ decode(b: Uint8Array, opts?: DecodeOptions): unknown }, Uint8Array, string][] = [
    [LOG_ENTRY_HEADER, F.LOG_ENTRY_HEADER_FIXTURE, 'log entry header'],
    [LOG_ZERO_DESCRIPTOR, F.LOG_ZERO_DESCRIPTOR_FIXTURE, 'log zero descriptor'],
    [LOG_DATA_DESCRIPTOR, F.LOG_DATA_DESCRIPTOR_FIXTURE, 'log data descriptor'],
    [LOG_DATA_SECTOR, F.LOG_DATA_SECTOR_FIXTURE, 'log data sector'],
  ];
  for (const [struct, fixture, name] of cases) {
    const b = fixture.slice();
    b[0]! ^= 0x20; // upper case first letter
    const e = assertVhdxError(() => struct.decode(b, { fileOffset: 0x101000 }), 'BAD_SIGNATURE', 'EINVAL');
    assert.match(e.message, new RegExp(`${name} at file offset 0x101000`));
  }
  // A zero descriptor is not a data descriptor and the other way round.
  assertVhdxError(() => LOG_DATA_DESCRIPTOR.decode(F.LOG_ZERO_DESCRIPTOR_FIXTURE), 'BAD_SIGNATURE');
  assertVhdxError(() => LOG_ZERO_DESCRIPTOR.decode(F.LOG_DATA_DESCRIPTOR_FIXTURE), 'BAD_SIGNATURE');
});

test('offsets and lengths beyond 2^53 are NUMBER_TOO_LARGE', () => {
  const z = F.LOG_ZERO_DESCRIPTOR_FIXTURE.slice();
  z[15] = 0x01; // ZeroLength 2^56 + 1 MiB
  assertVhdxError(() => LOG_ZERO_DESCRIPTOR.decode(z), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
  const h = F.LOG_ENTRY_HEADER_FIXTURE.slice();
  h[63] = 0x80; // LastFileOffset
  const e = assertVhdxError(() => LOG_ENTRY_HEADER.decode(h, { fileOffset: 0x100000 }), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
  assert.equal(e.offset, 0x100000 + 56);
});

test('encoding from values gives the fixtures', () => {
  assertBytesEqual(LOG_ZERO_DESCRIPTOR.encode({ reserved: 0, zeroLength: 1048576, fileOffset: 3 * 1048576, sequenceNumber: F.SEQ }), F.LOG_ZERO_DESCRIPTOR_FIXTURE);
  const { signature, ...desc } = F.LOG_DATA_DESCRIPTOR_VALUE;
  assert.equal(signature, 'desc');
  assertBytesEqual(LOG_DATA_DESCRIPTOR.encode(desc), F.LOG_DATA_DESCRIPTOR_FIXTURE);
  assertBytesEqual(
    LOG_DATA_SECTOR.encode({ sequenceHigh: Number(F.SEQ >> 32n), data: F.DATA_SECTOR_PAYLOAD, sequenceLow: Number(F.SEQ & 0xffffffffn) }),
    F.LOG_DATA_SECTOR_FIXTURE,
  );
});

test('descriptorSectors: 126 descriptors in the first sector, 128 in each later one', () => {
  const cases = [[0, 1], [1, 1], [126, 1], [127, 2], [254, 2], [255, 3], [382, 3], [383, 4]] as const;
  for (const [count, sectors] of cases) assert.equal(descriptorSectors(count), sectors, `${count} descriptors`);
  // Descriptors are contiguous across sectors: descriptor i sits at byte 64 + 32 i.
  for (const count of [126, 254, 382]) assert.equal(64 + count * 32, descriptorSectors(count) * 4096);
});
