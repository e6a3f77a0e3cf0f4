// src/codec/crc32c.ts: CRC-32C (Castagnoli), the checksum of every VHDX structure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32c, crc32cUpdate, crc32cWithZeroField } from '../../src/codec/crc32c.js';
import { crc32cRef, hex, seededBytes, seededRandom } from '../helpers/hex.js';

const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);

test('published CRC-32C check values', () => {
  assert.equal(crc32c(new Uint8Array(0)), 0);
  assert.equal(crc32c(ascii('123456789')), 0xe3069283); // the catalogue "check" value
  assert.equal(crc32c(ascii('a')), 0xc1d04330);
  assert.equal(crc32c(ascii('abc')), 0x364b3fb7);
  assert.equal(crc32c(ascii('The quick brown fox jumps over the lazy dog')), 0x22620404);
});

test('iSCSI test vectors (RFC 3720 appendix B.4)', () => {
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa); // 32 bytes of zeros
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43); // 32 bytes of 0xff
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e); // 00 01 .. 1f
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c); // 1f 1e .. 00
  const readPdu = hex`
    01 c0 00 00 00 00 00 00 00 00 00 00 00 00 00 00   # iSCSI read (10) command PDU
    14 00 00 00 00 00 04 00 00 00 00 14 00 00 00 18
    28 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00
  `;
  assert.equal(readPdu.length, 48);
  assert.equal(crc32c(readPdu), 0xd9963a56);
});

test('results are unsigned 32-bit numbers', () => {
  const c = crc32c(ascii('123456789')); // 0xe3069283
  assert.ok(c > 0x7fffffff, 'a value with the top bit set stays positive');
  assert.equal(c, c >>> 0);
});

test('the slicing-by-8 code agrees with a bitwise reference at every length and alignment', () => {
  const data = seededBytes(1, 300);
  for (let start = 0; start < 9; start++) {
    for (let len = 0; start + len <= 160; len++) {
      const b = data.subarray(start, start + len);
      assert.equal(crc32c(b), crc32cRef(b), `start ${start}, length ${len}`);
    }
  }
  const big = seededBytes(2, 65536);
  assert.equal(crc32c(big), crc32cRef(big));
});

test('runs of zero bytes (skipped without the tables) give the reference CRC wherever they fall', () => {
  // Zero pieces are found 512 bytes at a time from the start of each update; runs that start,
  // end or lie between those boundaries, long and short, at the start, middle and end.
  const rnd = seededRandom(5);
  for (let t = 0; t < 200; t++) {
    const n = Math.floor(rnd() * (t < 20 ? 140000 : 5000));
    const b = new Uint8Array(n);
    for (let i = 0; i < n; ) {
      const len = 1 + Math.floor(rnd() * (rnd() < 0.5 ? 40 : 3000));
      if (rnd() < 0.4) for (let j = i; j < Math.min(n, i + len); j++) b[j] = 1 + Math.floor(rnd() * 255);
      i += len;
    }
    assert.equal(crc32c(b), crc32cRef(b), `case ${t}, ${n} bytes`);
    const cut = Math.floor(rnd() * (n + 1));
    assert.equal(crc32cUpdate(crc32cUpdate(0, b.subarray(0, cut)), b.subarray(cut)), crc32cRef(b), `case ${t} split at ${cut}`);
  }
  for (const n of [511, 512, 513, 1024, 4096, 65536, 1 << 20]) assert.equal(crc32c(new Uint8Array(n)), crc32cRef(new Uint8Array(n)), `${n} zeros`);
  // A header-like buffer: a few fields, then zero padding to 4 KiB.
  const header = new Uint8Array(4096);
  header.set(seededBytes(6, 80));
  assert.equal(crc32c(header), crc32cRef(header));
});

test('crc32cUpdate chained over any split equals the one-shot CRC', () => {
  const data = seededBytes(3, 100);
  const whole = crc32c(data);
  for (let cut = 0; cut <= data.length; cut++) {
    const c = crc32cUpdate(crc32cUpdate(0, data.subarray(0, cut)), data.subarray(cut));
    assert.equal(c, whole, `split at ${cut}`);
  }
  // Three pieces, odd sizes, crossing the 8-byte inner loop boundaries.
  let c = 0;
  for (const [a, b] of [[0, 3], [3, 20], [20, 61], [61, 100]]) c = crc32cUpdate(c, data.subarray(a, b));
  assert.equal(c, whole);
  // An empty update changes nothing.
  assert.equal(crc32cUpdate(whole, new Uint8Array(0)), whole);
  assert.equal(crc32cUpdate(0, data), whole);
});

test('crc32cWithZeroField equals the CRC of a copy with the 4-byte field zeroed', () => {
  const data = seededBytes(4, 4096);
  const before = data.slice();
  for (const at of [0, 1, 4, 7, 8, 1000, 4088, 4092]) {
    const copy = data.slice();
    copy.fill(0, at, at + 4);
    assert.equal(crc32cWithZeroField(data, at), crc32c(copy), `field at ${at}`);
    assert.equal(crc32cWithZeroField(data, at), crc32cRef(copy), `field at ${at} (reference)`);
  }
  assert.deepEqual(data, before, 'the input is not modified');
  // The field's own content does not matter.
  const other = data.slice();
  other.set([1, 2, 3, 4], 4);
  assert.equal(crc32cWithZeroField(other, 4), crc32cWithZeroField(data, 4));
  assert.notEqual(crc32c(other), crc32c(data));
});

test('a stored checksum verifies: CRC with the field zeroed equals the field', () => {
  // A 4 KiB "header" with a checksum at offset 4, sealed the way VHDX does it.
  const b = seededBytes(5, 4096);
  b.fill(0, 4, 8);
  const crc = crc32c(b);
  new DataView(b.buffer).setUint32(4, crc, true);
  assert.equal(crc32cWithZeroField(b, 4), crc);
  b[100]! ^= 1;
  assert.notEqual(crc32cWithZeroField(b, 4), crc, 'a single flipped bit is detected');
});
