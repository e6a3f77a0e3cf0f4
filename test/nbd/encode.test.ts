// The NBD reply encoders on their own, without a socket: every reply form byte for byte against
// bytes written out by hand from the protocol, the choice between a simple reply and a chunk,
// error messages cut at a character boundary, and how block status becomes base:allocation
// flags and READ replies of data and hole chunks.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  putSimpleReply,
  putChunkHeader,
  putNoneChunk,
  putDataChunkHeader,
  putHoleChunk,
  putBlockStatusChunk,
  putErrorChunk,
  blockStatusChunkSize,
  simpleReply,
  successReply,
  errorReply,
  extentStatus,
  statusPairs,
  readPieces,
  readReplySize,
  type ReadPiece,
} from '../../src/nbd/encode.js';
import type { Extent } from '../../src/device/block-device.js';
import { CMD, ERR } from './client.js';

const COOKIE = 0x0102030405060708n;
const U64_MAX = 2n ** 64n - 1n;
/** Bytes from hex written with spaces between fields. */
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
/** A buffer of `n` bytes filled with 0xee, so that bytes an encoder leaves alone show. */
const blank = (n: number): Buffer => Buffer.alloc(n, 0xee);

describe('NBD reply encoders', () => {
  it('simple reply: magic, error, cookie; written where asked, nothing around it touched', () => {
    const out = blank(16);
    assert.equal(putSimpleReply(out, 0, COOKIE, 0), 16);
    assert.deepEqual(out, hex('67446698 00000000 0102030405060708'));
    const at = blank(24);
    assert.equal(putSimpleReply(at, 4, U64_MAX, ERR.ENOSPC), 20);
    assert.deepEqual(at, hex('eeeeeeee 67446698 0000001c ffffffffffffffff eeeeeeee'));
    assert.deepEqual(simpleReply(0n, ERR.EPERM), hex('67446698 00000001 0000000000000000'));
  });

  it('chunk header and NONE chunk', () => {
    const out = blank(20);
    assert.equal(putChunkHeader(out, 0, 1, 5, COOKIE, 12), 20);
    assert.deepEqual(out, hex('668e33ef 0001 0005 0102030405060708 0000000c'));
    assert.equal(putNoneChunk(out, 0, U64_MAX), 20);
    assert.deepEqual(out, hex('668e33ef 0001 0000 ffffffffffffffff 00000000'));
  });

  it('OFFSET_DATA chunk: header and a 64-bit offset; the data goes where it says', () => {
    const out = blank(32);
    assert.equal(putDataChunkHeader(out, 0, true, COOKIE, 0x123456789a, 4), 28);
    assert.deepEqual(out, hex('668e33ef 0001 0001 0102030405060708 0000000c 000000123456789a eeeeeeee'));
    const at = blank(30);
    assert.equal(putDataChunkHeader(at, 2, false, COOKIE, 2 ** 53 - 1, 2), 30);
    assert.deepEqual(at, hex('eeee 668e33ef 0000 0001 0102030405060708 0000000a 001fffffffffffff'));
  });

  it('OFFSET_HOLE chunk: offset and length', () => {
    const out = blank(32);
    assert.equal(putHoleChunk(out, 0, false, COOKIE, 4096, 0x10000), 32);
    assert.deepEqual(out, hex('668e33ef 0000 0002 0102030405060708 0000000c 0000000000001000 00010000'));
    putHoleChunk(out, 0, true, COOKIE, 2 ** 40, 0xffffffff);
    assert.deepEqual(out, hex('668e33ef 0001 0002 0102030405060708 0000000c 0000010000000000 ffffffff'));
  });

  it('BLOCK_STATUS chunk: context id, then a length and flags per extent', () => {
    assert.equal(blockStatusChunkSize(2), 40);
    const out = blank(40);
    assert.equal(putBlockStatusChunk(out, 0, COOKIE, 1, [4096, 0, 0x100000, 3]), 40);
    assert.deepEqual(out, hex('668e33ef 0001 0005 0102030405060708 00000014 00000001  00001000 00000000  00100000 00000003'));
  });

  it('ERROR chunk: errno, message length, message', () => {
    const out = blank(30);
    assert.equal(putErrorChunk(out, 0, COOKIE, ERR.EINVAL, Buffer.from('bad')), 29);
    assert.deepEqual(out, hex('668e33ef 0001 8001 0102030405060708 00000009 00000016 0003 626164 ee'));
  });

  it('errors go in a chunk for READ and BLOCK_STATUS once structured replies are on, in a simple reply otherwise', () => {
    const chunk = hex('668e33ef 0001 8001 0102030405060708 00000008 00000016 0002 6e6f');
    const simple = hex('67446698 00000016 0102030405060708');
    const rows: [number, boolean, Buffer][] = [
      [CMD.READ, true, chunk],
      [CMD.BLOCK_STATUS, true, chunk],
      [CMD.WRITE, true, simple],
      [CMD.FLUSH, true, simple],
      [CMD.TRIM, true, simple],
      [CMD.WRITE_ZEROES, true, simple],
      [CMD.CACHE, true, simple],
      [42, true, simple],
      [CMD.READ, false, simple],
      [CMD.BLOCK_STATUS, false, simple],
    ];
    for (const [command, structured, expected] of rows) {
      assert.deepEqual(errorReply(command, COOKIE, ERR.EINVAL, 'no', structured), expected, `command ${command}, structured ${structured}`);
    }
  });

  it('success with nothing to carry: a NONE chunk for a structured READ, a simple reply otherwise', () => {
    const none = hex('668e33ef 0001 0000 0102030405060708 00000000');
    const simple = hex('67446698 00000000 0102030405060708');
    assert.deepEqual(successReply(CMD.READ, COOKIE, true), none);
    assert.deepEqual(successReply(CMD.READ, COOKIE, false), simple);
    for (const command of [CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES, CMD.CACHE]) assert.deepEqual(successReply(command, COOKIE, true), simple);
  });

  it('error messages are cut to 200 bytes at a character boundary (qemu drops chunks over 1000)', () => {
    const message = (text: string): string => {
      const out = errorReply(CMD.READ, COOKIE, ERR.EIO, text, true);
      const n = out.readUInt16BE(24);
      assert.equal(out.readUInt32BE(16), 6 + n, 'chunk length');
      assert.equal(out.length, 26 + n);
      return out.subarray(26).toString('utf8');
    };
    assert.equal(message('x'.repeat(200)), 'x'.repeat(200));
    assert.equal(message('x'.repeat(300)), 'x'.repeat(200));
    assert.equal(message('a' + 'é'.repeat(150)), 'a' + 'é'.repeat(99)); // 199 bytes: the next é would end at 201
    assert.equal(message('ab' + '😀'.repeat(60)), 'ab' + '😀'.repeat(49)); // 198 bytes
    assert.equal(message(''), '');
  });
});

