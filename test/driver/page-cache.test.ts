// src/driver/page-cache.ts (the LRU behind BatCache and SectorBitmaps), and BatCache on top of it:
// shared loads, the bound, pins for changed units, and changes made while other loads evict.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PageCache } from '../../src/driver/page-cache.js';
import { BatCache, BAT_PAGE_BYTES } from '../../src/driver/bat-cache.js';
import { MemorySource } from '../../src/io/source.js';
import { batGeometry } from '../../src/format/bat.js';

/** A cache of pages that are 4-byte arrays holding their key, counting reads. */
function counting(maxPages: number, unitsPerPage = 1) {
  const reads: number[] = [];
  const cache = new PageCache(
    maxPages,
    async (key: number) => {
      reads.push(key);
      return Uint8Array.of(key, 0, 0, 0);
    },
    unitsPerPage,
  );
  return { cache, reads };
}

test('concurrent loads of one page share one read', async () => {
  const { cache, reads } = counting(4);
  let changed;
  const [a, b] = await Promise.all([cache.get(7), cache.get(7), cache.change(7, (p) => ((changed = p), 0))]);
  assert.equal(a, b);
  assert.equal(a, changed);
  assert.deepEqual(reads, [7]);
  assert.equal(cache.cached(7), a);
});

test('the cache holds at most maxPages clean pages, evicting the least recently used', async () => {
  const { cache, reads } = counting(2);
  await cache.get(1);
  await cache.get(2);
  cache.cached(1); // 1 is now newer than 2
  await cache.get(3); // evicts 2
  assert.ok(cache.cached(1));
  assert.equal(cache.cached(2), undefined);
  assert.ok(cache.cached(3));
  assert.deepEqual(reads, [1, 2, 3]);
});

test('dirty units pin their page until released after a commit', async () => {
  const { cache } = counting(2, 4); // 4 units a page
  let p;
  await cache.change(0, (page) => {
    p = page;
    page[1] = 0xaa;
    return [1, 2];
  });
  await cache.change(0, () => 1); // counted once
  assert.equal(cache.dirtyCount, 2);
  for (const k of [5, 6, 7, 8]) await cache.get(k);
  assert.equal(cache.cached(0), p, 'a page with dirty units is not evicted');

  const batch = cache.takeDirty(Infinity, (unit, page) => ({ fileOffset: unit, data: page.slice() }));
  assert.deepEqual(batch.ids, [1, 2]);
  assert.equal(batch.sectors[0]?.data[1], 0xaa);
  assert.equal(cache.dirtyCount, 0);
  for (const k of [9, 10]) await cache.get(k);
  assert.equal(cache.cached(0), p, 'taken but not yet released: still pinned');

  cache.release(batch, false); // the commit failed: dirty again, still pinned
  assert.equal(cache.dirtyCount, 2);
  const again = cache.takeDirty(1, (unit, page) => ({ fileOffset: unit, data: page.slice() }));
  assert.deepEqual(again.ids, [1]);
  cache.release(again, true);
  const rest = cache.takeDirty(Infinity, (unit, page) => ({ fileOffset: unit, data: page.slice() }));
  cache.release(rest, true);
  for (const k of [11, 12]) await cache.get(k);
  assert.equal(cache.cached(0), undefined, 'released: evictable again');
});

test('takeDirty takes nothing when a copy fails', async () => {
  const { cache } = counting(4);
  await cache.change(1, () => 1);
  await cache.change(2, () => 2);
  assert.throws(() =>
    cache.takeDirty(Infinity, (unit) => {
      if (unit === 2) throw new Error('no place for it');
      return { fileOffset: 0, data: new Uint8Array(4) };
    }),
  );
  assert.equal(cache.dirtyCount, 2);
});

test('a page read for a change and evicted by other loads before the change resumes is put back', async () => {
  const { cache } = counting(2);
  // The reads complete in one microtask wave: each page is inserted, then evicted by the next
  // ones (clean, so evictable) before its change resumes. Every change must still be written.
  await Promise.all(
    [0, 1, 2, 3, 4].map((k) =>
      cache.change(k, (page) => {
        page[1] = 0x50 + k;
        return k;
      }),
    ),
  );
  const batch = cache.takeDirty(Infinity, (unit, p) => ({ fileOffset: unit, data: p.slice() }));
  assert.deepEqual(batch.ids, [0, 1, 2, 3, 4]);
  assert.deepEqual(
    batch.sectors.map((x) => [x.data[0], x.data[1]]),
    [0, 1, 2, 3, 4].map((k) => [k, 0x50 + k]),
  );
});

test('BatCache: concurrent entry changes across more pages than the cache holds all reach the commit', async () => {
  const entriesPerPage = BAT_PAGE_BYTES / 8;
  const pages = 6;
  const regionOffset = 1 << 20;
  const regionLength = pages * BAT_PAGE_BYTES;
  const src = new MemorySource(new Uint8Array(regionOffset + regionLength + (64 << 20)));
  // A dynamic disk whose BAT fills most of `pages` pages: 1 MiB blocks, 512-byte sectors.
  const geometry = batGeometry(Math.floor(pages * entriesPerPage * 0.9) * (1 << 20), 1 << 20, 512, false);
  const bat = new BatCache(
    src,
    { regionOffset, regionLength, entryCount: geometry.entriesNeeded, geometry, hasParent: false, fileSize: () => src.size },
    { cacheBytes: 2 * BAT_PAGE_BYTES },
  );
  // One payload entry in each page, all changed at once (state 6 = FULLY_PRESENT at 1 MiB + i MiB).
  const indices = Array.from({ length: pages }, (_, p) => p * entriesPerPage + 3).filter((i) => i < bat.entryCount);
  const payload = indices.filter((i) => (i + 1) % (geometry.chunkRatio + 1) !== 0);
  await Promise.all(payload.map((i, n) => bat.set(i, { state: 6, fileOffsetMB: 2 + n })));
  const batch = bat.takeDirty();
  assert.equal(batch.sectors.length, payload.length);
  for (const [n, i] of payload.entries()) {
    const s = batch.sectors.find((x) => x.fileOffset === regionOffset + Math.floor((i * 8) / 4096) * 4096);
    assert.ok(s, `sector of entry ${i} is in the batch`);
    const at = (i * 8) % 4096;
    const lo = new DataView(s.data.buffer, s.data.byteOffset).getUint32(at, true);
    assert.equal(lo & 7, 6, `entry ${i} state`);
    assert.equal(lo >>> 20, 2 + n, `entry ${i} offset`);
  }
  bat.release(batch, true);
});
