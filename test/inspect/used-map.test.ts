// The pieces every filesystem driver builds its used map from: bit runs of allocation bitmaps,
// and the turn of proved-free ranges into used runs, where a confused walk can only lose free
// space, never used space.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bitRuns, usedFromFree, type FreeStep } from '../../src/inspect/used-map.js';
import type { Region, Run } from '../../src/index.js';

function runsOf(bits: Uint8Array, from: number, to: number, value: 0 | 1): [number, number][] {
  const out: [number, number][] = [];
  bitRuns(bits, from, to, value, (a, b) => out.push([a, b]));
  return out;
}

test('bitRuns finds runs least significant bit first, across whole and partial bytes', () => {
  const bits = new Uint8Array([0b1111_0000, 0xff, 0x00, 0b0000_0001, 0xff]);
  assert.deepEqual(runsOf(bits, 0, 40, 0), [[0, 4], [16, 24], [25, 32]]);
  assert.deepEqual(runsOf(bits, 0, 40, 1), [[4, 16], [24, 25], [32, 40]]);
  assert.deepEqual(runsOf(bits, 6, 27, 0), [[16, 24], [25, 27]], 'bounds cut the runs');
  assert.deepEqual(runsOf(bits, 3, 3, 0), []);
});

async function collect(region: Region, steps: readonly FreeStep[]): Promise<Run[]> {
  async function* walk(): AsyncGenerator<FreeStep> {
    yield* steps;
  }
  const out: Run[] = [];
  for await (const r of usedFromFree(region, walk())) out.push(r);
  return out;
}

test('usedFromFree yields the complement of the free ranges, absolute and coalesced', async () => {
  const region = { start: 1000, length: 100 };
  assert.deepEqual(await collect(region, [{ free: [{ start: 10, end: 20 }], done: 50 }, { free: [{ start: 60, end: 100 }], done: 100 }]), [
    { start: 1000, length: 10 },
    { start: 1020, length: 40 },
  ]);
  assert.deepEqual(await collect(region, []), [{ start: 1000, length: 100 }], 'no walk: all used');
  assert.deepEqual(await collect(region, [{ free: [{ start: 0, end: 100 }], done: 100 }]), [], 'all free');
});

test('usedFromFree never frees more than once, outside the region or backwards', async () => {
  const region = { start: 0, length: 100 };
  const got = await collect(region, [
    { free: [{ start: 10, end: 30 }, { start: 20, end: 40 }], done: 40 }, // overlapping: only 30-40 is new
    { free: [{ start: 5, end: 15 }], done: 40 }, // backwards: ignored
    { free: [{ start: 90, end: 500 }, { start: -5, end: 0 }], done: 100 }, // past the end: cut
  ]);
  assert.deepEqual(got, [{ start: 0, length: 10 }, { start: 40, length: 50 }]);
});
