// src/format/bat.ts: BAT entry bits and the chunk interleave (MS-VHDX §2.4, §2.5).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BAT_ENTRY_SIZE,
  BitmapState,
  PAYLOAD_STATE_NAMES,
  PayloadState,
  batEntriesToWrite,
  batEntryReservedClear,
  batGeometry,
  bitmapBatIndex,
  decodeBatEntry,
  encodeBatEntry,
  fileOffsetOf,
  payloadBatIndex,
} from '../../src/format/bat.js';
import { assertBytesEqual, seededRandom } from '../helpers/hex.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import { BAT_FIXTURE, BAT_FIXTURE_VALUES, BAT_RESERVED_FIXTURE, BAT_RESERVED_VALUES } from './fixtures/bat.js';

const MiB = 1048576;
const GiB = 1024 * MiB;
const viewOf = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

test('state values follow the notes', () => {
  assert.deepEqual(PayloadState, {
    NOT_PRESENT: 0,
    UNDEFINED: 1,
    ZERO: 2,
    UNMAPPED: 3,
    UNMAPPED_DRAFT: 5,
    FULLY_PRESENT: 6,
    PARTIALLY_PRESENT: 7,
  });
  assert.deepEqual(BitmapState, { NOT_PRESENT: 0, PRESENT: 6 });
  assert.equal(PAYLOAD_STATE_NAMES[5], PAYLOAD_STATE_NAMES[3], 'draft UNMAPPED reads as UNMAPPED');
  assert.equal(PAYLOAD_STATE_NAMES[4], undefined, 'state 4 is not defined');
  assert.equal(BAT_ENTRY_SIZE, 8);
});

test('fixture entries decode to their state and FileOffsetMB', () => {
  const view = viewOf(BAT_FIXTURE);
  assert.equal(BAT_FIXTURE.length, BAT_FIXTURE_VALUES.length * 8);
  BAT_FIXTURE_VALUES.forEach((expected, i) => {
    assert.deepEqual(decodeBatEntry(view, i * 8), expected, `entry ${i}`);
    assert.ok(batEntryReservedClear(view, i * 8), `entry ${i} reserved bits clear`);
  });
  assert.equal(fileOffsetOf(decodeBatEntry(view, 0)), 4 * MiB);
  assert.equal(fileOffsetOf(decodeBatEntry(view, 10 * 8)), 4 * GiB);
});

test('encodeBatEntry(decodeBatEntry(bytes)) is the identity on every valid fixture entry', () => {
  const out = new Uint8Array(BAT_FIXTURE.length).fill(0xcc);
  const view = viewOf(BAT_FIXTURE);
  for (let at = 0; at < BAT_FIXTURE.length; at += 8) encodeBatEntry(viewOf(out), at, decodeBatEntry(view, at));
  assertBytesEqual(out, BAT_FIXTURE);
  // And encoding the expected values gives the fixture.
  const fresh = new Uint8Array(BAT_FIXTURE.length);
  BAT_FIXTURE_VALUES.forEach((v, i) => encodeBatEntry(viewOf(fresh), i * 8, v));
  assertBytesEqual(fresh, BAT_FIXTURE);
});

test('reserved bits 3-19: decode ignores them, batEntryReservedClear reports them, encode clears them', () => {
  const view = viewOf(BAT_RESERVED_FIXTURE);
  BAT_RESERVED_VALUES.forEach((expected, i) => {
    assert.deepEqual(decodeBatEntry(view, i * 8), expected, `entry ${i}`);
    assert.equal(batEntryReservedClear(view, i * 8), false, `entry ${i}`);
  });
  const b = BAT_RESERVED_FIXTURE.slice();
  encodeBatEntry(viewOf(b), 16, decodeBatEntry(viewOf(b), 16));
  assertBytesEqual(b.subarray(16), BAT_FIXTURE.subarray(0, 8), 'FULLY_PRESENT at 4 MiB, reserved bits clear');
  assert.ok(batEntryReservedClear(viewOf(b), 16));
});

