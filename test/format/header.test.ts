// src/format/header.ts: the 4 KiB header in the slots at 64 KiB and 128 KiB (MS-VHDX §2.2.2).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HEADER } from '../../src/format/header.js';
import { HEADER_OFFSETS } from '../../src/format/constants.js';
import { assertBytesEqual, assertRoundTrip, assertVhdxError, crc32cRef } from '../helpers/hex.js';
import { corpusManifest } from '../helpers/env.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import {
  HEADER_1_FIXTURE,
  HEADER_1_VALUE,
  HEADER_2_FIXTURE,
  HEADER_2_VALUE,
  HEADER_DIRTY_FIXTURE,
  HEADER_DIRTY_VALUE,
} from './fixtures/header.js';

const withoutChecksum = <T extends { checksum: number }>({ checksum, ...rest }: T): Omit<T, 'checksum'> => rest;

test('field offsets follow the notes', () => {
  assert.equal(HEADER.size, 4096);
  const at = Object.fromEntries(Object.entries(HEADER.fields).map(([k, f]) => [k, f.at]));
  assert.deepEqual(at, {
    signature: 0,
    checksum: 4,
    sequenceNumber: 8,
    fileWriteGuid: 16,
    dataWriteGuid: 32,
    logGuid: 48,
    logVersion: 64,
    version: 66,
    logLength: 68,
    logOffset: 72,
  });
  assert.deepEqual(HEADER_OFFSETS, [65536, 131072]);
});

test('header 1 written by Windows: decode (its checksum verifies) and identity', () => {
  const v = assertRoundTrip(HEADER, HEADER_1_FIXTURE, HEADER_1_VALUE);
  assert.deepEqual(v, HEADER_1_VALUE);
  assert.equal(typeof v.sequenceNumber, 'bigint');
});

test('header 2 written by Windows: decode and identity', () => {
  assert.deepEqual(assertRoundTrip(HEADER, HEADER_2_FIXTURE, HEADER_2_VALUE), HEADER_2_VALUE);
});

test('encoding the values reproduces the checksum Windows computed', () => {
  assertBytesEqual(HEADER.encode(withoutChecksum(HEADER_1_VALUE)), HEADER_1_FIXTURE);
  assertBytesEqual(HEADER.encode(withoutChecksum(HEADER_2_VALUE)), HEADER_2_FIXTURE);
});

test('a dirty header: LogGuid set, sequence number beyond 2^53 kept exact, log offset near 2^53', () => {
  const v = assertRoundTrip(HEADER, HEADER_DIRTY_FIXTURE, HEADER_DIRTY_VALUE);
  assert.equal(v.sequenceNumber, 0x8123456789abcdefn);
  const zeroed = HEADER_DIRTY_FIXTURE.slice();
  zeroed.fill(0, 4, 8);
  assert.equal(v.checksum, crc32cRef(zeroed));
  assertBytesEqual(HEADER.encode(HEADER_DIRTY_VALUE), HEADER_DIRTY_FIXTURE); // the value names no checksum
});

test('an update (sequence + 1) changes only the sequence number and the checksum', () => {
  const next = HEADER.encode({ ...HEADER_1_VALUE, sequenceNumber: HEADER_1_VALUE.sequenceNumber + 1n });
  assertBytesEqual(next, HEADER_2_FIXTURE, 'header 1 moved on by one is header 2');
});

test('the checksum covers the whole 4 KiB, reserved bytes included', () => {
  for (const at of [8, 16, 66, 80, 2048, 4095]) {
    const b = HEADER_1_FIXTURE.slice();
    b[at]! ^= 0x40;
    const e = assertVhdxError(() => HEADER.decode(b, { name: 'header 1', fileOffset: 65536 }), 'BAD_CHECKSUM', 'EINVAL');
    assert.match(e.message, /header 1 at file offset 0x10000/);
    assert.equal(e.offset, 65536);
    assert.equal(HEADER.checksumOk(b), false);
    // lenient decodes the damaged copy (check tools do this).
    assert.equal(HEADER.decode(b, { lenient: true }).checksum, 0x37fabb18);
  }
});

test('a wrong signature is BAD_SIGNATURE', () => {
  const b = HEADER_2_FIXTURE.slice();
  b.set([0x48], 0); // "Head"
  HEADER.seal(b);
  const e = assertVhdxError(() => HEADER.decode(b, { name: 'header 2', fileOffset: 131072 }), 'BAD_SIGNATURE', 'EINVAL');
  assert.match(e.message, /header 2 at file offset 0x20000/);
});

test('a log offset at or beyond 2^53 is NUMBER_TOO_LARGE at the field offset', () => {
  const b = HEADER_1_FIXTURE.slice();
  new DataView(b.buffer).setBigUint64(72, 2n ** 53n, true);
  HEADER.seal(b);
  const e = assertVhdxError(() => HEADER.decode(b, { name: 'header 1', fileOffset: 65536 }), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
  assert.match(e.message, /logOffset/);
  assert.equal(e.offset, 65536 + 72);
});

test('a 4 KiB slot read short is SHORT_READ', () => {
  assertVhdxError(() => HEADER.decode(HEADER_1_FIXTURE.subarray(0, 4095)), 'SHORT_READ', 'EIO');
});

test('corpus: both headers of iotest-dynamic-1G.vhdx are the fixtures, sequence numbers 14 and 15', { skip: needCorpus('iotest-dynamic-1G.vhdx.gz') }, async () => {
  const h1 = await corpusBytes('iotest-dynamic-1G.vhdx.gz', 65536, 4096);
  const h2 = await corpusBytes('iotest-dynamic-1G.vhdx.gz', 131072, 4096);
  assertBytesEqual(h1, HEADER_1_FIXTURE);
  assertBytesEqual(h2, HEADER_2_FIXTURE);
  assert.equal(HEADER.decode(h1, { name: 'header 1', fileOffset: 65536 }).sequenceNumber, 14n);
  assert.equal(HEADER.decode(h2, { name: 'header 2', fileOffset: 131072 }).sequenceNumber, 15n);
});

const manifest = corpusManifest() ?? [];
for (const entry of manifest) {
  const seqs = /hdr seq (\d+)\/(\d+)/.exec(entry.notes ?? '');
  test(`corpus: ${entry.file}: both headers decode${seqs ? " with the manifest's sequence numbers" : ''} and round-trip`, { skip: needCorpus(entry.file) }, async () => {
    for (const [i, at] of HEADER_OFFSETS.entries()) {
      const b = await corpusBytes(entry.file, at, 4096);
      const h = HEADER.decode(b, { name: `header ${i + 1}`, fileOffset: at });
      if (seqs) assert.equal(h.sequenceNumber, BigInt(seqs[i + 1]!), `header ${i + 1} sequence number`);
      assert.equal(h.version, 1);
      assert.equal(h.logVersion, 0);
      assert.equal(h.logOffset % 1048576, 0);
      assert.equal(h.logLength % 1048576, 0);
      assert.equal(h.logGuid !== '00000000-0000-0000-0000-000000000000', entry.dirtyLog === true, 'LogGuid set exactly when the log is dirty');
      assertBytesEqual(HEADER.encode(h), b, `encode(decode(header ${i + 1}))`);
    }
  });
}
