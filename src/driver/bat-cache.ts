/**
 * The BAT, paged through a bounded LRU cache of raw on-disk bytes. A page is validated entry by
 * entry when it is loaded (state allowed for the disk type, reserved bits clear, present blocks
 * inside the file and after the header section), so lookups on a cached page are plain reads.
 * Memory is bounded by `maxPages`, never by the image's size.
 */
import { VhdxError, corrupt } from '../errors.js';
import { viewOf } from '../codec/struct.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import { MiB } from '../format/constants.js';
import { BAT_ENTRY_SIZE, decodeBatEntry, encodeBatEntry, judgeBatEntry, type BatEntry, type BatGeometry } from '../format/bat.js';
import { PageCache, type DirtyBatch } from './page-cache.js';

export const BAT_PAGE_BYTES = 64 * 1024;
const ENTRIES_PER_PAGE = BAT_PAGE_BYTES / BAT_ENTRY_SIZE;

function decodeAt(page: DataView, index: number): BatEntry {
  return decodeBatEntry(page, (index % ENTRIES_PER_PAGE) * BAT_ENTRY_SIZE);
}

/** How much of the BAT an open image keeps in memory. */
export interface BatCacheOptions {
  /** Bytes of BAT pages kept in memory (default 16 MiB). Pages with unapplied changes stay beyond it. */
  cacheBytes?: number;
}

export interface BatPlacement {
  /** File offset and length of the BAT region (1 MiB multiples). */
  regionOffset: number;
  regionLength: number;
  /** Entries we may index and validate (the rest of the region is padding). */
  entryCount: number;
  geometry: BatGeometry;
  hasParent: boolean;
  /** The file's current size, for checking that blocks lie inside it. */
  fileSize: () => number;
  /**
   * The image's structures after the header section (log, regions): a block placed over one is
   * refused, since a write there would overwrite the structure (found by the fuzz campaign).
   */
  structures?: readonly { name: string; start: number; end: number }[];
}

const SECTOR = 4096;
const SECTORS_PER_PAGE = BAT_PAGE_BYTES / SECTOR;

export class BatCache {
  private readonly pages: PageCache<DataView>;
  readonly regionOffset: number;
  readonly entryCount: number;

  constructor(
    private readonly src: RandomAccessSource,
    private readonly at: BatPlacement,
    opts: BatCacheOptions = {},
  ) {
    this.regionOffset = at.regionOffset;
    this.entryCount = at.entryCount;
    const maxPages = Math.max(2, Math.floor((opts.cacheBytes ?? 16 * MiB) / BAT_PAGE_BYTES));
    this.pages = new PageCache(maxPages, (page) => this.readPage(page), SECTORS_PER_PAGE);
  }

  /** The entry at BAT index `index`, loading (and validating) its page when not cached. */
  async entry(index: number): Promise<BatEntry> {
    return this.cached(index) ?? decodeAt(await this.pages.get(Math.floor(index / ENTRIES_PER_PAGE)), index);
  }

  /**
   * Load, and so validate, every page holding an entry from BAT index `first` to `last`: a change
   * checks the entries it will need before anything is written.
   */
  async validateEntries(first: number, last: number): Promise<void> {
    for (let page = Math.floor(first / ENTRIES_PER_PAGE); page <= Math.floor(last / ENTRIES_PER_PAGE); page++) await this.pages.get(page);
  }

  /** The entry at `index` when its page is cached, else undefined: lets hot paths skip an await. */
  cached(index: number): BatEntry | undefined {
    const view = this.pages.cached(Math.floor(index / ENTRIES_PER_PAGE));
    return view && decodeAt(view, index);
  }

  /** Change the entry at `index` in memory; its sector is dirty until taken by `takeDirty`. */
  async set(index: number, entry: BatEntry): Promise<void> {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.entryCount) {
      throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `BAT index ${index} beyond ${this.entryCount} entries`);
    }
    await this.pages.change(Math.floor(index / ENTRIES_PER_PAGE), (view) => {
      encodeBatEntry(view, (index % ENTRIES_PER_PAGE) * BAT_ENTRY_SIZE, entry);
      return this.sectorOf(index);
    });
  }

  get dirtyCount(): number {
    return this.pages.dirtyCount;
  }

  /** The 4 KiB sector of the BAT (its dirty unit) that holds entry `index`. */
  sectorOf(index: number): number {
    return Math.floor((index * BAT_ENTRY_SIZE) / SECTOR);
  }

  /** True when the sector `sector` has changes not yet taken by `takeDirty`. */
  isDirty(sector: number): boolean {
    return this.pages.isDirty(sector);
  }

  /**
   * Copies of up to `max` dirty sectors, as they must land in the file: the dirty ones of
   * `first`, then the others lowest first except those in `hold`. They stay pinned in the cache
   * until `release` is called with them, after they were applied.
   */
  takeDirty(max = Infinity, first: readonly number[] = [], hold?: ReadonlySet<number>): DirtyBatch {
    return this.pages.takeDirty(max, (sector, view) => {
      const inPage = (sector % SECTORS_PER_PAGE) * SECTOR;
      return {
        fileOffset: this.regionOffset + sector * SECTOR,
        data: new Uint8Array(view.buffer, view.byteOffset + inPage, SECTOR).slice(),
      };
    }, first, hold);
  }

  /** Unpin sectors handed out by `takeDirty` once they are in the file (or put them back on failure). */
  release(batch: DirtyBatch, applied: boolean): void {
    this.pages.release(batch, applied);
  }

  private async readPage(page: number): Promise<DataView> {
    const first = page * ENTRIES_PER_PAGE;
    if (first >= this.entryCount) throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `BAT index ${first} beyond ${this.entryCount} entries`);
    // Whole pages (the region is a 1 MiB multiple), so every sector of a page can be logged as is.
    const bytes = new Uint8Array(Math.min(BAT_PAGE_BYTES, this.at.regionLength - first * BAT_ENTRY_SIZE));
    await readExact(this.src, this.regionOffset + first * BAT_ENTRY_SIZE, bytes, 'BAT');
    const view = viewOf(bytes);
    this.validate(view, first, Math.min(ENTRIES_PER_PAGE, this.entryCount - first));
    return view;
  }

  /** Validate `count` raw entries starting at BAT index `first`; throws on the first bad one. */
  validate(view: DataView, first: number, count: number): void {
    const fileSize = this.at.fileSize();
    for (let i = 0; i < count; i++) {
      const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
      const hi = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
      if (lo === 0 && hi === 0) continue; // NOT_PRESENT, the common case
      const v = judgeBatEntry(this.at.geometry, this.at.hasParent, fileSize, first + i, lo, hi);
      if (v.kind === 'bad') {
        throw corrupt(v.reason, `block ${v.message}`, { structure: `BAT entry ${first + i}`, offset: this.regionOffset + (first + i) * BAT_ENTRY_SIZE });
      }
      if (v.kind === 'present') {
        const o = this.at.structures?.find((x) => v.fileOffset < x.end && v.fileOffset + v.extent > x.start);
        if (o) {
          throw corrupt('BLOCK_OVERLAP', `block at file offset 0x${v.fileOffset.toString(16)} (+${v.extent}) overlaps ${o.name} (0x${o.start.toString(16)} to 0x${o.end.toString(16)})`, {
            structure: `BAT entry ${first + i}`,
            offset: this.regionOffset + (first + i) * BAT_ENTRY_SIZE,
          });
        }
      }
    }
  }
}
