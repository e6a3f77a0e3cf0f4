// copyDevice: into a block device (a new VHDX image) as well as a file; zero ranges stay
// unallocated; reads and writes overlap; capacity and cancellation are checked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, RawDevice, VhdxImage, VhdxError, copyDevice, createImage, deviceSink, fileSink } from '../../src/index.js';
import type { BlockDevice, CopySink, CreateOptions, Extent } from '../../src/index.js';
import type { CopyHint } from '../../src/io/source.js';

const K = 1024;
const M = K * K;

type Fill = readonly [at: number, length: number, value: number];

function pattern(size: number, fills: readonly Fill[]): Uint8Array {
  const bytes = new Uint8Array(size);
  for (const [at, len, v] of fills) bytes.fill(v, at, at + len);
  return bytes;
}

async function newImage(opts: CreateOptions): Promise<VhdxImage> {
  const src = new MemorySource();
  await createImage(src, opts);
  return VhdxImage.open(src, { readOnly: false });
}

test('raw -> VHDX image: data lands, zero ranges stay unallocated', async () => {
  const size = 24 * M;
  const fills: Fill[] = [[100, 5, 1], [5 * M - 10, 20, 2], [12 * M, 3 * M, 3], [size - 1, 1, 4]];
  const raw = new RawDevice(new MemorySource(pattern(size, fills)));
  const img = await newImage({ size, blockSize: M });
  const r = await copyDevice(raw, deviceSink(img), { chunkSize: 3 * M + 512 * K, parallel: 3 });
  assert.equal(r.bytesRead, size, 'a raw source is read once, whole');
  const data = (await img.blockStatus(0, size)).filter((e) => e.type === 'data');
  const blocks = new Set<number>();
  for (const e of data) for (let b = e.offset / M; b < (e.offset + e.length) / M; b++) blocks.add(b);
  assert.deepEqual([...blocks].sort((a, b) => a - b), [0, 4, 5, 12, 13, 14, 23]);
  const back = new Uint8Array(size);
  await img.read(0, back);
  assert.ok(Buffer.from(back).equals(Buffer.from(pattern(size, fills))), 'content equal');
  await img.close();
});

test('VHDX -> VHDX with another block size (re-blocking) keeps content and sparseness', async () => {
  const size = 20 * M;
  const from = await newImage({ size, blockSize: 8 * M });
  await from.write(3 * M + 7, new Uint8Array(100).fill(9));
  await from.write(17 * M, new Uint8Array(M).fill(8));
  await from.writeZeroes(8 * M, 8 * M); // a ZERO block: nothing to copy
  const to = await newImage({ size, blockSize: M });
  await copyDevice(from, deviceSink(to));
  assert.deepEqual(
    (await to.blockStatus(0, size)).filter((e) => e.type === 'data').map((e) => [e.offset / M, e.length / M]),
    [[3, 1], [17, 1]],
  );
  for (const dev of [from, to]) {
    const b = new Uint8Array(4096);
    await dev.read(3 * M, b);
    assert.ok(b.subarray(7, 107).every((x) => x === 9) && b[6] === 0 && b[107] === 0);
  }
  await from.close();
  await to.close();
});

test('reads and writes overlap: several chunks in flight', async () => {
  const size = 32 * M;
  let reading = 0;
  let writing = 0;
  let overlapped = 0;
  let maxReads = 0;
  const delay = (): Promise<void> => new Promise((r) => setTimeout(r, 2));
  const src: BlockDevice = {
    size,
    logicalSectorSize: 512,
    readOnly: true,
    can: { zero: false, fastZero: false, discard: false, extents: true, fua: false },
    async read(_offset: number, into: Uint8Array) {
      reading++;
      maxReads = Math.max(maxReads, reading);
      if (writing > 0) overlapped++;
      await delay();
      into.fill(1);
      reading--;
    },
    async blockStatus(offset: number, length: number): Promise<Extent[]> {
      return [{ offset, length, type: 'data' }];
    },
    async checkRequest() {},
    async flush() {},
    async close() {},
  };
  let written = 0;
  const sink: CopySink = {
    async write(_offset: number, data: Uint8Array) {
      writing++;
      if (reading > 0) overlapped++;
      await delay();
      written += data.length;
      writing--;
    },
    async finish() {},
  };
  await copyDevice(src, sink, { chunkSize: M, parallel: 4 });
  assert.equal(written, size);
  assert.ok(maxReads >= 2, `reads in flight at once: ${maxReads}`);
  assert.ok(overlapped > 0, 'a read ran while a write was in flight');
});

test('a destination smaller than the source fails before anything is read; abort cancels', async () => {
  const raw = new RawDevice(new MemorySource(pattern(8 * M, [[0, 8 * M, 5]])));
  const small = await newImage({ size: 4 * M, blockSize: M });
  await assert.rejects(copyDevice(raw, deviceSink(small)), (e) => e instanceof VhdxError && e.reason === 'OUT_OF_RANGE');
  assert.deepEqual(await small.blockStatus(0, 4 * M), [{ offset: 0, length: 4 * M, type: 'unallocated' }]);
  await small.close();

  const ac = new AbortController();
  ac.abort();
  const out = new MemorySource();
  await assert.rejects(copyDevice(raw, fileSink(out), { signal: ac.signal }), (e) => e instanceof VhdxError && e.reason === 'ABORTED');
});

test('into a file: the result is sized to the disk and holds its bytes', async () => {
  const size = 5 * M + 512;
  const bytes = pattern(size, [[M + 3, 10, 6], [size - 512, 512, 7]]);
  const out = new MemorySource();
  await copyDevice(new RawDevice(new MemorySource(bytes)), out); // a plain writable source works as before
  assert.equal(out.size, size);
  assert.ok(Buffer.from(out.bytes()).equals(Buffer.from(bytes)));
});

test("a source's copy hint sets the piece size and raises the reads in flight (one copy engine, tuned by the source)", async () => {
  const size = 40 * M;
  const bytes = pattern(size, [[0, size, 7]]);
  const mem = new MemorySource(bytes);
  // A source that asks for 8 MiB pieces, 5 at once (as an HTTP source does with its own figures),
  // and records the reads that reach it.
  const reads: number[] = [];
  let inFlight = 0;
  let most = 0;
  const hinted: { size: number; readOnly: true; copyHint?: CopyHint; read(offset: number, into: Uint8Array): Promise<number>; close(): Promise<void> } = {
    size,
    readOnly: true,
    copyHint: { chunkSize: 8 * M, parallel: 5 },
    async read(offset: number, into: Uint8Array) {
      reads.push(into.length);
      most = Math.max(most, ++inFlight);
      await new Promise<void>((r) => setTimeout(r, 5));
      inFlight--;
      return mem.read(offset, into);
    },
    close: async () => {},
  };
  const dev = new RawDevice(hinted);
  assert.deepEqual(dev.copyHint, { chunkSize: 8 * M, parallel: 5 });
  const out = new MemorySource();
  await copyDevice(dev, fileSink(out), { parallel: 2 });
  assert.deepEqual(reads, [8 * M, 8 * M, 8 * M, 8 * M, 8 * M]);
  assert.equal(most, 5, 'the hint raises the caller\'s 2 to 5');
  assert.ok(Buffer.from(out.bytes()).equals(Buffer.from(bytes)));
  // Without a hint: the engine's 4 MiB pieces, and the caller's count.
  reads.length = 0;
  most = 0;
  delete hinted.copyHint;
  await copyDevice(new RawDevice(hinted), fileSink(new MemorySource()), { parallel: 2 });
  assert.equal(reads.length, 10);
  assert.equal(most, 2);
});
