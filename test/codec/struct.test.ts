// src/codec/struct.ts: defineStruct derives decode and encode from one field table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ascii, bytes, defineStruct, guid, u16, u32, u64, u64big, u8, utf16 } from '../../src/codec/struct.js';
import { crc32cWithZeroField } from '../../src/codec/crc32c.js';
import { VhdxError } from '../../src/errors.js';
import { assertBytesEqual, assertVhdxError, crc32cRef, hex, patchCrc32c } from '../helpers/hex.js';

// A made-up 64-byte structure using every field type, with gaps no field covers.
const SAMPLE = defineStruct('sample', 64, {
  signature: { at: 0, type: ascii(4), expect: 'smpl' },
  checksum: { at: 4, type: u32, crc32c: true },
  small: { at: 8, type: u8 },
  // 9: one uncovered byte
  half: { at: 10, type: u16 },
  word: { at: 12, type: u32 },
  offset: { at: 16, type: u64 },
  sequence: { at: 24, type: u64big },
  id: { at: 32, type: guid },
  name: { at: 48, type: utf16(8) },
  raw: { at: 56, type: bytes(4) },
  // 60..63: uncovered
});

const SAMPLE_FIXTURE = patchCrc32c(hex`
  73 6d 70 6c                    # signature "smpl"
  xx xx xx xx                    # checksum (filled by the fixture builder)
  fe                             # small 0xfe
  00                             # (not covered by any field)
  34 12                          # half 0x1234
  78 56 34 12                    # word 0x12345678
  00 00 10 00 00 00 01 00        # offset 0x0001000000100000 = 2^48 + 1 MiB
  ff ff ff ff ff ff ff ff        # sequence 2^64 - 1
  66 77 c2 2d 23 f6 00 42 9d 64 11 5e 9b fd 4a 08   # id {2DC27766-F623-4200-9D64-115E9BFD4A08}
  41 00 42 00 00 00 00 00        # name "AB" (UTF-16LE, NUL-terminated inside 8 bytes)
  de ad be ef                    # raw
  00 00 00 00                    # (not covered)
`, 4);

const SAMPLE_VALUE = {
  signature: 'smpl',
  small: 0xfe,
  half: 0x1234,
  word: 0x12345678,
  offset: 2 ** 48 + 2 ** 20,
  sequence: 2n ** 64n - 1n,
  id: '2dc27766-f623-4200-9d64-115e9bfd4a08',
  name: 'AB',
  raw: hex`de ad be ef`,
};

test('the fixture is 64 bytes with a reference checksum', () => {
  assert.equal(SAMPLE_FIXTURE.length, 64);
  assert.equal(SAMPLE.size, 64);
  assert.equal(SAMPLE.name, 'sample');
});

test('decode gives every field its value', () => {
  const v = SAMPLE.decode(SAMPLE_FIXTURE);
  assert.deepEqual(v, { ...SAMPLE_VALUE, checksum: crc32cWithZeroField(SAMPLE_FIXTURE, 4) });
  assert.equal(typeof v.sequence, 'bigint');
  assert.equal(typeof v.offset, 'number');
});

test('encode writes the same bytes, computing the checksum and the expected signature', () => {
  const { signature, ...withoutAuto } = SAMPLE_VALUE;
  assertBytesEqual(SAMPLE.encode(withoutAuto), SAMPLE_FIXTURE);
  assertBytesEqual(SAMPLE.encode(SAMPLE_VALUE), SAMPLE_FIXTURE);
  // A stale checksum in the value is ignored: encode always computes it.
  assertBytesEqual(SAMPLE.encode({ ...SAMPLE_VALUE, checksum: 12345 }), SAMPLE_FIXTURE);
  assert.equal(signature, 'smpl');
});

test('encode(decode(bytes)) equals bytes', () => {
  assertBytesEqual(SAMPLE.encode(SAMPLE.decode(SAMPLE_FIXTURE)), SAMPLE_FIXTURE);
});

test('encode zero-fills bytes no field covers and stays inside its window', () => {
  const into = new Uint8Array(80).fill(0xaa);
  const out = SAMPLE.encode(SAMPLE_VALUE, into, 8);
  assert.equal(out.length, 64);
  assert.equal(out.buffer, into.buffer, 'encodes in place into the given buffer');
  assertBytesEqual(into.subarray(8, 72), SAMPLE_FIXTURE);
  assertBytesEqual(into.subarray(0, 8), new Uint8Array(8).fill(0xaa), 'bytes before the window');
  assertBytesEqual(into.subarray(72), new Uint8Array(8).fill(0xaa), 'bytes after the window');
  assert.equal(into[8 + 9], 0);
  assertBytesEqual(into.subarray(8 + 60, 8 + 64), new Uint8Array(4));
});

