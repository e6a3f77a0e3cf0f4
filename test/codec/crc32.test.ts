// src/codec/crc32.ts: CRC-32 (IEEE), the checksum of GPT headers and entry arrays.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32, crc32Update, crc32WithZeroField } from '../../src/codec/crc32.js';
import { decodeUuid } from '../../src/codec/guid.js';
import { createHash } from 'node:crypto';
import * as zlib from 'node:zlib';
const zlibCrc32 = zlib.crc32;

const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);

test('published CRC-32 check values', () => {
  assert.equal(crc32(new Uint8Array(0)), 0);
  assert.equal(crc32(ascii('123456789')), 0xcbf43926); // the catalogue "check" value
  assert.equal(crc32(ascii('The quick brown fox jumps over the lazy dog')), 0x414fa339);
});

test('CRC-32 agrees with zlib on random data, in one piece or several', { skip: typeof zlibCrc32 !== 'function' && 'zlib.crc32 needs Node >= 20.15' }, () => {
  const data = new Uint8Array(createHash('sha512').update('gpt').digest().buffer.slice(0)).subarray(0, 61);
  assert.equal(crc32(data), zlibCrc32(data));
  assert.equal(crc32Update(crc32(data.subarray(0, 17)), data.subarray(17)), zlibCrc32(data));
});

test('crc32WithZeroField sums as if the field were zero, without changing the bytes', () => {
  const data = ascii('EFI PART....header with a checksum field');
  const copy = data.slice();
  copy.fill(0, 8, 12);
  assert.equal(crc32WithZeroField(data, 8), crc32(copy));
  assert.equal(new TextDecoder().decode(data.subarray(8, 12)), '....');
});

test('decodeUuid prints bytes in stored order (RFC 4122), unlike the mixed-endian GUID', () => {
  const b = Uint8Array.from({ length: 16 }, (_, i) => i);
  assert.equal(decodeUuid(b), '00010203-0405-0607-0809-0a0b0c0d0e0f');
});