describe('block status into replies', () => {
  const data = (offset: number, length: number): Extent => ({ offset, length, type: 'data' });
  // Zeros with storage behind them (a fixed disk's zero blocks): ZERO alone, as qemu-nbd reports them.
  const zero = (offset: number, length: number): Extent => ({ offset, length, type: 'zero', stored: true });
  const unallocated = (offset: number, length: number): Extent => ({ offset, length, type: 'unallocated' });

  it('base:allocation flags: data 0, stored zeros ZERO, unallocated HOLE|ZERO, or 0 where it shows a parent', () => {
    assert.equal(extentStatus(data(0, 1), true), 0);
    assert.equal(extentStatus(zero(0, 1), true), 2);
    assert.equal(extentStatus(zero(0, 1), false), 2);
    assert.equal(extentStatus({ offset: 0, length: 1, type: 'zero' }, true), 3, 'zeros without storage are a hole');
    assert.equal(extentStatus({ offset: 0, length: 1, type: 'zero' }, false), 3);
    assert.equal(extentStatus(unallocated(0, 1), true), 3);
    assert.equal(extentStatus(unallocated(0, 1), false), 0);
  });

  it('status pairs: clamped to the request, equal neighbours merged, gaps as data, at most `max`, never empty', () => {
    const K = 4096;
    const rows: [string, Extent[], number, number, number, boolean, number[]][] = [
      ['one extent past both ends', [data(0, 16 * K)], K, K, 8, true, [K, 0]],
      ['one pair per kind', [data(0, K), zero(K, K), unallocated(2 * K, 2 * K)], 0, 4 * K, 8, true, [K, 0, K, 2, 2 * K, 3]],
      ['clamped at both ends', [data(0, K), zero(K, K)], 1000, 4000, 8, true, [K - 1000, 0, 5000 - K, 2]],
      ['equal neighbours merged', [data(0, K), data(K, K), zero(2 * K, K), unallocated(3 * K, K)], 0, 4 * K, 8, false, [2 * K, 0, K, 2, K, 0]],
      ['an undescribed gap is data', [data(0, K), zero(2 * K, K)], 0, 3 * K, 8, true, [2 * K, 0, K, 2]],
      ['REQ_ONE: one pair', [data(0, K), zero(K, K)], 0, 2 * K, 1, true, [K, 0]],
      ['at most max pairs', [data(0, K), zero(K, K), data(2 * K, K), zero(3 * K, K)], 0, 4 * K, 3, true, [K, 0, K, 2, K, 0]],
      ['no extents: all data', [], 0, K, 8, true, [K, 0]],
      ['extents before the request skipped', [zero(0, K), data(K, K)], K, K, 8, true, [K, 0]],
    ];
    for (const [why, extents, offset, length, max, isZero, expected] of rows) {
      assert.deepEqual(statusPairs(extents, offset, length, max, isZero), expected, why);
    }
  });

  it('READ pieces: holes for what reads as zeros, data for the rest; one data chunk when holes do not pay for their headers', () => {
    const K = 4096;
    const hole = (offset: number, length: number): ReadPiece => ({ offset, length, hole: true });
    const bytes = (offset: number, length: number): ReadPiece => ({ offset, length, hole: false });
    const rows: [string, Extent[], number, number, boolean, ReadPiece[] | null][] = [
      ['inside one data extent', [data(0, 16 * K)], K, K, true, null],
      ['data then a hole', [data(0, K), zero(K, 15 * K)], 0, 16 * K, true, [bytes(0, K), hole(K, 15 * K)]],
      ['all hole', [unallocated(0, 16 * K)], K, 2 * K, true, [hole(K, 2 * K)]],
      ['unallocated showing a parent is data', [unallocated(0, K), zero(K, K)], 0, 2 * K, false, [bytes(0, K), hole(K, K)]],
      ['an 8-byte hole does not pay for two more headers', [data(0, K), zero(K, 8), data(K + 8, K)], 0, 2 * K, true, null],
      ['undescribed ranges are data', [zero(K, K)], 0, 3 * K, true, [bytes(0, K), hole(K, K), bytes(2 * K, K)]],
    ];
    for (const [why, extents, offset, length, isZero, expected] of rows) {
      assert.deepEqual(readPieces(extents, offset, length, isZero), expected, why);
    }
    assert.equal(readReplySize([bytes(0, K), hole(K, 15 * K)]), 28 + K + 32);
  });
});
