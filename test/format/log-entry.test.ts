// src/format/log-entry.ts: parsing log entries and finding the active sequence in the ring (MS-VHDX §2.3.3).
// Rings are built by hand: entries made with the format encoders, their checksum computed over
// EntryLength bytes with the checksum field taken as zero, then laid into the ring (wrapping).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkSequenceTargets, findActiveSequence, parseLogEntry } from '../../src/format/log-entry.js';
import type { LogEntry, LogSequence, LogWrite } from '../../src/format/log-entry.js';
import {
  LOG_DATA_DESCRIPTOR,
  LOG_DATA_SECTOR,
  LOG_ENTRY_HEADER,
  LOG_ZERO_DESCRIPTOR,
  descriptorSectors,
} from '../../src/format/log.js';
import { crc32cWithZeroField } from '../../src/codec/crc32c.js';
import { corpusManifest } from '../helpers/env.js';
import { assertBytesEqual, assertVhdxError, concat, seededBytes } from '../helpers/hex.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import * as LF from '../format/fixtures/log.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GUID = '0d1e2f30-4152-6374-8596-a7b8c9dae0f1';
const OTHER_GUID = 'f0e1d2c3-b4a5-9687-7869-5a4b3c2d1e0f';

/** 4 KiB of recognisable data. */
const sector = (seed: number): Uint8Array => seededBytes(seed, 4096);

/**
 * One log entry. `writes` are { kind: 'data', fileOffset, data } (4 KiB) or
 * { kind: 'zero', fileOffset, length }, in descriptor order; data sectors follow the descriptor
 * sectors in the same order.
 */
interface EntryOptions {
  seq: number | bigint;
  tail: number;
  guid?: string;
  writes?: LogWrite[];
  flushed?: number;
  last?: number;
}

function buildEntry({ seq, tail, guid = GUID, writes = [], flushed = 4 * MiB, last = 4 * MiB }: EntryOptions): Uint8Array {
  const seqN = BigInt(seq);
  const descSectors = descriptorSectors(writes.length);
  const dataCount = writes.filter((w) => w.kind === 'data').length;
  const entry = new Uint8Array((descSectors + dataCount) * 4096);
  LOG_ENTRY_HEADER.encode(
    {
      checksum: 0,
      entryLength: entry.length,
      tail,
      sequenceNumber: seqN,
      descriptorCount: writes.length,
      reserved: 0,
      logGuid: guid,
      flushedFileOffset: flushed,
      lastFileOffset: last,
    },
    entry,
    0,
  );
  let dataSector = descSectors;
  writes.forEach((w, i) => {
    const at = 64 + i * 32;
    if (w.kind === 'zero') {
      LOG_ZERO_DESCRIPTOR.encode({ reserved: 0, zeroLength: w.length, fileOffset: w.fileOffset, sequenceNumber: seqN }, entry, at);
    } else {
      LOG_DATA_DESCRIPTOR.encode(
        { trailingBytes: w.data.subarray(4092), leadingBytes: w.data.subarray(0, 8), fileOffset: w.fileOffset, sequenceNumber: seqN },
        entry,
        at,
      );
      LOG_DATA_SECTOR.encode(
        { sequenceHigh: Number(seqN >> 32n), data: w.data.subarray(8, 4092), sequenceLow: Number(seqN & 0xffffffffn) },
        entry,
        dataSector * 4096,
      );
      dataSector++;
    }
  });
  return seal(entry);
}

/** Recompute an entry's checksum over its EntryLength bytes (after patching it). */
function seal(entry: Uint8Array): Uint8Array {
  const view = new DataView(entry.buffer, entry.byteOffset, entry.byteLength);
  const length = Math.min(view.getUint32(8, true), entry.length);
  view.setUint32(4, crc32cWithZeroField(entry.subarray(0, length), 4), true);
  return entry;
}

/** Lay `entry` into `ring` at `offset`, wrapping at the ring's end. */
function place(ring: Uint8Array, offset: number, entry: Uint8Array): Uint8Array {
  for (let i = 0; i < entry.length; i++) ring[(offset + i) % ring.length] = entry[i]!;
  return ring;
}