test('encode pads short text and raw fields with zeros', () => {
  const out = SAMPLE.encode({ ...SAMPLE_VALUE, name: '', raw: hex`01` });
  assertBytesEqual(out.subarray(48, 60), hex`00 00 00 00 00 00 00 00  01 00 00 00`);
  // Text longer than the field is cut at the field's end.
  const long = SAMPLE.encode({ ...SAMPLE_VALUE, name: 'ABCDEF' });
  assertBytesEqual(long.subarray(48, 56), hex`41 00 42 00 43 00 44 00`);
  assert.equal(SAMPLE.decode(long).name, 'ABCD');
});

test('encode computes the checksum over the structure with the field zeroed', () => {
  const out = SAMPLE.encode({ ...SAMPLE_VALUE, word: 7 });
  const stored = new DataView(out.buffer).getUint32(4, true);
  const zeroed = out.slice();
  zeroed.fill(0, 4, 8);
  assert.equal(stored, crc32cRef(zeroed));
  assert.ok(SAMPLE.checksumOk(out));
});

test('encode refuses missing fields, bad u64 values and a short target buffer', () => {
  const { word, ...noWord } = SAMPLE_VALUE;
  assert.equal(word, 0x12345678);
  const e = assertVhdxError(() => SAMPLE.encode(noWord as typeof SAMPLE_VALUE), 'BAD_ARGUMENT', 'EINVAL'); // deliberately missing `word`
  assert.match(e.message, /word/);
  assertVhdxError(() => SAMPLE.encode({ ...SAMPLE_VALUE, offset: 2 ** 53 }), 'BAD_ARGUMENT', 'EINVAL');
  assertVhdxError(() => SAMPLE.encode({ ...SAMPLE_VALUE, offset: -1 }), 'BAD_ARGUMENT', 'EINVAL');
  assertVhdxError(() => SAMPLE.encode({ ...SAMPLE_VALUE, offset: 1.5 }), 'BAD_ARGUMENT', 'EINVAL');
  assertVhdxError(() => SAMPLE.encode({ ...SAMPLE_VALUE, id: 'nope' }), 'BAD_ARGUMENT', 'EINVAL');
  assertVhdxError(() => SAMPLE.encode(SAMPLE_VALUE, new Uint8Array(70), 8), 'BAD_ARGUMENT', 'EINVAL');
});

