// src/format/file-identifier.ts: the file type identifier at offset 0 (MS-VHDX §2.2.1).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FILE_IDENTIFIER } from '../../src/format/file-identifier.js';
import { assertBytesEqual, assertRoundTrip, assertVhdxError, hex, padTo, utf16le } from '../helpers/hex.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import {
  FILE_IDENTIFIER_FIXTURE,
  FILE_IDENTIFIER_FULL_CREATOR_FIXTURE,
  FILE_IDENTIFIER_FULL_CREATOR_VALUE,
  FILE_IDENTIFIER_NO_CREATOR_FIXTURE,
  FILE_IDENTIFIER_VALUE,
} from './fixtures/file-identifier.js';

test('the structure: 8-byte signature and 512-byte creator, 520 bytes, no checksum', () => {
  assert.equal(FILE_IDENTIFIER.size, 520);
  assert.deepEqual(Object.keys(FILE_IDENTIFIER.fields), ['signature', 'creator']);
  assert.equal(FILE_IDENTIFIER.fields.creator.at, 8);
  assert.ok(FILE_IDENTIFIER.checksumOk(FILE_IDENTIFIER_FIXTURE));
});

test('Hyper-V identifier: decode and encode(decode) identity', () => {
  const v = assertRoundTrip(FILE_IDENTIFIER, FILE_IDENTIFIER_FIXTURE, FILE_IDENTIFIER_VALUE);
  assert.deepEqual(v, FILE_IDENTIFIER_VALUE);
  assertBytesEqual(FILE_IDENTIFIER.encode({ creator: FILE_IDENTIFIER_VALUE.creator }), FILE_IDENTIFIER_FIXTURE);
});

test('an empty creator', () => {
  assert.deepEqual(assertRoundTrip(FILE_IDENTIFIER, FILE_IDENTIFIER_NO_CREATOR_FIXTURE), { signature: 'vhdxfile', creator: '' });
  assertBytesEqual(FILE_IDENTIFIER.encode({ creator: '' }), FILE_IDENTIFIER_NO_CREATOR_FIXTURE);
});

test('a creator filling all 512 bytes, without a NUL, non-ASCII included', () => {
  assertRoundTrip(FILE_IDENTIFIER, FILE_IDENTIFIER_FULL_CREATOR_FIXTURE, FILE_IDENTIFIER_FULL_CREATOR_VALUE);
  // A longer creator is cut at 256 code units.
  const longer = FILE_IDENTIFIER.encode({ creator: FILE_IDENTIFIER_FULL_CREATOR_VALUE.creator + 'overflow' });
  assertBytesEqual(longer, FILE_IDENTIFIER_FULL_CREATOR_FIXTURE);
});

test('encode of any creator text round-trips (UTF-16 code units, surrogate pairs included)', () => {
  for (const creator of ['qemu-img', 'Ünïcödé ✓', 'emoji \u{1f600} pair', 'd2v']) {
    const b = FILE_IDENTIFIER.encode({ creator });
    assertBytesEqual(b.subarray(8, 8 + creator.length * 2), utf16le(creator));
    assert.equal(FILE_IDENTIFIER.decode(b).creator, creator);
    assertBytesEqual(FILE_IDENTIFIER.encode(FILE_IDENTIFIER.decode(b)), b);
  }
});

test('the creator ends at the first NUL character', () => {
  const b = padTo(hex`76 68 64 78 66 69 6c 65  41 00 00 00 42 00`, 520); // "A", NUL, "B"
  assert.equal(FILE_IDENTIFIER.decode(b).creator, 'A');
});

test('a wrong signature is BAD_SIGNATURE naming the file identifier at offset 0', () => {
  for (const sig of [hex`76 68 64 78 66 69 6c 66` /* vhdxfilf */, hex`63 6f 6e 65 63 74 69 78` /* conectix (VHD) */, new Uint8Array(8)]) {
    const b = FILE_IDENTIFIER_FIXTURE.slice();
    b.set(sig, 0);
    const e = assertVhdxError(() => FILE_IDENTIFIER.decode(b), 'BAD_SIGNATURE', 'EINVAL');
    assert.match(e.message, /file identifier at file offset 0x0/);
    assert.equal(FILE_IDENTIFIER.decode(b, { lenient: true }).creator, FILE_IDENTIFIER_VALUE.creator);
  }
});

test('a buffer shorter than 520 bytes is SHORT_READ', () => {
  assertVhdxError(() => FILE_IDENTIFIER.decode(FILE_IDENTIFIER_FIXTURE.subarray(0, 519)), 'SHORT_READ', 'EIO');
});

test('corpus: iotest-dynamic-1G.vhdx starts with the fixture, and the rest of its 64 KiB slot is zero', { skip: needCorpus('iotest-dynamic-1G.vhdx.gz') }, async () => {
  const slot = await corpusBytes('iotest-dynamic-1G.vhdx.gz', 0, 65536);
  assertBytesEqual(slot.subarray(0, 520), FILE_IDENTIFIER_FIXTURE);
  assert.ok(slot.subarray(520).every((x) => x === 0));
  assertRoundTrip(FILE_IDENTIFIER, slot.subarray(0, 520), FILE_IDENTIFIER_VALUE);
});
