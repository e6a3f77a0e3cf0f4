// src/io/faulty.ts: the fault-injecting source the power-loss tests stand on. Its own behaviour
// must be right, or a crash test could pass by accident.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FaultySource } from '../../src/testing.js';
import type { RandomAccessSource } from '../../src/testing.js';
import type { VhdxError } from '../../src/errors.js';

const KiB = 1024;

async function readAll(src: RandomAccessSource): Promise<Uint8Array> {
  const b = new Uint8Array(src.size);
  await src.read(0, b);
  return b;
}
const filled = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

test('reads see every write; a crash keeps what was flushed and loses the rest (keep: none)', async () => {
  const d = new FaultySource(filled(16 * KiB, 1));
  await d.write(0, filled(4 * KiB, 2));
  await d.flush();
  await d.write(4 * KiB, filled(4 * KiB, 3));
  await d.truncate(32 * KiB);
  assert.equal(d.size, 32 * KiB);
  assert.deepEqual((await readAll(d)).subarray(4 * KiB, 8 * KiB), filled(4 * KiB, 3));
  const c = d.crashImage({ keep: 'none' });
  assert.equal(c.size, 16 * KiB, 'the unflushed truncate is lost');
  const got = await readAll(c);
  assert.deepEqual(got.subarray(0, 4 * KiB), filled(4 * KiB, 2));
  assert.deepEqual(got.subarray(4 * KiB), filled(12 * KiB, 1));
  const all = await readAll(d.crashImage({ keep: 'all' }));
  assert.equal(all.length, 32 * KiB);
  assert.deepEqual(all.subarray(4 * KiB, 8 * KiB), filled(4 * KiB, 3));
  // The source itself is unchanged by building crash images.
  assert.deepEqual((await readAll(d)).subarray(4 * KiB, 8 * KiB), filled(4 * KiB, 3));
});

test('surviving writes land in issue order; random subsets depend on the seed only', async () => {
  const d = new FaultySource(filled(8 * KiB, 0));
  await d.write(0, filled(4 * KiB, 1));
  await d.write(0, filled(4 * KiB, 2));
  assert.deepEqual((await readAll(d.crashImage({ keep: 'all' }))).subarray(0, 4 * KiB), filled(4 * KiB, 2));
  const seen = new Set<number | undefined>();
  for (let seed = 1; seed <= 40; seed++) {
    const a = await readAll(d.crashImage({ seed }));
    const b = await readAll(d.crashImage({ seed }));
    assert.deepEqual(a, b, 'same seed, same image');
    seen.add(a[0]);
  }
  assert.deepEqual([...seen].sort(), [0, 1, 2], 'every outcome of two pending writes occurs');
});

test('a torn write lands in part, cut at 4 KiB boundaries of the file', async () => {
  const d = new FaultySource(filled(64 * KiB, 0));
  await d.flush();
  const off = 2 * KiB; // pieces: [2K,4K) [4K,8K) ... [16K,18K)
  await d.write(off, filled(16 * KiB, 9));
  let partial = 0;
  for (let seed = 1; seed <= 30; seed++) {
    const got = await readAll(d.crashImage({ seed, keep: 'none', tear: true }));
    const landed = got.subarray(off, off + 16 * KiB).filter((b) => b === 9).length;
    assert.ok(landed > 0 && landed < 16 * KiB, 'some but not all of the write lands');
    for (const cut of [0, 2 * KiB, 6 * KiB, 10 * KiB, 14 * KiB]) {
      // Each piece lands whole or not at all.
      const piece = got.subarray(off + cut, off + Math.min(16 * KiB, cut + (cut === 0 ? 2 * KiB : 4 * KiB)));
      assert.ok(piece.every((b) => b === 9) || piece.every((b) => b === 0), `piece at ${off + cut} is whole`);
    }
    partial++;
  }
  assert.equal(partial, 30);
  // A write within one 4 KiB piece cannot tear.
  const e = new FaultySource(filled(8 * KiB, 0));
  await e.write(4 * KiB, filled(4 * KiB, 5));
  assert.deepEqual(await readAll(e.crashImage({ keep: 'none', tear: true })), filled(8 * KiB, 0));
});

test('crashAt: the Nth write, flush or truncate throws, is in flight, and every later operation throws', async () => {
  const d = new FaultySource(filled(8 * KiB, 0), { crashAt: 3, trace: true });
  await d.write(0, filled(4 * KiB, 1)); // 1
  await d.flush(); // 2
  await assert.rejects(d.write(4 * KiB, filled(4 * KiB, 2)), (e: VhdxError) => e.reason === 'IO_ERROR'); // 3: crash
  assert.equal(d.isCrashed, true);
  await assert.rejects(d.read(0, new Uint8Array(1)), (e: VhdxError) => e.reason === 'IO_ERROR');
  await assert.rejects(d.flush(), (e: VhdxError) => e.reason === 'IO_ERROR');
  await assert.rejects(d.truncate(0), (e: VhdxError) => e.reason === 'IO_ERROR');
  await d.close();
  assert.deepEqual(d.trace!.map((op) => [op.kind, op.index]), [
    ['write', 1],
    ['flush', 2],
    ['write', 3],
  ]);
  // The write in flight at the crash may land or not.
  assert.equal((await readAll(d.crashImage({ keep: 'none' })))[4 * KiB], 0);
  assert.equal((await readAll(d.crashImage({ keep: 'all' })))[4 * KiB], 2);
  // A flush at the crash point does not happen.
  const f = new FaultySource(filled(4 * KiB, 0), { crashAt: 2 });
  await f.write(0, filled(4 * KiB, 7));
  await assert.rejects(f.flush());
  assert.equal((await readAll(f.crashImage({ keep: 'none' })))[0], 0);
});

test('counts, sparse storage and clone', async () => {
  const d = new FaultySource();
  await d.truncate(1024 * 1024 * 1024); // 1 GiB, no memory
  await d.write(512 * 1024 * 1024 + 100, filled(10, 3));
  assert.deepEqual(d.counts, { reads: 0, writes: 1, flushes: 0, truncates: 1, bytesWritten: 10 });
  const b = new Uint8Array(20);
  await d.read(512 * 1024 * 1024 + 95, b);
  assert.deepEqual([...b], [0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0]);
  assert.equal([...d.extents()].length, 1, 'one stored page');
  const c = d.clone();
  await c.write(512 * 1024 * 1024 + 100, filled(1, 4));
  await d.read(512 * 1024 * 1024 + 95, b);
  assert.equal(b[5], 3, 'a clone is independent');
  // Without a write cache, a crash loses nothing that completed.
  const n = new FaultySource(filled(4 * KiB, 0), { writeCache: false });
  await n.write(0, filled(4 * KiB, 8));
  assert.equal((await readAll(n.crashImage({ keep: 'none' })))[0], 8);
  // Shrinking forgets the tail: growing again reads zeros.
  await n.truncate(100);
  await n.truncate(4 * KiB);
  assert.equal((await readAll(n))[200], 0);
  assert.equal((await readAll(n))[50], 8);
});