/** A ring of `size` bytes holding entries: [offset, entryOptions] pairs. */
type Placed = [offset: number, entry: EntryOptions];

function ringWith(size: number, ...placed: Placed[]): Uint8Array {
  const ring = new Uint8Array(size);
  for (const [offset, opts] of placed) place(ring, offset, buildEntry(opts));
  return ring;
}

/** An entry with one 4 KiB data write (8 KiB long). */
const oneWrite = (seq: number, tail: number, extra: Partial<EntryOptions> = {}): EntryOptions => ({ seq, tail, writes: [{ kind: 'data', fileOffset: 2 * MiB + seq * 4096, data: sector(seq) }], ...extra });

/** The writes of a parsed log entry, in order (entries decode them from the ring on each walk). */
function entryWrites(entry: LogEntry | null): LogWrite[] {
  assert.ok(entry, 'a valid entry');
  const writes: LogWrite[] = [];
  entry.forEachWrite((w) => writes.push(w));
  return writes;
}

/** The bytes of a write that must be a data write. */
function dataOf(w: LogWrite | undefined): Uint8Array {
  assert.ok(w?.kind === 'data', 'a data write');
  return w.data;
}

const offsetsOf = (seqOrNull: LogSequence | null) => seqOrNull && seqOrNull.entries.map((e) => e.logOffset);
const seqsOf = (seqOrNull: LogSequence | null) => seqOrNull && seqOrNull.entries.map((e) => e.header.sequenceNumber);

// parseLogEntry ----------------------------------------------------------------------------

test('parseLogEntry: the hand-written hex entry fixture (format/fixtures/log.js)', () => {
  const ring = new Uint8Array(64 * KiB);
  ring.set(LF.LOG_ENTRY_FIXTURE, 0);
  const e = parseLogEntry(ring, 0, LF.LOG_GUID);
  assert.ok(e, 'a valid entry');
  assert.equal(e.logOffset, 0);
  assert.deepEqual({ ...e.header, checksum: 0 }, { ...LF.LOG_ENTRY_HEADER_VALUE, checksum: 0, tail: 0 });
  assert.equal(entryWrites(e).length, 1);
  const [w] = entryWrites(e);
  assert.equal(w?.kind, 'data');
  assert.equal(w.fileOffset, 3 * MiB);
  assertBytesEqual(w.data, concat(LF.LOG_DATA_DESCRIPTOR_VALUE.leadingBytes, LF.DATA_SECTOR_PAYLOAD, LF.LOG_DATA_DESCRIPTOR_VALUE.trailingBytes));
  assert.equal(parseLogEntry(ring, 0, GUID), null, 'another LogGuid');
  assert.equal(parseLogEntry(ring, 4096, LF.LOG_GUID), null, 'a data sector is not an entry');
  assert.equal(parseLogEntry(ring, 8192, LF.LOG_GUID), null, 'zeros are not an entry');
});

test('parseLogEntry: data and zero descriptors in order, data rebuilt from descriptor and sector', () => {
  const a = sector(1);
  const b = sector(2);
  const entry = buildEntry({
    seq: 0x100000002n,
    tail: 0,
    writes: [
      { kind: 'data', fileOffset: 2 * MiB, data: a },
      { kind: 'zero', fileOffset: 8 * MiB, length: MiB },
      { kind: 'data', fileOffset: 2 * MiB + 4096, data: b },
    ],
    flushed: 9 * MiB,
    last: 12 * MiB,
  });
  assert.equal(entry.length, 3 * 4096);
  const ring = place(new Uint8Array(16 * 4096), 0, entry);
  const e = parseLogEntry(ring, 0, GUID);
  assert.ok(e);
  assert.equal(e.header.sequenceNumber, 0x100000002n);
  assert.equal(e.header.flushedFileOffset, 9 * MiB);
  assert.equal(e.header.lastFileOffset, 12 * MiB);
  assert.deepEqual(entryWrites(e).map((w) => [w.kind, w.fileOffset, w.kind === 'zero' ? w.length : w.data.length]), [
    ['data', 2 * MiB, 4096],
    ['zero', 8 * MiB, MiB],
    ['data', 2 * MiB + 4096, 4096],
  ]);
  assertBytesEqual(dataOf(entryWrites(e)[0]), a);
  assertBytesEqual(dataOf(entryWrites(e)[2]), b);
});

