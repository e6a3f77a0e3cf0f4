/**
 * Sector bitmaps of a differencing disk (§2.5.2), paged through a bounded LRU cache of 4 KiB
 * pages. Each chunk (2^23 logical sectors) has one 1 MiB sector bitmap block, one bit per
 * logical sector, least significant bit first: 1 = the sector's data is in this file, 0 = read
 * it from the parent. A chunk whose bitmap block is not present reads as all zero bits.
 *
 * Pages changed in memory are dirty until a commit takes them (`takeDirty`) and writes them
 * through the log, exactly like BAT sectors; they stay pinned in the cache until then.
 */
import { VhdxError } from '../errors.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import { MiB, SECTORS_PER_CHUNK } from '../format/constants.js';
import { BitmapState, type BatGeometry } from '../format/bat.js';
import type { BitmapPlaces } from './mapping.js';
import { PageCache, type DirtyBatch } from './page-cache.js';

const PAGE = 4096;
const BITS_PER_PAGE = PAGE * 8;
const PAGES_PER_CHUNK = SECTORS_PER_CHUNK / BITS_PER_PAGE; // 256: a bitmap block is 1 MiB

/** How much of a differencing image's sector bitmaps an open image keeps in memory. */
export interface BitmapCacheOptions {
  /** Bytes of bitmap pages kept in memory (default 4 MiB). Dirty pages stay beyond it. */
  bitmapCacheBytes?: number;
}

/** A run of sectors that all come from one place. */
export interface SectorRun {
  /** True: the sectors are in this file; false: read them from the parent. */
  present: boolean;
  count: number;
}

export class SectorBitmaps {
  private readonly pages: PageCache<Uint8Array>;

  constructor(
    private readonly src: RandomAccessSource,
    private readonly places: BitmapPlaces,
    private readonly g: BatGeometry,
    opts: BitmapCacheOptions = {},
  ) {
    const maxPages = Math.max(4, Math.floor((opts.bitmapCacheBytes ?? 4 * MiB) / PAGE));
    this.pages = new PageCache(maxPages, (key) => this.readPage(key));
  }

  /**
   * Split `count` sectors from virtual sector `first` into runs by their bits. All sectors must
   * lie in one payload block (so in one chunk).
   */
  async runs(first: number, count: number): Promise<SectorRun[]> {
    const out: SectorRun[] = [];
    let s = first;
    const end = first + count;
    while (s < end) {
      const key = Math.floor(s / BITS_PER_PAGE);
      const page = await this.pages.get(key);
      const pageEnd = Math.min(end, (key + 1) * BITS_PER_PAGE);
      let bit = s - key * BITS_PER_PAGE;
      const stop = pageEnd - key * BITS_PER_PAGE;
      while (bit < stop) {
        const present = (page[bit >>> 3]! & (1 << (bit & 7))) !== 0;
        const start = bit;
        bit++;
        // Whole bytes of one value at a time, then single bits.
        const full = present ? 0xff : 0;
        while (bit < stop) {
          if ((bit & 7) === 0 && bit + 8 <= stop && page[bit >>> 3] === full) {
            bit += 8;
            continue;
          }
          if (((page[bit >>> 3]! & (1 << (bit & 7))) !== 0) !== present) break;
          bit++;
        }
        const last = out[out.length - 1];
        if (last && last.present === present) last.count += bit - start;
        else out.push({ present, count: bit - start });
      }
      s = pageEnd;
    }
    return out;
  }

  /** True when every one of `count` sectors from `first` has its bit set. */
  async allSet(first: number, count: number): Promise<boolean> {
    const r = await this.runs(first, count);
    return r.length === 1 && r[0]!.present;
  }

  /**
   * Set (or clear) the bits of `count` sectors from `first`, in memory; their pages are dirty
   * until a commit takes them. The chunk's bitmap block must be present (the writer allocates
   * it first), so the page has a place in the file when it is committed.
   */
  async set(first: number, count: number, value: boolean): Promise<void> {
    let s = first;
    const end = first + count;
    while (s < end) {
      const key = Math.floor(s / BITS_PER_PAGE);
      const pageEnd = Math.min(end, (key + 1) * BITS_PER_PAGE);
      await this.pages.change(key, (page) => {
        for (let bit = s - key * BITS_PER_PAGE, stop = pageEnd - key * BITS_PER_PAGE; bit < stop; ) {
          if ((bit & 7) === 0 && bit + 8 <= stop) {
            page[bit >>> 3] = value ? 0xff : 0;
            bit += 8;
          } else {
            if (value) page[bit >>> 3]! |= 1 << (bit & 7);
            else page[bit >>> 3]! &= ~(1 << (bit & 7));
            bit++;
          }
        }
        return key;
      });
      s = pageEnd;
    }
  }

  get dirtyCount(): number {
    return this.pages.dirtyCount;
  }

  /**
   * Copies of up to `max` dirty pages as they must land in the file; pinned until `release`.
   * A dirty page whose chunk has no bitmap block is a bug of the writer's: nothing is taken.
   */
  takeDirty(max = Infinity): DirtyBatch {
    return this.pages.takeDirty(max, (key, page) => {
      const chunk = Math.floor(key / PAGES_PER_CHUNK);
      const e = this.places.cachedBitmapEntry(chunk);
      if (!e || e.state !== BitmapState.PRESENT) {
        throw new VhdxError('EIO', 'IO_ERROR', `sector bitmap page of chunk ${chunk} changed without a bitmap block`);
      }
      return { fileOffset: e.fileOffsetMB * MiB + (key % PAGES_PER_CHUNK) * PAGE, data: page.slice() };
    });
  }

  /** Unpin pages handed out by `takeDirty` once in the file, or mark them dirty again on failure. */
  release(batch: DirtyBatch, applied: boolean): void {
    this.pages.release(batch, applied);
  }

  private async readPage(key: number): Promise<Uint8Array> {
    const chunk = Math.floor(key / PAGES_PER_CHUNK);
    if (chunk >= this.g.bitmapBlocks) throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `sector bitmap of chunk ${chunk} beyond the disk`);
    const page = new Uint8Array(PAGE);
    // A bitmap block that moves while the page is read may leave other bytes in its old place: read again.
    for (let gen = -1; gen !== this.places.generation; ) {
      gen = this.places.generation;
      const e = this.places.cachedBitmapEntry(chunk) ?? (await this.places.bitmapEntry(chunk));
      if (e.state === BitmapState.PRESENT) {
        await readExact(this.src, e.fileOffsetMB * MiB + (key % PAGES_PER_CHUNK) * PAGE, page, 'sector bitmap block');
      } else page.fill(0);
    }
    return page;
  }
}
