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
import { BitmapState, bitmapBatIndex, type BatGeometry } from '../format/bat.js';
import type { BatCache, BatSector, DirtyBatch } from './bat-cache.js';

const PAGE = 4096;
const BITS_PER_PAGE = PAGE * 8;
const PAGES_PER_CHUNK = SECTORS_PER_CHUNK / BITS_PER_PAGE; // 256: a bitmap block is 1 MiB

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
  private readonly pages = new Map<number, Uint8Array>();
  private readonly loading = new Map<number, Promise<Uint8Array>>();
  private readonly maxPages: number;
  private readonly dirty = new Set<number>();
  private readonly pinned = new Map<number, number>();

  constructor(
    private readonly src: RandomAccessSource,
    private readonly bat: BatCache,
    private readonly g: BatGeometry,
    opts: BitmapCacheOptions = {},
  ) {
    this.maxPages = Math.max(4, Math.floor((opts.bitmapCacheBytes ?? 4 * MiB) / PAGE));
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
      const page = this.pages.get(key) ?? (await this.load(key));
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
      let page = this.pages.get(key);
      if (!page) {
        const loaded = await this.load(key);
        // Other loads may have evicted it before this resumed (it was clean then): changes made
        // to a page outside the cache would be lost. Put it back, or use the copy that replaced it.
        page = this.pages.get(key) ?? loaded;
        this.pages.set(key, page);
      }
      const pageEnd = Math.min(end, (key + 1) * BITS_PER_PAGE);
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
      if (!this.dirty.has(key)) {
        this.dirty.add(key);
        this.pinned.set(key, (this.pinned.get(key) ?? 0) + 1);
      }
      s = pageEnd;
    }
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  /** Copies of up to `max` dirty pages as they must land in the file; pinned until `release`. */
  takeDirty(max = Infinity): DirtyBatch {
    const sectors: BatSector[] = [];
    const ids: number[] = [];
    for (const key of [...this.dirty].sort((a, b) => a - b)) {
      if (sectors.length >= max) break;
      const chunk = Math.floor(key / PAGES_PER_CHUNK);
      const e = this.bat.cached(bitmapBatIndex(this.g, chunk));
      if (!e || e.state !== BitmapState.PRESENT) {
        throw new VhdxError('EIO', 'IO_ERROR', `sector bitmap page of chunk ${chunk} changed without a bitmap block`);
      }
      sectors.push({ fileOffset: e.fileOffsetMB * MiB + (key % PAGES_PER_CHUNK) * PAGE, data: this.pages.get(key)!.slice() });
      ids.push(key);
      this.dirty.delete(key);
    }
    return { sectors, ids };
  }

  /** Unpin pages handed out by `takeDirty` once in the file, or mark them dirty again on failure. */
  release(batch: DirtyBatch, applied: boolean): void {
    for (const key of batch.ids) {
      if (!applied && !this.dirty.has(key)) {
        this.dirty.add(key);
        continue;
      }
      const n = (this.pinned.get(key) ?? 1) - 1;
      if (n > 0) this.pinned.set(key, n);
      else this.pinned.delete(key);
    }
  }

  private load(key: number): Promise<Uint8Array> {
    let p = this.loading.get(key);
    if (!p) {
      p = this.readPage(key).finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }

  private async readPage(key: number): Promise<Uint8Array> {
    const chunk = Math.floor(key / PAGES_PER_CHUNK);
    if (chunk >= this.g.bitmapBlocks) throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `sector bitmap of chunk ${chunk} beyond the disk`);
    const batIndex = bitmapBatIndex(this.g, chunk);
    const e = this.bat.cached(batIndex) ?? (await this.bat.entry(batIndex));
    const page = new Uint8Array(PAGE);
    if (e.state === BitmapState.PRESENT) {
      await readExact(this.src, e.fileOffsetMB * MiB + (key % PAGES_PER_CHUNK) * PAGE, page, 'sector bitmap block');
    }
    const existing = this.pages.get(key);
    if (existing) return existing;
    if (this.pages.size >= this.maxPages) {
      for (const candidate of this.pages.keys()) {
        if (!this.pinned.has(candidate)) {
          this.pages.delete(candidate);
          break;
        }
      }
    }
    this.pages.set(key, page);
    return page;
  }
}