test('parseLogEntry: an entry with no descriptors and more descriptors than fit one sector', () => {
  const ring = new Uint8Array(64 * 4096);
  place(ring, 0, buildEntry({ seq: 1, tail: 0 }));
  assert.deepEqual(entryWrites(parseLogEntry(ring, 0, GUID)), []);
  const zeros = Array.from({ length: 130 }, (_, i): LogWrite => ({ kind: 'zero', fileOffset: (4 + i) * MiB, length: 4096 }));
  const big = buildEntry({ seq: 2, tail: 8192, writes: [...zeros, { kind: 'data', fileOffset: 3 * MiB, data: sector(9) }] });
  assert.equal(big.length, 3 * 4096, 'two descriptor sectors and one data sector');
  place(ring, 8192, big);
  const e = parseLogEntry(ring, 8192, GUID);
  assert.ok(e);
  assert.equal(entryWrites(e).length, 131);
  assert.deepEqual(entryWrites(e)[129], { kind: 'zero', fileOffset: 133 * MiB, length: 4096 });
  assertBytesEqual(dataOf(entryWrites(e)[130]), sector(9));
});

test('parseLogEntry rejects (null) every kind of invalid entry', () => {
  const good = () => buildEntry(oneWrite(5, 0));
  const patch = (fn: (v: DataView, e: Uint8Array) => unknown, resealAfter = true): Uint8Array => {
    const e = good();
    fn(new DataView(e.buffer), e);
    return resealAfter ? seal(e) : e;
  };
  const ring = (entry: Uint8Array, size = 16 * 4096): Uint8Array => place(new Uint8Array(size), 0, entry);
  assert.ok(parseLogEntry(ring(good()), 0, GUID), 'the unpatched entry is valid');

  const cases: Record<string, Uint8Array> = {
    'data sector damaged (checksum)': patch((_v, e) => (e[6000]! ^= 1), false),
    'checksum field damaged': patch((_v, e) => (e[4]! ^= 1), false),
    'bad signature': patch((_v, e) => (e[0] = 0x4c)),
    'sequence number 0': buildEntry(oneWrite(0, 0)),
    'EntryLength not a multiple of 4 KiB': patch((v) => v.setUint32(8, 8192 + 512, true)),
    'EntryLength 0': patch((v) => v.setUint32(8, 0, true)),
    'EntryLength beyond the ring': patch((v) => v.setUint32(8, 32 * 4096, true)),
    'Tail not 4 KiB aligned': patch((v) => v.setUint32(12, 100, true)),
    'Tail beyond the ring': patch((v) => v.setUint32(12, 16 * 4096, true)),
    'descriptor sequence number differs': patch((v) => v.setUint32(64 + 24, 6, true)),
    'data sector SequenceLow differs': patch((v) => v.setUint32(4096 + 4092, 6, true)),
    'data sector SequenceHigh differs': patch((v) => v.setUint32(4096 + 4, 1, true)),
    'data sector signature': patch((_v, e) => (e[4096] = 0x44)),
    'unknown descriptor signature': patch((_v, e) => e.set([0x6a, 0x75, 0x6e, 0x6b], 64)),
    'descriptor count larger than written': patch((v) => v.setUint32(24, 2, true)),
    'descriptor count absurd': patch((v) => v.setUint32(24, 0xffffffff, true)),
    'data descriptor file offset not 4 KiB aligned': patch((v) => v.setUint32(64 + 16, 2 * MiB + 512, true)),
    'FlushedFileOffset beyond 2^53': patch((v) => v.setUint32(48 + 4, 0x00200000, true)),
  };
  for (const [what, entry] of Object.entries(cases)) assert.equal(parseLogEntry(ring(entry), 0, GUID), null, what);

  // Data descriptors with no data sector left for them.
  const short = buildEntry({ seq: 5, tail: 0, writes: [{ kind: 'data', fileOffset: 2 * MiB, data: sector(1) }, { kind: 'data', fileOffset: 3 * MiB, data: sector(2) }] });
  new DataView(short.buffer).setUint32(8, 8192, true);
  assert.equal(parseLogEntry(ring(seal(short.subarray(0, 8192))), 0, GUID), null, 'more data descriptors than data sectors');
  // Zero descriptors must be 4 KiB aligned in offset and length.
  const zeroAt = (fileOffset: number, length: number): Uint8Array => buildEntry({ seq: 5, tail: 0, writes: [{ kind: 'zero', fileOffset, length }] });
  assert.ok(parseLogEntry(ring(zeroAt(MiB, 8192)), 0, GUID));
  assert.equal(parseLogEntry(ring(zeroAt(MiB + 512, 8192)), 0, GUID), null, 'zero descriptor offset');
  assert.equal(parseLogEntry(ring(zeroAt(MiB, 8192 + 512)), 0, GUID), null, 'zero descriptor length');
});

