// src/driver/overlay.ts: a read-only view of a source with replayed log writes laid over it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OverlaySource, RANGE_BYTES } from '../../src/driver/overlay.js';
import { MemorySource, type RandomAccessSource } from '../../src/io/source.js';
import type { VhdxError } from '../../src/errors.js';
import { assertBytesEqual, hex, seededRandom } from '../helpers/hex.js';

/** A base of `n` bytes: byte i is (i % 251) + 1, so never zero and easy to predict. */
function baseBytes(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i % 251) + 1);
}

async function readAll(src: RandomAccessSource, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length).fill(0xee);
  const n = await src.read(offset, b);
  return b.subarray(0, n);
}

/** A model of the overlay: a plain byte array. */
class Model {
  readonly bytes: number[];
  constructor(base: Uint8Array) {
    this.bytes = Array.from(base);
  }
  put(start: number, length: number, data: Uint8Array | null): void {
    while (this.bytes.length < start + length) this.bytes.push(0);
    for (let i = 0; i < length; i++) this.bytes[start + i] = data ? data[i]! : 0;
  }
  extendTo(size: number): void {
    while (this.bytes.length < size) this.bytes.push(0);
  }
  read(offset: number, length: number): Uint8Array {
    return Uint8Array.from(this.bytes.slice(offset, offset + length));
  }
}

test('with no segments it reads the base; size is the base size; it is read-only', async () => {
  const base = baseBytes(100);
  const o = new OverlaySource(new MemorySource(base.slice()));
  assert.equal(o.size, 100);
  assert.equal(o.readOnly, true);
  assert.equal(o.segmentCount, 0);
  assertBytesEqual(await readAll(o, 0, 100), base);
  assertBytesEqual(await readAll(o, 37, 10), base.subarray(37, 47));
  const asSource: RandomAccessSource = o; // a write through the source interface, as a caller would try one
  assert.ok(asSource.write, 'an overlay has a write that refuses');
  const e = await asSource.write(0, new Uint8Array(1)).then(
    () => null,
    (err: VhdxError) => err,
  );
  assert.equal(e?.reason, 'READ_ONLY');
  assert.equal(e?.code, 'EROFS');
});

test('a data segment replaces the bytes it covers, and only those', async () => {
  const base = baseBytes(64);
  const o = new OverlaySource(new MemorySource(base.slice()));
  o.put(10, 4, hex`a1 a2 a3 a4`);
  assert.equal(o.segmentCount, 1);
  assert.equal(o.size, 64);
  const got = await readAll(o, 0, 64);
  assertBytesEqual(got.subarray(0, 10), base.subarray(0, 10));
  assertBytesEqual(got.subarray(10, 14), hex`a1 a2 a3 a4`);
  assertBytesEqual(got.subarray(14), base.subarray(14));
  // Reads starting or ending inside the segment.
  assertBytesEqual(await readAll(o, 12, 4), hex`a3 a4 ${base.subarray(14, 16)}`);
  assertBytesEqual(await readAll(o, 8, 3), hex`${base.subarray(8, 10)} a1`);
  assertBytesEqual(await readAll(o, 11, 2), hex`a2 a3`);
});

test('a zero segment (null data) reads as zeros', async () => {
  const base = baseBytes(32);
  const o = new OverlaySource(new MemorySource(base.slice()));
  o.put(4, 8, null);
  const got = await readAll(o, 0, 32);
  assertBytesEqual(got, hex`${base.subarray(0, 4)} 00*8 ${base.subarray(12)}`);
});

test('a later segment replaces an earlier one it covers exactly or entirely', async () => {
  const o = new OverlaySource(new MemorySource(baseBytes(32)));
  o.put(8, 4, hex`11 11 11 11`);
  o.put(8, 4, hex`22 22 22 22`);
  assert.equal(o.segmentCount, 1);
  assertBytesEqual(await readAll(o, 8, 4), hex`22 22 22 22`);
  o.put(4, 12, null); // swallows it
  assert.equal(o.segmentCount, 1);
  assertBytesEqual(await readAll(o, 4, 12), new Uint8Array(12));
});

test('a write into the middle of a segment splits it in three', async () => {
  const o = new OverlaySource(new MemorySource(baseBytes(32)));
  o.put(0, 16, hex`10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f`);
  o.put(6, 3, hex`ff fe fd`);
  assert.equal(o.segmentCount, 3);
  assertBytesEqual(await readAll(o, 0, 16), hex`10 11 12 13 14 15 ff fe fd 19 1a 1b 1c 1d 1e 1f`);
  // Zeros into the middle of a zero segment, data into it.
  const z = new OverlaySource(new MemorySource(baseBytes(32)));
  z.put(0, 16, null);
  z.put(4, 2, hex`77 77`);
  assert.equal(z.segmentCount, 3);
  assertBytesEqual(await readAll(z, 0, 8), hex`00 00 00 00 77 77 00 00`);
});

