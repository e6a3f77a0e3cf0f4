/**
 * The BAT, paged through a bounded LRU cache of raw on-disk bytes. A page is validated entry by
 * entry when it is loaded (state allowed for the disk type, reserved bits clear, present blocks
 * inside the file and after the header section), so lookups on a cached page are plain reads.
 * Memory is bounded by `maxPages`, never by the image's size.
 */
import { VhdxError, corrupt } from '../errors.js';
import { viewOf } from '../codec/struct.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import { HEADER_SECTION_SIZE, MiB } from '../format/constants.js';
import { BAT_ENTRY_SIZE, BitmapState, PayloadState, batEntryReservedClear, type BatEntry, type BatGeometry } from '../format/bat.js';

export const BAT_PAGE_BYTES = 64 * 1024;
const ENTRIES_PER_PAGE = BAT_PAGE_BYTES / BAT_ENTRY_SIZE;

function decodeAt(page: DataView, index: number): BatEntry {
  const at = (index % ENTRIES_PER_PAGE) * BAT_ENTRY_SIZE;
  const lo = page.getUint32(at, true);
  return { state: lo & 7, fileOffsetMB: page.getUint32(at + 4, true) * 4096 + (lo >>> 20) };
}

export interface BatCacheOptions {
  /** Bytes of BAT pages kept in memory (default 16 MiB). */
  cacheBytes?: number;
}

export class BatCache {
  private readonly pages = new Map<number, DataView>();
  private readonly loading = new Map<number, Promise<DataView>>();
  private readonly maxPages: number;

  constructor(
    private readonly src: RandomAccessSource,
    /** File offset of the BAT region. */
    readonly regionOffset: number,
    /** Entries the BAT holds that we may index. */
    readonly entryCount: number,
    private readonly geometry: BatGeometry,
    private readonly hasParent: boolean,
    /** Size of the file as opened (after an in-memory replay, its replayed size). */
    private readonly fileSize: number,
    opts: BatCacheOptions = {},
  ) {
    this.maxPages = Math.max(2, Math.floor((opts.cacheBytes ?? 16 * MiB) / BAT_PAGE_BYTES));
  }

  /** The entry at BAT index `index`, loading (and validating) its page when not cached. */
  async entry(index: number): Promise<BatEntry> {
    return this.cached(index) ?? decodeAt(await this.load(Math.floor(index / ENTRIES_PER_PAGE)), index);
  }

  /** The entry at `index` when its page is cached, else undefined: lets hot paths skip an await. */
  cached(index: number): BatEntry | undefined {
    const view = this.pages.get(Math.floor(index / ENTRIES_PER_PAGE));
    return view && decodeAt(view, index);
  }

  private load(page: number): Promise<DataView> {
    let p = this.loading.get(page);
    if (!p) {
      p = this.readPage(page).finally(() => this.loading.delete(page));
      this.loading.set(page, p);
    }
    return p;
  }

  private async readPage(page: number): Promise<DataView> {
    const first = page * ENTRIES_PER_PAGE;
    const count = Math.min(ENTRIES_PER_PAGE, this.entryCount - first);
    if (count <= 0) throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `BAT index ${first} beyond ${this.entryCount} entries`);
    const bytes = new Uint8Array(count * BAT_ENTRY_SIZE);
    const at = this.regionOffset + first * BAT_ENTRY_SIZE;
    await readExact(this.src, at, bytes, 'BAT');
    const view = viewOf(bytes);
    this.validate(view, first, count);
    const existing = this.pages.get(page);
    if (existing) return existing;
    if (this.pages.size >= this.maxPages) {
      const oldest = this.pages.keys().next().value as number;
      this.pages.delete(oldest);
    }
    this.pages.set(page, view);
    return view;
  }

  /** Validate `count` raw entries starting at BAT index `first`. */
  validate(view: DataView, first: number, count: number): void {
    const C = this.geometry.chunkRatio;
    const blockSize = this.geometry.blockSize;
    for (let i = 0; i < count; i++) {
      const at = i * BAT_ENTRY_SIZE;
      const lo = view.getUint32(at, true);
      const hi = view.getUint32(at + 4, true);
      if (lo === 0 && hi === 0) continue; // NOT_PRESENT, the common case
      const index = first + i;
      const where = { structure: `BAT entry ${index}`, offset: this.regionOffset + index * BAT_ENTRY_SIZE };
      if (!batEntryReservedClear(view, at)) {
        throw corrupt('BAD_BAT_ENTRY', `reserved bits are set (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`, where);
      }
      const state = lo & 7;
      const fileOffset = (hi * 4096 + (lo >>> 20)) * MiB;
      const isBitmap = (index + 1) % (C + 1) === 0;
      let extent: number;
      if (isBitmap) {
        if (state === BitmapState.NOT_PRESENT) continue;
        if (state !== BitmapState.PRESENT || !this.hasParent) {
          throw corrupt('BAD_BLOCK_STATE', `sector bitmap state ${state} is not allowed in a ${this.hasParent ? 'differencing' : 'non-differencing'} disk`, where);
        }
        extent = MiB;
      } else {
        if (state === PayloadState.PARTIALLY_PRESENT) {
          if (!this.hasParent) throw corrupt('BAD_BLOCK_STATE', 'PARTIALLY_PRESENT block in a disk without a parent', where);
        } else if (state !== PayloadState.FULLY_PRESENT) {
          if (state === 4) throw corrupt('BAD_BLOCK_STATE', `payload block state ${state} is undefined`, where);
          continue;
        }
        // The last block of a disk may be cut short by the disk's end.
        const blockIndex = index - Math.floor(index / (C + 1));
        extent = Math.min(blockSize, this.geometry.virtualSize - blockIndex * blockSize);
      }
      if (fileOffset < HEADER_SECTION_SIZE) {
        throw corrupt('BAT_ENTRY_IN_HEADER', `block at file offset ${fileOffset} lies inside the header section`, where);
      }
      if (fileOffset + extent > this.fileSize) {
        throw corrupt('BAT_ENTRY_OUT_OF_BOUNDS', `block at file offset ${fileOffset} (+${extent}) lies beyond the end of the file (${this.fileSize})`, where);
      }
    }
  }
}