test('parseLogEntry reads an entry that wraps around the end of the ring', () => {
  const entry = buildEntry({ seq: 9, tail: 8192, writes: [{ kind: 'data', fileOffset: 2 * MiB, data: sector(3) }, { kind: 'data', fileOffset: 5 * MiB, data: sector(4) }] });
  const ring = place(new Uint8Array(4 * 4096), 2 * 4096, entry); // sectors 2, 3, then 0
  const e = parseLogEntry(ring, 8192, GUID);
  assert.ok(e);
  assertBytesEqual(dataOf(entryWrites(e)[0]), sector(3));
  assertBytesEqual(dataOf(entryWrites(e)[1]), sector(4), 'its second data sector is at the ring start');
});

// findActiveSequence -----------------------------------------------------------------------

test('an empty ring has no sequence', () => {
  assert.equal(findActiveSequence(new Uint8Array(MiB), GUID), null);
});

test('a single entry', () => {
  const ring = ringWith(64 * KiB, [16 * KiB, oneWrite(42, 16 * KiB)]);
  const s = findActiveSequence(ring, GUID);
  assert.ok(s, 'an active sequence');
  assert.deepEqual(offsetsOf(s), [16 * KiB]);
  assert.equal(s.head, s.entries[0]);
  assert.equal(s.head.header.sequenceNumber, 42n);
  assertBytesEqual(dataOf(entryWrites(s.head)[0]), sector(42));
});

test('a sequence of three, applied tail to head', () => {
  const ring = ringWith(64 * KiB, [0, oneWrite(1, 0)], [8 * KiB, oneWrite(2, 0)], [16 * KiB, oneWrite(3, 0)]);
  const s = findActiveSequence(ring, GUID);
  assert.ok(s, 'an active sequence');
  assert.deepEqual(offsetsOf(s), [0, 8 * KiB, 16 * KiB]);
  assert.deepEqual(seqsOf(s), [1n, 2n, 3n]);
  assert.equal(s.head.logOffset, 16 * KiB);
  assert.deepEqual(s.entries.map((e) => entryWrites(e)[0]?.fileOffset), [2 * MiB + 4096, 2 * MiB + 8192, 2 * MiB + 12288]);
});

test('a sequence wrapping around the ring end, its last entry split in two', () => {
  // 40 KiB ring; 12 KiB entries (a descriptor sector and two data sectors) at 12, 24 and 36 KiB:
  // the third runs from 36 KiB to the end and on from 0 to 8 KiB.
  const two = (seq: number): EntryOptions => ({
    seq,
    tail: 12 * KiB,
    writes: [
      { kind: 'data', fileOffset: 2 * MiB, data: sector(seq * 10) },
      { kind: 'data', fileOffset: 3 * MiB, data: sector(seq * 10 + 1) },
    ],
  });
  const ring = ringWith(40 * KiB, [12 * KiB, two(7)], [24 * KiB, two(8)], [36 * KiB, two(9)]);
  const s = findActiveSequence(ring, GUID);
  assert.ok(s, 'an active sequence');
  assert.deepEqual(offsetsOf(s), [12 * KiB, 24 * KiB, 36 * KiB]);
  assert.deepEqual(seqsOf(s), [7n, 8n, 9n]);
  assertBytesEqual(dataOf(entryWrites(s.head)[0]), sector(90));
  assertBytesEqual(dataOf(entryWrites(s.head)[1]), sector(91));
});