test('overlapping the ends of two segments trims both', async () => {
  const o = new OverlaySource(new MemorySource(baseBytes(32)));
  o.put(0, 8, hex`a0 a1 a2 a3 a4 a5 a6 a7`);
  o.put(12, 8, hex`b0 b1 b2 b3 b4 b5 b6 b7`);
  o.put(6, 8, hex`c0 c1 c2 c3 c4 c5 c6 c7`);
  assert.equal(o.segmentCount, 3);
  const base = baseBytes(32);
  assertBytesEqual(
    await readAll(o, 0, 24),
    hex`a0 a1 a2 a3 a4 a5 c0 c1 c2 c3 c4 c5 c6 c7 b2 b3 b4 b5 b6 b7 ${base.subarray(20, 24)}`,
  );
});

test('a read straddling several segments and the gaps between them', async () => {
  const base = baseBytes(64);
  const o = new OverlaySource(new MemorySource(base.slice()));
  o.put(40, 4, hex`44 44 44 44`);
  o.put(10, 4, hex`11 11 11 11`);
  o.put(20, 4, null);
  const expected = base.slice();
  expected.set(hex`11 11 11 11`, 10);
  expected.fill(0, 20, 24);
  expected.set(hex`44 44 44 44`, 40);
  assertBytesEqual(await readAll(o, 0, 64), expected);
  assertBytesEqual(await readAll(o, 12, 30), expected.subarray(12, 42));
});

test('extendTo: the file grows, new bytes read as zeros; it never shrinks', async () => {
  const base = baseBytes(16);
  const o = new OverlaySource(new MemorySource(base.slice()));
  o.extendTo(32);
  assert.equal(o.size, 32);
  assertBytesEqual(await readAll(o, 0, 32), hex`${base} 00*16`);
  o.extendTo(8);
  assert.equal(o.size, 32);
  assert.equal(o.segmentCount, 0);
});

test('a segment past the base end extends the file; the gap before it is zeros', async () => {
  const base = baseBytes(16);
  const o = new OverlaySource(new MemorySource(base.slice()));
  o.put(24, 4, hex`d0 d1 d2 d3`);
  assert.equal(o.size, 28);
  assertBytesEqual(await readAll(o, 0, 28), hex`${base} 00*8 d0 d1 d2 d3`);
  // Straddling the base end.
  assertBytesEqual(await readAll(o, 14, 12), hex`${base.subarray(14)} 00*8 d0 d1`);
  // A segment straddling the base end.
  const s = new OverlaySource(new MemorySource(base.slice()));
  s.put(12, 8, hex`e0 e1 e2 e3 e4 e5 e6 e7`);
  assert.equal(s.size, 20);
  assertBytesEqual(await readAll(s, 8, 12), hex`${base.subarray(8, 12)} e0 e1 e2 e3 e4 e5 e6 e7`);
});

test('reads at and past the end are short: only the bytes that exist', async () => {
  const o = new OverlaySource(new MemorySource(baseBytes(16)));
  o.put(16, 4, hex`f0 f1 f2 f3`);
  const b = new Uint8Array(10).fill(0xee);
  assert.equal(await o.read(14, b), 6);
  assertBytesEqual(b, hex`0f 10 f0 f1 f2 f3 ee ee ee ee`, 'bytes after the end are left alone');
  assert.equal(await o.read(20, new Uint8Array(4)), 0);
  assert.equal(await o.read(1000, new Uint8Array(4)), 0);
});

test('a base that returns short reads is read until done', async () => {
  const base = baseBytes(64);
  const inner = new MemorySource(base.slice());
  const dribble = {
    get size() {
      return inner.size;
    },
    readOnly: true,
    read: (offset: number, into: Uint8Array) => inner.read(offset, into.subarray(0, Math.min(3, into.length))),
    close: async () => {},
  };
  const o = new OverlaySource(dribble);
  o.put(30, 2, hex`99 99`);
  const expected = base.slice();
  expected.set([0x99, 0x99], 30);
  assertBytesEqual(await readAll(o, 5, 50), expected.subarray(5, 55));
});

test('close closes the base', async () => {
  let closed = 0;
  const o = new OverlaySource({ size: 0, readOnly: true, read: async () => 0, close: async () => void closed++ });
  await o.close();
  assert.equal(closed, 1);
});

