// The log writer's entries round-trip through the log parser the replay uses.
import test from 'node:test';
import assert from 'node:assert/strict';
import { LogRing } from '../../src/driver/log-writer.js';
import { encodeLogEntry, logEntryLength, maxDataWritesPerEntry } from '../../src/format/log-entry.js';
import { parseLogEntry, findActiveSequence, type LogEntry, type LogWrite } from '../../src/format/log-entry.js';
import { MemorySource, type VhdxError } from '../../src/index.js';

const GUID = '0a1b2c3d-4e5f-4607-8819-2a3b4c5d6e7f';
const KiB = 1024;
const MiB = 1024 * KiB;

function sector(seed: number): Uint8Array {
  const b = new Uint8Array(4096);
  for (let i = 0; i < b.length; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

/** The writes of a parsed log entry, in order (entries decode them from the ring on each walk). */
function entryWrites(entry: LogEntry): LogWrite[] {
  const writes: LogWrite[] = [];
  entry.forEachWrite((w) => writes.push(w));
  return writes;
}

/** The bytes of a write that must be a data write. */
function dataOf(w: LogWrite | undefined): Uint8Array {
  assert.ok(w?.kind === 'data', 'a data write');
  return w.data;
}

function writesOf(nData: number, nZero: number): LogWrite[] {
  const w: LogWrite[] = [];
  for (let i = 0; i < nData; i++) w.push({ kind: 'data', fileOffset: 3 * MiB + i * 4096, data: sector(i + 1) });
  for (let i = 0; i < nZero; i++) w.push({ kind: 'zero', fileOffset: 8 * MiB + i * MiB, length: 64 * KiB });
  return w;
}

function roundTrip(writes: LogWrite[], sequenceNumber = 77n): Uint8Array {
  const entry = encodeLogEntry({ sequenceNumber, tail: 0, logGuid: GUID, flushedFileOffset: 4 * MiB, lastFileOffset: 5 * MiB, writes });
  assert.equal(entry.length, logEntryLength(writes));
  const ring = new Uint8Array(Math.max(MiB, entry.length));
  ring.set(entry, 0);
  const parsed = parseLogEntry(ring, 0, GUID);
  assert.ok(parsed, 'the parser accepts the encoded entry');
  assert.equal(parsed.header.sequenceNumber, sequenceNumber);
  assert.equal(parsed.header.flushedFileOffset, 4 * MiB);
  assert.equal(parsed.header.lastFileOffset, 5 * MiB);
  assert.equal(entryWrites(parsed).length, writes.length);
  writes.forEach((w, i) => {
    const p = entryWrites(parsed)[i];
    assert.equal(p?.kind, w.kind);
    assert.equal(p.fileOffset, w.fileOffset);
    if (w.kind === 'data') assert.deepEqual(dataOf(p), w.data);
    else assert.equal(p.kind === 'zero' && p.length, w.length);
  });
  return entry;
}

test('one data sector round-trips, leading and trailing bytes included', () => {
  const entry = roundTrip(writesOf(1, 0));
  assert.equal(entry.length, 8192, 'one descriptor sector and one data sector');
});

test('zero and data descriptors mixed round-trip', () => {
  roundTrip(writesOf(5, 3));
});

test('more than 126 descriptors spill into further descriptor sectors and round-trip', () => {
  const w = writesOf(200, 60);
  const entry = roundTrip(w, 2n ** 40n + 5n);
  // 260 descriptors: 126 in the first sector, 128 in the second, 6 in the third; 200 data sectors.
  assert.equal(entry.length, (3 + 200) * 4096);
});

test('a damaged entry is refused by the parser', () => {
  const entry = encodeLogEntry({ sequenceNumber: 3n, tail: 0, logGuid: GUID, flushedFileOffset: 0, lastFileOffset: MiB, writes: writesOf(2, 0) });
  const ring = new Uint8Array(MiB);
  ring.set(entry);
  ring[4096 + 100]! ^= 1; // a data byte: the checksum no longer matches
  assert.equal(parseLogEntry(ring, 0, GUID), null);
  ring[4096 + 100]! ^= 1;
  assert.ok(parseLogEntry(ring, 0, GUID));
  assert.equal(parseLogEntry(ring, 0, 'ffffffff-0000-0000-0000-000000000000'), null, 'another LogGuid');
});

test('misaligned writes are refused by the encoder', () => {
  for (const w of <LogWrite[]>[
    { kind: 'data', fileOffset: 100, data: new Uint8Array(4096) },
    { kind: 'data', fileOffset: 4096, data: new Uint8Array(512) },
    { kind: 'zero', fileOffset: 4096, length: 1000 },
  ]) {
    assert.throws(() => encodeLogEntry({ sequenceNumber: 1n, tail: 0, logGuid: GUID, flushedFileOffset: 0, lastFileOffset: 0, writes: [w] }), (e: VhdxError) => e.reason === 'BAD_ARGUMENT');
  }
});

test('maxDataWritesPerEntry is the largest count that fits', () => {
  for (const L of [MiB / 2, MiB, 4 * MiB]) {
    const n = maxDataWritesPerEntry(L);
    assert.ok(logEntryLength(writesOf(n, 0)) <= L);
    assert.ok(logEntryLength(writesOf(n + 1, 0)) > L);
  }
});

test('LogRing places entries one after another, wraps at the end, and the newest is the active sequence', async () => {
  const logOffset = MiB;
  const logLength = MiB;
  const file = new MemorySource(new Uint8Array(3 * MiB));
  const ring = new LogRing(file, logOffset, logLength, GUID);
  let last = 0n;
  // 40 entries of 6 data sectors (28 KiB each: 1 descriptor sector + 6) go round the 1 MiB ring
  // once and wrap; 28 KiB does not divide 1 MiB, so one entry is split across the ring's end.
  for (let i = 0; i < 40; i++) last = await ring.append(writesOf(6, 0).map((w): LogWrite => ({ kind: 'data', fileOffset: w.fileOffset, data: sector(i) })), 2 * MiB, 3 * MiB);
  assert.equal(last, 40n);
  const log = file.bytes().slice(logOffset, logOffset + logLength);
  const seq = findActiveSequence(log, GUID);
  assert.ok(seq);
  assert.equal(seq.head.header.sequenceNumber, 40n);
  assert.equal(seq.entries.length, 1, 'each entry is its own sequence (tail = itself)');
  assert.deepEqual(dataOf(entryWrites(seq.head)[0]), sector(39));
  // Entry 37 starts at 36 x 28 KiB = 1008 KiB and ends 12 KiB into the ring's start.
  const straddler = parseLogEntry(log, 36 * 28 * KiB, GUID);
  assert.ok(straddler, 'an entry split across the ring end parses');
  assert.equal(straddler.header.sequenceNumber, 37n);
  assert.deepEqual(dataOf(entryWrites(straddler)[5]), sector(36), 'its last data sector came from the ring start');
  assert.equal(parseLogEntry(log, 12 * KiB, GUID)?.header.sequenceNumber, 38n, 'the next entry follows the wrap');
  await assert.rejects(ring.append(writesOf(maxDataWritesPerEntry(logLength), 0), 0, 0), (e: VhdxError) => e.reason === 'BAD_ARGUMENT', 'an entry over half the ring is refused');
});