test('a sequence continuing from the ring end to its start', () => {
  // 32 KiB ring: entries at 16 KiB and 24 KiB, then at 0.
  const ring = ringWith(32 * KiB, [16 * KiB, oneWrite(11, 16 * KiB)], [24 * KiB, oneWrite(12, 16 * KiB)], [0, oneWrite(13, 16 * KiB)]);
  assert.deepEqual(offsetsOf(findActiveSequence(ring, GUID)), [16 * KiB, 24 * KiB, 0]);
});

test("the head's tail points into the chain: the sequence starts there", () => {
  const ring = ringWith(64 * KiB, [0, oneWrite(5, 0)], [8 * KiB, oneWrite(6, 0)], [16 * KiB, oneWrite(7, 8 * KiB)], [24 * KiB, oneWrite(8, 8 * KiB)]);
  const s = findActiveSequence(ring, GUID);
  assert.ok(s, 'an active sequence');
  assert.deepEqual(offsetsOf(s), [8 * KiB, 16 * KiB, 24 * KiB], 'entry 5 is older than the tail');
  assert.deepEqual(seqsOf(s), [6n, 7n, 8n]);
});

test("a head whose tail lies outside its chain makes no sequence", () => {
  // Entry 21's tail names 40 KiB, where nothing valid is.
  const ring = ringWith(64 * KiB, [0, oneWrite(20, 0)], [8 * KiB, oneWrite(21, 40 * KiB)]);
  // From 0 the chain is 20, 21 with head 21: tail outside. From 8 KiB: 21 alone, same.
  assert.equal(findActiveSequence(ring, GUID), null);
});

test('a corrupt middle entry: the older valid sequence is chosen', () => {
  // 1 (tail 0), 2 (tail 0), 3, 4, 5 (tail 8 KiB): the active sequence is 2..5.
  const placed: Placed[] = [
    [0, oneWrite(1, 0)],
    [8 * KiB, oneWrite(2, 0)],
    [16 * KiB, oneWrite(3, 8 * KiB)],
    [24 * KiB, oneWrite(4, 8 * KiB)],
    [32 * KiB, oneWrite(5, 8 * KiB)],
  ];
  const ring = ringWith(64 * KiB, ...placed);
  assert.deepEqual(seqsOf(findActiveSequence(ring, GUID)), [2n, 3n, 4n, 5n]);
  ring[24 * KiB + 5000]! ^= 0xff; // entry 4's data sector: its checksum fails
  assert.equal(parseLogEntry(ring, 24 * KiB, GUID), null);
  const s = findActiveSequence(ring, GUID);
  assert.ok(s, 'an active sequence');
  // 5 alone has its tail outside; 1..3 is the valid chain, its head 3 with tail 8 KiB.
  assert.deepEqual(seqsOf(s), [2n, 3n]);
  assert.equal(s.head.header.sequenceNumber, 3n);
});

test('a corrupt middle entry: no valid sequence at all', () => {
  // 5 (tail 24 KiB, long overwritten), 6 (tail 0), 7 (tail 0).
  const ring = ringWith(64 * KiB, [0, oneWrite(5, 24 * KiB)], [8 * KiB, oneWrite(6, 0)], [16 * KiB, oneWrite(7, 0)]);
  assert.deepEqual(seqsOf(findActiveSequence(ring, GUID)), [5n, 6n, 7n]);
  ring[8 * KiB + 100]! ^= 1; // damage entry 6 (inside its descriptor sector)
  assert.equal(findActiveSequence(ring, GUID), null);
});

test('a gap in the sequence numbers ends the chain', () => {
  const ring = ringWith(64 * KiB, [0, oneWrite(1, 0)], [8 * KiB, oneWrite(3, 0)]);
  // 1 alone is a sequence; 3 alone has its tail outside.
  assert.deepEqual(seqsOf(findActiveSequence(ring, GUID)), [1n]);
});

