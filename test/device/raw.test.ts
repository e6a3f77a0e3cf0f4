// RawDevice: reads, block status found by scanning 64 KiB grains, writes, and range checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, RawDevice, VhdxError } from '../../src/index.js';

const K = 1024;
const M = K * K;
const G64 = 64 * K;

function source(size: number, fills: readonly (readonly [number, number, number])[]) {
  const bytes = new Uint8Array(size);
  for (const [at, len, v] of fills) bytes.fill(v, at, at + len);
  return new MemorySource(bytes);
}

test('block status reports 64 KiB grains holding a non-zero byte as data, the rest as zero', async () => {
  const size = 3 * M + 1000; // a short last grain
  const dev = new RawDevice(source(size, [[G64 + 5, 1, 9], [2 * M - 1, 2, 7], [size - 1, 1, 1]]));
  assert.equal(dev.can.extents, false, 'no cheap extents: the copy reads once instead');
  assert.deepEqual(await dev.blockStatus(0, size), [
    { offset: 0, length: G64, type: 'zero' },
    { offset: G64, length: G64, type: 'data', fileOffset: G64 },
    { offset: 2 * G64, length: 2 * M - 3 * G64, type: 'zero' },
    { offset: 2 * M - G64, length: 2 * G64, type: 'data', fileOffset: 2 * M - G64 },
    { offset: 2 * M + G64, length: 3 * M - 2 * M - G64, type: 'zero' },
    { offset: 3 * M, length: 1000, type: 'data', fileOffset: 3 * M },
  ]);
  // Unaligned requests: the first grain is cut at the offset, the last runs on to its grain's end.
  assert.deepEqual(await dev.blockStatus(G64 + 3, 10), [{ offset: G64 + 3, length: G64 - 3, type: 'data', fileOffset: G64 + 3 }]);
  assert.deepEqual(await dev.blockStatus(G64 + 100, 10), [{ offset: G64 + 100, length: G64 - 100, type: 'zero' }], 'the data byte is before the range');
  assert.deepEqual(await dev.blockStatus(100, 200), [{ offset: 100, length: G64 - 100, type: 'zero' }]);
  assert.deepEqual(await dev.blockStatus(size - 10, 10), [{ offset: size - 10, length: 10, type: 'data', fileOffset: size - 10 }]);
  assert.deepEqual(await dev.blockStatus(0, 0), []);
});

test('reads are exact; ranges outside the disk are refused', async () => {
  const dev = new RawDevice(source(8192, [[4096, 4096, 0xab]]));
  const b = new Uint8Array(8);
  await dev.read(4092, b);
  assert.deepEqual([...b], [0, 0, 0, 0, 0xab, 0xab, 0xab, 0xab]);
  await assert.rejects(dev.read(8190, new Uint8Array(4)), (e) => e instanceof VhdxError && e.reason === 'OUT_OF_RANGE');
  await assert.rejects(dev.blockStatus(-1, 4), (e) => e instanceof VhdxError && e.reason === 'OUT_OF_RANGE');
  await dev.close();
  await assert.rejects(dev.read(0, b), (e) => e instanceof VhdxError && e.reason === 'CLOSED');
});

test('writes, write-zeroes and discard change the bytes; read-only sources refuse them', async () => {
  const src = source(2 * M, [[0, 2 * M, 0xee]]);
  const dev = new RawDevice(src);
  assert.equal(dev.readOnly, false);
  await dev.write(10, new Uint8Array([1, 2, 3]), { fua: true });
  await dev.writeZeroes(M, M + 5 - M);
  await dev.discard(M + 100, 50);
  await assert.rejects(dev.writeZeroes(0, 1, { fast: true }), (e) => e instanceof VhdxError && e.code === 'ENOTSUP');
  await assert.rejects(dev.write(2 * M - 1, new Uint8Array(2)), (e) => e instanceof VhdxError && e.reason === 'OUT_OF_RANGE');
  const b = src.bytes();
  assert.deepEqual([...b.subarray(9, 14)], [0xee, 1, 2, 3, 0xee]);
  assert.ok(b.subarray(M, M + 5).every((x) => x === 0) && b[M + 5] === 0xee);
  assert.ok(b.subarray(M + 100, M + 150).every((x) => x === 0) && b[M + 150] === 0xee);

  const ro = new RawDevice(new MemorySource(new Uint8Array(4096), { readOnly: true }));
  assert.equal(ro.readOnly, true);
  assert.equal(ro.can.zero, false);
  await assert.rejects(ro.write(0, new Uint8Array(1)), (e) => e instanceof VhdxError && e.code === 'EROFS');
});

test('the logical sector size is reported as asked', () => {
  assert.equal(new RawDevice(new MemorySource(new Uint8Array(4096))).logicalSectorSize, 512);
  assert.equal(new RawDevice(new MemorySource(new Uint8Array(4096)), { logicalSectorSize: 4096 }).logicalSectorSize, 4096);
});
