// src/codec/guid.ts: GUIDs in Microsoft's mixed-endian layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NIL_GUID, decodeGuid, encodeGuid, isGuid, isNilGuid, normalizeGuid, randomGuid } from '../../src/codec/guid.js';
import { VhdxError } from '../../src/errors.js';
import { assertBytesEqual, assertVhdxError, hex, seededBytes } from '../helpers/hex.js';

// {2DC27766-F623-4200-9D64-115E9BFD4A08}, the BAT region GUID, as stored on disk.
const BAT_REGION_GUID = hex`
  66 77 c2 2d                    # Data1 0x2DC27766, u32 little-endian
  23 f6                          # Data2 0xF623, u16 little-endian
  00 42                          # Data3 0x4200, u16 little-endian
  9d 64 11 5e 9b fd 4a 08        # Data4, 8 bytes as written
`;

test('decodeGuid reads the mixed-endian layout', () => {
  assert.equal(decodeGuid(BAT_REGION_GUID), '2dc27766-f623-4200-9d64-115e9bfd4a08');
  // The metadata GUIDs of the notes, as Hyper-V stores them.
  assert.equal(decodeGuid(hex`37 67 a1 ca 36 fa 43 4d b3 b6 33 f0 aa 44 e7 6b`), 'caa16737-fa36-4d43-b3b6-33f0aa44e76b');
  assert.equal(decodeGuid(hex`06 a2 7c 8b 90 47 9a 4b b8 fe 57 5f 05 0f 88 6e`), '8b7ca206-4790-4b9a-b8fe-575f050f886e');
});

test('decodeGuid at an offset', () => {
  const b = hex`ff ff ff ${BAT_REGION_GUID} ee`;
  assert.equal(decodeGuid(b, 3), '2dc27766-f623-4200-9d64-115e9bfd4a08');
});

test('decodeGuid distinguishes each byte position', () => {
  const b = hex`00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f`;
  assert.equal(decodeGuid(b), '03020100-0504-0706-0809-0a0b0c0d0e0f');
});

test('encodeGuid writes the mixed-endian layout, from any accepted spelling', () => {
  for (const text of [
    '{2DC27766-F623-4200-9D64-115E9BFD4A08}',
    '2DC27766-F623-4200-9D64-115E9BFD4A08',
    '2dc27766-f623-4200-9d64-115e9bfd4a08',
    '{2dc27766-F623-4200-9d64-115E9BFD4a08}',
  ]) {
    const b = new Uint8Array(16);
    encodeGuid(text, b);
    assertBytesEqual(b, BAT_REGION_GUID, text);
  }
});

test('encodeGuid at an offset touches only its 16 bytes', () => {
  const b = new Uint8Array(20).fill(0xaa);
  encodeGuid('2dc27766-f623-4200-9d64-115e9bfd4a08', b, 2);
  assertBytesEqual(b, hex`aa aa ${BAT_REGION_GUID} aa aa`);
});

test('round trips: text -> bytes -> text and bytes -> text -> bytes', () => {
  for (let i = 0; i < 50; i++) {
    const bytes = seededBytes(100 + i, 16);
    const text = decodeGuid(bytes);
    assert.ok(isGuid(text));
    assert.equal(text, text.toLowerCase());
    const again = new Uint8Array(16);
    encodeGuid(text, again);
    assertBytesEqual(again, bytes);
    encodeGuid(`{${text.toUpperCase()}}`, again);
    assertBytesEqual(again, bytes);
  }
  const g = randomGuid();
  const b = new Uint8Array(16);
  encodeGuid(g, b);
  assert.equal(decodeGuid(b), normalizeGuid(g));
});

test('normalizeGuid accepts braces and any case and gives lowercase without braces', () => {
  assert.equal(normalizeGuid('{B04AEFB7-D19E-4A81-B789-25B8E9445913}'), 'b04aefb7-d19e-4a81-b789-25b8e9445913');
  assert.equal(normalizeGuid('B04AEFB7-D19E-4A81-B789-25B8E9445913'), 'b04aefb7-d19e-4a81-b789-25b8e9445913');
  assert.equal(normalizeGuid('b04aefb7-d19e-4a81-b789-25b8e9445913'), 'b04aefb7-d19e-4a81-b789-25b8e9445913');
});

test('bad GUID text throws VhdxError EINVAL / BAD_ARGUMENT', () => {
  for (const bad of [
    '',
    'not a guid',
    '2dc27766f6234200 9d64115e9bfd4a08',
    '2dc27766f62342009d64115e9bfd4a08', // no dashes
    '2dc27766-f623-4200-9d64-115e9bfd4a0', // one digit short
    '2dc27766-f623-4200-9d64-115e9bfd4a088', // one digit long
    '2dc2776-6f623-4200-9d64-115e9bfd4a08', // groups misplaced
    '2dc27766-f623-4200-9d64-115e9bfd4a0g', // not hex
    ' 2dc27766-f623-4200-9d64-115e9bfd4a08', // whitespace
    '{{2dc27766-f623-4200-9d64-115e9bfd4a08}}',
    '{2dc27766-f623-4200-9d64-115e9bfd4a08', // unbalanced braces
    '2dc27766-f623-4200-9d64-115e9bfd4a08}',
  ]) {
    const e = assertVhdxError(() => normalizeGuid(bad), 'BAD_ARGUMENT', 'EINVAL');
    assert.ok(e instanceof VhdxError);
    assert.equal(isGuid(bad), false, bad);
    assertVhdxError(() => encodeGuid(bad, new Uint8Array(16)), 'BAD_ARGUMENT', 'EINVAL');
  }
});

test('NIL_GUID, isNilGuid and randomGuid', () => {
  assert.equal(NIL_GUID, '00000000-0000-0000-0000-000000000000');
  assert.equal(decodeGuid(new Uint8Array(16)), NIL_GUID);
  assert.ok(isNilGuid(NIL_GUID));
  assert.ok(!isNilGuid('00000000-0000-0000-0000-000000000001'));
  const a = randomGuid();
  const b = randomGuid();
  assert.ok(isGuid(a) && isGuid(b));
  assert.notEqual(a, b);
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a version 4 GUID');
});