test('of two valid sequences, the one with the higher head wins, wherever it lies', () => {
  const newFirst = ringWith(64 * KiB, [0, oneWrite(20, 0)], [8 * KiB, oneWrite(21, 0)], [32 * KiB, oneWrite(10, 32 * KiB)], [40 * KiB, oneWrite(11, 32 * KiB)]);
  assert.deepEqual(seqsOf(findActiveSequence(newFirst, GUID)), [20n, 21n]);
  const newLast = ringWith(64 * KiB, [0, oneWrite(10, 0)], [8 * KiB, oneWrite(11, 0)], [32 * KiB, oneWrite(20, 32 * KiB)], [40 * KiB, oneWrite(21, 32 * KiB)]);
  assert.deepEqual(seqsOf(findActiveSequence(newLast, GUID)), [20n, 21n]);
});

test('entries of another LogGuid are ignored', () => {
  const ring = ringWith(
    64 * KiB,
    [0, oneWrite(100, 0, { guid: OTHER_GUID })],
    [8 * KiB, oneWrite(101, 0, { guid: OTHER_GUID })],
    [16 * KiB, oneWrite(1, 16 * KiB)],
    [24 * KiB, oneWrite(2, 16 * KiB)],
  );
  assert.deepEqual(seqsOf(findActiveSequence(ring, GUID)), [1n, 2n], 'the higher sequence of the other log is not chosen');
  assert.deepEqual(seqsOf(findActiveSequence(ring, OTHER_GUID)), [100n, 101n]);
  assert.equal(findActiveSequence(ring, '11111111-2222-3333-4444-555555555555'), null);
});

test('an entry of another LogGuid breaks a chain even when its sequence number fits', () => {
  const ring = ringWith(64 * KiB, [0, oneWrite(1, 0)], [8 * KiB, oneWrite(2, 0, { guid: OTHER_GUID })], [16 * KiB, oneWrite(3, 0)]);
  assert.deepEqual(seqsOf(findActiveSequence(ring, GUID)), [1n]);
});

test('a sequence filling the whole ring', () => {
  const entries = Array.from({ length: 8 }, (_, i): Placed => [i * 8 * KiB, oneWrite(i + 1, 0)]);
  const s = findActiveSequence(ringWith(64 * KiB, ...entries), GUID);
  assert.ok(s, 'an active sequence');
  assert.deepEqual(seqsOf(s), [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]);
  // The same, the tail in the middle of the ring and the head just before it.
  const rotated = Array.from({ length: 8 }, (_, i): Placed => [((i + 4) % 8) * 8 * KiB, oneWrite(i + 1, 32 * KiB)]);
  const r = findActiveSequence(ringWith(64 * KiB, ...rotated), GUID);
  assert.ok(r, 'an active sequence');
  assert.deepEqual(seqsOf(r), [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]);
  assert.equal(r.head.logOffset, 24 * KiB);
});

test('a long chain of single-sector entries in a 1 MiB ring', () => {
  const ring = new Uint8Array(MiB);
  for (let i = 0; i < 256; i++) place(ring, i * 4096, buildEntry({ seq: 1000 + i, tail: 64 * 4096 }));
  const s = findActiveSequence(ring, GUID);
  assert.ok(s, 'an active sequence');
  assert.equal(s.entries.length, 192, 'from the tail at entry 64 to the head');
  assert.equal(s.entries[0]?.logOffset, 64 * 4096);
  assert.equal(s.head.header.sequenceNumber, 1255n);
});

// checkSequenceTargets ---------------------------------------------------------------------

