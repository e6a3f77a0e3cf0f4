// NodeFileSource cache modes (qemu's names): O_DIRECT files (none, directsync) are read and written
// through aligned bounce buffers, so unaligned and concurrent requests, and a file whose size is not
// a multiple of the block size, must give exactly what the page-cache path gives. And `unsafe`
// makes flush a no-op, the others do not (counted with strace on the CLI, in test/cli/cache.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NodeFileSource, CACHE_MODES } from '../../src/node.js';
import { scratch } from '../helpers/env.js';
import { seededRandom } from '../helpers/hex.js';

const dir = scratch('vhdx-cache-modes-');
const KiB = 1024;

/** `length` bytes of noise from `random` (4 bytes per call). */
function noise(length: number, random: () => number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  for (let i = 0; i < words.length; i++) words[i] = random() * 2 ** 32;
  return new Uint8Array(words.buffer, 0, length);
}

/** Cuts each of `writes` (sorted by offset) short of the next one, keeping at least one byte. */
function cutOverlaps(writes: [number, Uint8Array][]): void {
  for (let k = 0; k + 1 < writes.length; k++) {
    const [at, data] = writes[k]!;
    writes[k] = [at, data.subarray(0, Math.max(1, Math.min(data.length, writes[k + 1]![0] - at)))];
  }
}

/** Skip message when this file system refuses O_DIRECT, else false. */
async function directSkip(): Promise<string | false> {
  const f = join(dir, 'probe');
  writeFileSync(f, new Uint8Array(4096));
  try {
    await (await NodeFileSource.open(f, { cache: 'none' })).close();
    return false;
  } catch (e) {
    return `O_DIRECT is refused here (${(e as Error).message})`;
  }
}

test('every cache mode reads and writes the same bytes: unaligned, concurrent, past the end, odd file sizes', { skip: await directSkip() }, async () => {
  for (const cache of CACHE_MODES) {
    const random = seededRandom(7);
    const size = 3 * 1024 * KiB + 333; // not a multiple of any block size
    const path = join(dir, `${cache}.img`);
    let model = noise(size, random);
    writeFileSync(path, model);
    const f = await NodeFileSource.open(path, { readOnly: false, cache });
    for (let round = 0; round < 6; round++) {
      // Writes at once at random places and lengths (one up to 5 MiB, some past the end), cut so
      // that they do not overlap: the order they finish in does not matter.
      const writes: [number, Uint8Array][] = [];
      for (let k = 0; k < 8; k++) {
        const offset = Math.floor(((model.length + 64 * KiB) / 8) * k + random() * 20 * KiB);
        const length = 1 + Math.floor(random() * (k === 7 ? 5 * 1024 * KiB : 40 * KiB));
        writes.push([offset, noise(length, random)]);
      }
      cutOverlaps(writes);
      // And a run of small writes laid end to end, several in each 4 KiB block.
      for (let at = writes[0]![0] + writes[0]![1].length, k = 0; k < 24; k++) {
        const length = 1 + Math.floor(random() * 3000);
        writes.push([at, noise(length, random)]);
        at += length;
      }
      writes.sort((a, b) => a[0] - b[0]);
      cutOverlaps(writes);
      await Promise.all(writes.map(([o, d]) => f.write(o, d)));
      const next = new Uint8Array(Math.max(model.length, ...writes.map(([o, d]) => o + d.length)));
      next.set(model);
      for (const [o, d] of writes) next.set(d, o);
      model = next;
      assert.equal(f.size, model.length, `${cache}: size after round ${round}`);
      const reads = Array.from({ length: 8 }, (): [number, Uint8Array] => [Math.floor(random() * model.length), new Uint8Array(1 + Math.floor(random() * 300 * KiB))]);
      const got = await Promise.all(reads.map(([o, b]) => f.read(o, b)));
      reads.forEach(([o, b], k) => {
        const want = Math.min(b.length, model.length - o);
        assert.equal(got[k], want, `${cache}: bytes read at ${o}`);
        assert.ok(Buffer.from(b.subarray(0, want)).equals(model.subarray(o, o + want)), `${cache}: read at ${o}`);
      });
    }
    await f.flush();
    await f.close();
    const file = readFileSync(path);
    assert.equal(file.length, model.length, `${cache}: the file is cut back to its size`);
    assert.ok(file.equals(model), `${cache}: the file holds every write`);
  }
});

test('cache mode none on a file system without O_DIRECT, or an unknown platform, fails with a clear error', { skip: (await directSkip()) ? false : 'this file system takes O_DIRECT' }, async () => {
  const f = join(dir, 'nodirect.img');
  writeFileSync(f, new Uint8Array(4096));
  await assert.rejects(NodeFileSource.open(f, { cache: 'none' }), /cache mode none: .*O_DIRECT/);
});