test('random puts, zeros, extensions and reads agree with a byte-array model', async () => {
  const rnd = seededRandom(2024);
  const int = (n: number): number => Math.floor(rnd() * n);
  for (let round = 0; round < 20; round++) {
    const base = baseBytes(200 + int(100));
    const o = new OverlaySource(new MemorySource(base.slice()));
    const model = new Model(base);
    for (let op = 0; op < 40; op++) {
      const kind = int(10);
      if (kind < 5) {
        const start = int(400);
        const length = 1 + int(60);
        const data = Uint8Array.from({ length }, () => int(256));
        o.put(start, length, data);
        model.put(start, length, data);
      } else if (kind < 8) {
        const start = int(400);
        const length = 1 + int(60);
        o.put(start, length, null);
        model.put(start, length, null);
      } else if (kind < 9) {
        const size = int(500);
        o.extendTo(size);
        model.extendTo(size);
      } else {
        assert.equal(o.size, model.bytes.length);
      }
      const offset = int(o.size + 10);
      const length = int(120);
      assertBytesEqual(await readAll(o, offset, length), model.read(offset, length), `round ${round}, op ${op}: read ${offset}+${length}`);
    }
    assertBytesEqual(await readAll(o, 0, o.size), model.read(0, model.bytes.length), `round ${round}: whole file`);
  }
});

test('more writes than one batch: resolving in batches agrees with the byte-array model', async () => {
  // 150,000 puts over 3,000 bytes: resolved several times on the way, later writes winning.
  const rnd = seededRandom(77);
  const int = (n: number): number => Math.floor(rnd() * n);
  const base = baseBytes(2500);
  const o = new OverlaySource(new MemorySource(base.slice()));
  const model = new Model(base);
  for (let op = 0; op < 150000; op++) {
    const start = int(3000);
    const length = 1 + int(40);
    const data = int(3) === 0 ? null : Uint8Array.from({ length }, () => 1 + int(255));
    o.put(start, length, data);
    model.put(start, length, data);
    if (op % 50000 === 49999) assertBytesEqual(await readAll(o, 0, o.size), model.read(0, model.bytes.length), `after ${op + 1} puts`);
  }
  assertBytesEqual(await readAll(o, 0, o.size), model.read(0, model.bytes.length));
  assert.ok(o.segmentCount <= 3000, `${o.segmentCount} ranges over 3,000 bytes`);
});

test('the overlay never holds more ranges than its cap: a put past it is refused', () => {
  const cap = 4096;
  const o = new OverlaySource(new MemorySource(baseBytes(16)), { maxRanges: cap });
  let err: VhdxError | null = null;
  for (let i = 0; i < 100000 && !err; i++) {
    try {
      o.put(2 * i, 1, null); // separate one-byte ranges: none merge
    } catch (e) {
      err = e as VhdxError;
    }
    assert.ok(o.rangesHeld <= cap, `${o.rangesHeld} ranges held after put ${i}`);
  }
  assert.equal(err?.reason, 'LOG_REPLAY_FAILED');
  assert.equal(err?.code, 'ENOTSUP');
  assert.ok(o.bytesHeld <= cap * RANGE_BYTES, `${o.bytesHeld} bytes held`);
});

test('writes repeating over the same bytes keep the ranges those bytes need, whatever their number', () => {
  const o = new OverlaySource(new MemorySource(baseBytes(16)), { maxRanges: 4096 });
  for (let i = 0; i < 500000; i++) o.put(((i * 7) % 100) * 2, 1, null);
  assert.equal(o.segmentCount, 100);
});

test('ranges(): resolved, in order, zeros as null; adjacent zeros and data laid end to end become one range', () => {
  const o = new OverlaySource(new MemorySource(baseBytes(64)));
  o.put(40, 4, null);
  o.put(0, 4, hex`01 02 03 04`);
  o.put(4, 4, hex`05 06 07 08`);
  o.put(44, 4, null);
  o.put(20, 2, hex`aa bb`);
  const got = [...o.ranges()].map((r) => [r.start, r.end, r.data && hex`${r.data}`]);
  assert.deepEqual(got, [
    [0, 8, hex`01 02 03 04 05 06 07 08`],
    [20, 22, hex`aa bb`],
    [40, 48, null],
  ]);
});

test('capSize: the file ends at most there, never before the base or the furthest write', async () => {
  const o = new OverlaySource(new MemorySource(baseBytes(16)));
  o.put(20, 4, hex`d0 d1 d2 d3`);
  o.extendTo(1000);
  o.capSize(100);
  assert.equal(o.size, 100);
  o.capSize(8);
  assert.equal(o.size, 24, 'not before the end of the last write');
  assertBytesEqual(await readAll(o, 16, 8), hex`00 00 00 00 d0 d1 d2 d3`);
});