test('checkSequenceTargets: region tables and beyond are allowed; the identifier and headers are not', () => {
  const seqWith = (fileOffset: number): LogSequence => {
    const seq = findActiveSequence(ringWith(64 * KiB, [0, { seq: 1, tail: 0, writes: [{ kind: 'data', fileOffset, data: sector(1) }] }]), GUID);
    assert.ok(seq);
    return seq;
  };
  checkSequenceTargets(seqWith(192 * KiB), MiB);
  checkSequenceTargets(seqWith(256 * KiB), MiB);
  checkSequenceTargets(seqWith(3 * MiB), MiB);
  for (const bad of [0, 64 * KiB, 128 * KiB, 188 * KiB]) {
    const e = assertVhdxError(() => checkSequenceTargets(seqWith(bad), MiB), 'LOG_REPLAY_FAILED', 'EINVAL');
    assert.equal(e.offset, MiB, 'names the entry by its file offset');
  }
});

// Corpus -----------------------------------------------------------------------------------

const corpusLogs = (corpusManifest() ?? []).filter((e) => e.dirtyLog);
for (const entry of corpusLogs) {
  test(`corpus: ${entry.file}: the log's valid entries and active sequence`, { skip: needCorpus(entry.file) }, async () => {
    const { HEADER } = await import('../../src/format/header.js');
    const headerAt = async (at: number) => HEADER.decode(await corpusBytes(entry.file, at, 4096));
    const [h1, h2] = await Promise.all([headerAt(64 * KiB), headerAt(128 * KiB)]);
    const h = h1.sequenceNumber > h2.sequenceNumber ? h1 : h2;
    const log = await corpusBytes(entry.file, h.logOffset, h.logLength);
    const valid: LogEntry[] = [];
    for (let o = 0; o < log.length; o += 4096) {
      const e = parseLogEntry(log, o, h.logGuid);
      if (e) valid.push(e);
    }
    // The manifest: "log: N valid entries for current LogGuid (1 desc, ...)".
    const m = /log: (\d+) valid entries for current LogGuid \(([^)]*)\)/.exec(entry.notes ?? '');
    assert.ok(m, 'the manifest describes the log');
    assert.equal(valid.length, Number(m[1]));
    assert.deepEqual(valid.map((e) => `${e.header.descriptorCount} desc`), m[2]!.split(','));
    const s = findActiveSequence(log, h.logGuid);
    assert.ok(s, 'an active sequence');
    assert.ok(s.entries.includes(s.head));
    assert.equal(s.head.header.sequenceNumber, valid.reduce((max, e) => (e.header.sequenceNumber > max ? e.header.sequenceNumber : max), 0n));
    assert.equal(s.entries[0]!.logOffset, s.head.header.tail);
    for (let i = 1; i < s.entries.length; i++) assert.equal(s.entries[i]!.header.sequenceNumber, s.entries[i - 1]!.header.sequenceNumber + 1n);
    checkSequenceTargets(s, h.logOffset);
  });
}

test('corpus: iotest-dirtylog-10G-4M.vhdx: six entries of earlier logs are ignored, one BAT write replays', { skip: needCorpus('iotest-dirtylog-10G-4M.vhdx.gz') }, async () => {
  const log = await corpusBytes('iotest-dirtylog-10G-4M.vhdx.gz', MiB, MiB);
  const s = findActiveSequence(log, 'c82755bc-427f-1245-b72c-da70aaabe031');
  assert.ok(s, 'an active sequence');
  assert.deepEqual(offsetsOf(s), [48 * KiB]);
  assert.equal(s.head.header.sequenceNumber, 7n);
  assert.deepEqual(entryWrites(s.head).map((w) => [w.kind, w.fileOffset]), [['data', 2 * MiB]]);
  // Each older entry is valid for its own LogGuid (QEMU wrote one log per session).
  const older: (bigint | undefined)[] = [];
  for (let o = 0; o < 48 * KiB; o += 8 * KiB) {
    const guid = LOG_ENTRY_HEADER.decode(log.subarray(o)).logGuid;
    assert.notEqual(guid, 'c82755bc-427f-1245-b72c-da70aaabe031');
    assert.equal(parseLogEntry(log, o, 'c82755bc-427f-1245-b72c-da70aaabe031'), null);
    older.push(parseLogEntry(log, o, guid)?.header.sequenceNumber);
  }
  assert.deepEqual(older, [1n, 2n, 3n, 4n, 5n, 6n]);
});