test('u64: 2^53 - 1 decodes; 2^53 and above throw EOVERFLOW / NUMBER_TOO_LARGE', () => {
  const b = SAMPLE_FIXTURE.slice();
  const view = new DataView(b.buffer);
  view.setBigUint64(16, 2n ** 53n - 1n, true);
  SAMPLE.seal(b);
  assert.equal(SAMPLE.decode(b).offset, Number.MAX_SAFE_INTEGER);
  assertBytesEqual(SAMPLE.encode(SAMPLE.decode(b)), b);

  for (const big of [2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n]) {
    view.setBigUint64(16, big, true);
    SAMPLE.seal(b);
    const e = assertVhdxError(() => SAMPLE.decode(b, { fileOffset: 0x30000 }), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
    assert.ok(e instanceof VhdxError);
    assert.match(e.message, /offset/, 'names the field');
    assert.match(e.message, new RegExp(`0x${big.toString(16)}`), 'shows the value');
    assert.match(e.message, /sample at file offset 0x30010/, 'names the structure and the field offset');
    assert.equal(e.structure, 'sample');
    assert.equal(e.offset, 0x30010);
    // lenient skips signature and checksum checks, not number range checks.
    assertVhdxError(() => SAMPLE.decode(b, { lenient: true }), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
  }
});

test('u64big keeps the full range', () => {
  const b = SAMPLE_FIXTURE.slice();
  new DataView(b.buffer).setBigUint64(24, 0x8000000000000001n, true);
  SAMPLE.seal(b);
  assert.equal(SAMPLE.decode(b).sequence, 0x8000000000000001n);
  assertBytesEqual(SAMPLE.encode(SAMPLE.decode(b)), b);
});

test('bad signature: BAD_SIGNATURE naming the structure and its file offset', () => {
  const b = SAMPLE_FIXTURE.slice();
  b[0] = 0x53; // "Smpl"
  SAMPLE.seal(b);
  const e = assertVhdxError(() => SAMPLE.decode(b, { fileOffset: 0x10000 }), 'BAD_SIGNATURE', 'EINVAL');
  assert.match(e.message, /sample at file offset 0x10000/);
  assert.match(e.message, /"Smpl"/);
  assert.equal(e.structure, 'sample');
  assert.equal(e.offset, 0x10000);
  const named = assertVhdxError(() => SAMPLE.decode(b, { name: 'sample 2', fileOffset: 0x20000 }), 'BAD_SIGNATURE');
  assert.match(named.message, /sample 2 at file offset 0x20000/);
  assert.equal(named.structure, 'sample 2');
});

test('bad checksum: BAD_CHECKSUM naming the structure and its file offset', () => {
  const b = SAMPLE_FIXTURE.slice();
  b[12]! ^= 0x01; // one bit of "word"
  const e = assertVhdxError(() => SAMPLE.decode(b, { fileOffset: 0x20000 }), 'BAD_CHECKSUM', 'EINVAL');
  assert.match(e.message, /sample at file offset 0x20000/);
  assert.equal(e.offset, 0x20000);
  assert.equal(SAMPLE.checksumOk(b), false);
  // Without fileOffset the offset is 0.
  assert.equal(assertVhdxError(() => SAMPLE.decode(b), 'BAD_CHECKSUM').offset, 0);
  // The checksum field itself damaged.
  const c = SAMPLE_FIXTURE.slice();
  c[4]! ^= 0x80;
  assertVhdxError(() => SAMPLE.decode(c), 'BAD_CHECKSUM');
  // An uncovered byte is still inside the checksum.
  const d = SAMPLE_FIXTURE.slice();
  d[62] = 1;
  assertVhdxError(() => SAMPLE.decode(d), 'BAD_CHECKSUM');
});

test('short buffer: SHORT_READ (EIO), even when lenient', () => {
  const e = assertVhdxError(() => SAMPLE.decode(SAMPLE_FIXTURE.subarray(0, 63), { fileOffset: 4096 }), 'SHORT_READ', 'EIO');
  assert.match(e.message, /sample at file offset 0x1000/);
  assert.match(e.message, /64/);
  assertVhdxError(() => SAMPLE.decode(new Uint8Array(0)), 'SHORT_READ', 'EIO');
  assertVhdxError(() => SAMPLE.decode(SAMPLE_FIXTURE.subarray(1), { lenient: true }), 'SHORT_READ', 'EIO');
});

test('a longer buffer decodes from its start; the checksum covers only the structure', () => {
  const b = new Uint8Array(100).fill(0x55);
  b.set(SAMPLE_FIXTURE);
  assert.equal(SAMPLE.decode(b).word, 0x12345678);
  assert.ok(SAMPLE.checksumOk(b));
});

test('lenient skips the signature and checksum checks and still decodes the fields', () => {
  const b = SAMPLE_FIXTURE.slice();
  b.set([0x58, 0x58, 0x58, 0x58], 0); // "XXXX", checksum now stale too
  b[8] = 0x01;
  assertVhdxError(() => SAMPLE.decode(b), 'BAD_SIGNATURE');
  const v = SAMPLE.decode(b, { lenient: true });
  assert.equal(v.signature, 'XXXX');
  assert.equal(v.small, 1);
  assert.equal(v.checksum, new DataView(SAMPLE_FIXTURE.buffer).getUint32(4, true));
  const c = SAMPLE_FIXTURE.slice();
  c[8] = 0x02;
  assertVhdxError(() => SAMPLE.decode(c), 'BAD_CHECKSUM');
  assert.equal(SAMPLE.decode(c, { lenient: true }).small, 2);
});

test('seal recomputes the checksum in place; checksumOk reports it', () => {
  const b = SAMPLE_FIXTURE.slice();
  b[13] = 0x99;
  assert.equal(SAMPLE.checksumOk(b), false);
  SAMPLE.seal(b);
  assert.equal(SAMPLE.checksumOk(b), true);
  assert.equal(SAMPLE.decode(b).word, 0x12349978);
  assert.equal(new DataView(b.buffer).getUint32(4, true), crc32cWithZeroField(b, 4));
});

test('structures without a checksum: checksumOk is true and seal changes nothing', () => {
  const PLAIN = defineStruct('plain', 8, { a: { at: 0, type: u32 }, b: { at: 4, type: u16 } });
  const b = hex`01 00 00 00 02 00 ff ff`;
  assert.ok(PLAIN.checksumOk(b));
  PLAIN.seal(b);
  assertBytesEqual(b, hex`01 00 00 00 02 00 ff ff`);
  assert.deepEqual(PLAIN.decode(b), { a: 1, b: 2 });
  // Bytes 6 and 7 belong to no field: encode writes zeros there.
  assertBytesEqual(PLAIN.encode(PLAIN.decode(b)), hex`01 00 00 00 02 00 00 00`);
});

test('decoded raw bytes are a copy, not a view of the input', () => {
  const b = SAMPLE_FIXTURE.slice();
  const v = SAMPLE.decode(b);
  b[56] = 0;
  assertBytesEqual(v.raw, hex`de ad be ef`);
});

test('defineStruct rejects a field that does not fit', () => {
  assert.throws(() => defineStruct('bad', 8, { x: { at: 6, type: u32 } }), /outside 8 bytes/);
  assert.throws(() => defineStruct('bad', 8, { x: { at: -1, type: u8 } }), /outside/);
});