test('bit layout: state in bits 0-2, FileOffsetMB in bits 20-63, nothing in bits 3-19', () => {
  const rnd = seededRandom(7);
  const b = new Uint8Array(8);
  const view = viewOf(b);
  const offsets = [0, 1, 4095, 4096, 4097, 2 ** 32, 2 ** 44 - 1];
  for (let i = 0; i < 200; i++) offsets.push(Math.floor(rnd() * 2 ** 44));
  for (const fileOffsetMB of offsets) {
    for (let state = 0; state < 8; state++) {
      encodeBatEntry(view, 0, { state, fileOffsetMB });
      const raw = view.getBigUint64(0, true);
      assert.equal(raw & 7n, BigInt(state));
      assert.equal((raw >> 3n) & 0x1ffffn, 0n, 'reserved bits 3-19');
      assert.equal(raw >> 20n, BigInt(fileOffsetMB), 'bits 20-63');
      assert.deepEqual(decodeBatEntry(view, 0), { state, fileOffsetMB });
    }
  }
});

test('entries are read at their byte offset inside a larger buffer', () => {
  const b = new Uint8Array(40);
  b.set(BAT_FIXTURE.subarray(8 * 8, 9 * 8), 13); // entry 8 at an odd offset
  assert.deepEqual(decodeBatEntry(viewOf(b), 13), { state: 7, fileOffsetMB: 0x12345 });
});

// C = 2^23 x LogicalSectorSize / BlockSize.
const CHUNK_RATIOS = {
  512: { 1: 4096, 2: 2048, 4: 1024, 8: 512, 16: 256, 32: 128, 64: 64, 128: 32, 256: 16 },
  4096: { 1: 32768, 2: 16384, 4: 8192, 8: 4096, 16: 2048, 32: 1024, 64: 512, 128: 256, 256: 128 },
};

test('chunk ratio for 512 and 4096 byte sectors and every block size from 1 to 256 MiB', () => {
  for (const [sector, table] of Object.entries(CHUNK_RATIOS)) {
    for (const [mib, ratio] of Object.entries(table)) {
      const g = batGeometry(GiB, Number(mib) * MiB, Number(sector), false);
      assert.equal(g.chunkRatio, ratio, `${sector}-byte sectors, ${mib} MiB blocks`);
      assert.ok(Number.isInteger(g.chunkRatio));
      // A chunk always covers 2^23 sectors.
      assert.equal(g.chunkRatio * g.blockSize, 2 ** 23 * Number(sector));
    }
  }
});

test('geometry of the corpus disks: payload blocks, bitmap entries, entries needed and written', () => {
  const cases = [
    // virtual size, block size, sector, parent -> P, bitmap entries, needed, written
    { v: GiB, bs: 32 * MiB, s: 512, parent: false, P: 32, B: 1, needed: 32, written: 33 }, // iotest-dynamic-1G
    { v: 10 * GiB, bs: MiB, s: 512, parent: false, P: 10240, B: 3, needed: 10242, written: 10243 }, // iotest-dirtylog (QEMU wrote 10242)
    { v: 256 * MiB, bs: 2 * MiB, s: 512, parent: false, P: 128, B: 1, needed: 128, written: 129 }, // test-disk2vhd
    { v: 100 * MiB, bs: 32 * MiB, s: 512, parent: false, P: 4, B: 1, needed: 4, written: 5 }, // config2_base: a partial last block
    { v: 10 * MiB, bs: 2 * MiB, s: 512, parent: false, P: 5, B: 1, needed: 5, written: 6 }, // fixed
    { v: 8 * GiB, bs: 2 * MiB, s: 512, parent: true, P: 4096, B: 2, needed: 4098, written: 4098 }, // differencing: whole chunks
  ];
  for (const c of cases) {
    const g = batGeometry(c.v, c.bs, c.s, c.parent);
    const label = `${c.v} bytes, ${c.bs}-byte blocks, parent ${c.parent}`;
    assert.equal(g.payloadBlocks, c.P, `${label}: P`);
    assert.equal(g.bitmapBlocks, c.B, `${label}: bitmap entries`);
    assert.equal(g.entriesNeeded, c.needed, `${label}: entries needed`);
    assert.equal(batEntriesToWrite(g, c.parent), c.written, `${label}: entries written`);
    assert.deepEqual([g.virtualSize, g.blockSize, g.logicalSectorSize], [c.v, c.bs, c.s]);
  }
});

test('entries needed at chunk boundaries: P + floor((P - 1) / C) without a parent, whole chunks with one', () => {
  const C = 4096; // 512-byte sectors, 1 MiB blocks: a chunk is 4 GiB
  const at = (blocks: number, parent: boolean) => batGeometry(blocks * MiB, MiB, 512, parent);
  assert.equal(at(1, false).entriesNeeded, 1);
  assert.equal(at(C, false).entriesNeeded, C, 'exactly one chunk: no bitmap entry needed after it');
  assert.equal(batEntriesToWrite(at(C, false), false), C + 1, 'but the writer writes P + ceil(P / C)');
  assert.equal(at(C + 1, false).entriesNeeded, C + 2, 'one block into chunk 1: past the bitmap entry of chunk 0');
  assert.equal(at(2 * C, false).entriesNeeded, 2 * C + 1);
  assert.equal(at(1, true).entriesNeeded, C + 1);
  assert.equal(at(C, true).entriesNeeded, C + 1);
  assert.equal(at(C + 1, true).entriesNeeded, 2 * (C + 1));
  // A size that is not a multiple of the block size rounds up.
  assert.equal(batGeometry(GiB + 512, 32 * MiB, 512, false).payloadBlocks, 33);
  // An empty disk needs no entries.
  const empty = batGeometry(0, MiB, 512, false);
  assert.deepEqual([empty.payloadBlocks, empty.bitmapBlocks, empty.entriesNeeded], [0, 0, 0]);
  // The 64 TiB limit with the smallest blocks.
  const max = batGeometry(64 * 1024 * GiB, MiB, 512, false);
  assert.equal(max.payloadBlocks, 2 ** 26);
  assert.equal(max.bitmapBlocks, 2 ** 14);
  assert.equal(max.entriesNeeded, 2 ** 26 + 2 ** 14 - 1);
  assert.equal(batEntriesToWrite(max, false), 2 ** 26 + 2 ** 14);
});

test('interleave: payload block i at i + floor(i / C), the bitmap entry of chunk k at k(C + 1) + C', () => {
  const g = batGeometry(GiB, 256 * MiB, 512, true); // C = 16
  assert.equal(g.chunkRatio, 16);
  const payload: [number, number][] = [[0, 0], [1, 1], [15, 15], [16, 17], [17, 18], [31, 32], [32, 34], [47, 49], [48, 51]];
  for (const [i, index] of payload) assert.equal(payloadBatIndex(g, i), index, `payload block ${i}`);
  for (const [k, index] of [[0, 16], [1, 33], [2, 50], [3, 67]] as const) assert.equal(bitmapBatIndex(g, k), index, `chunk ${k}`);

  // Over four chunks the two index sets are disjoint and cover every entry once, in order.
  const C = g.chunkRatio;
  const seen = new Map<number, string>();
  for (let i = 0; i < 4 * C; i++) seen.set(payloadBatIndex(g, i), `payload ${i}`);
  for (let k = 0; k < 4; k++) {
    assert.ok(!seen.has(bitmapBatIndex(g, k)), `bitmap entry of chunk ${k} collides with ${seen.get(bitmapBatIndex(g, k))}`);
    seen.set(bitmapBatIndex(g, k), `bitmap ${k}`);
  }
  assert.equal(seen.size, 4 * (C + 1));
  for (let index = 0; index < 4 * (C + 1); index++) assert.ok(seen.has(index), `entry ${index} is used`);
  // The block index comes back from a payload entry's index.
  for (let i = 0; i < 4 * C; i++) {
    const index = payloadBatIndex(g, i);
    assert.equal(index - Math.floor(index / (C + 1)), i);
  }
});

test('the last payload entry is the last one a reader needs', () => {
  for (const [v, bs, s] of [[GiB, 32 * MiB, 512], [10 * GiB, MiB, 512], [40 * GiB, MiB, 4096], [5 * GiB, MiB, 512]] as const) {
    const g = batGeometry(v, bs, s, false);
    assert.equal(payloadBatIndex(g, g.payloadBlocks - 1) + 1, g.entriesNeeded);
    const d = batGeometry(v, bs, s, true);
    assert.equal(bitmapBatIndex(d, d.bitmapBlocks - 1) + 1, d.entriesNeeded);
  }
});

test('corpus: the first BAT entries of iotest-dynamic-1G.vhdx are the fixture', { skip: needCorpus('iotest-dynamic-1G.vhdx.gz') }, async () => {
  const bat = await corpusBytes('iotest-dynamic-1G.vhdx.gz', 3 * MiB, 33 * 8);
  assertBytesEqual(bat.subarray(0, 32), BAT_FIXTURE.subarray(0, 32));
  // 32 payload entries: 3 FULLY_PRESENT then ZERO; entry 32 (the chunk's bitmap slot) is zero.
  const states = Array.from({ length: 33 }, (_, i) => decodeBatEntry(viewOf(bat), i * 8).state);
  assert.deepEqual(states, [6, 6, 6, ...Array(29).fill(2), 0]);
});
