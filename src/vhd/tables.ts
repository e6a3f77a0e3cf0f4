/**
 * A dynamic VHD's BAT and sector bitmaps, paged through bounded LRU caches (the shared PageCache)
 * in their on-disk bytes. A BAT page is validated entry by entry when it is loaded; a change
 * marks its 512-byte sector dirty (a sector is what the disk writes whole) and pins the page until
 * a commit has written it. A block's bitmap is one page, dirty as a whole.
 * Memory: `cacheBytes` of BAT pages and `bitmapCacheBytes` of bitmaps, plus pinned pages.
 */
import { VhdxError } from '../errors.js';
import { viewOf } from '../codec/struct.js';
import { readBytes, readExact, type RandomAccessSource } from '../io/source.js';
import { PageCache, type DirtyBatch } from '../driver/page-cache.js';
import { BAT_ENTRY_SIZE, SECTOR, UNALLOCATED, allBitsSet } from './bat.js';
import { badEntryError, judgeBlock, type VhdLayout } from './layout.js';

/** How much of a VHD's BAT and sector bitmaps an open image keeps in memory. */
export interface VhdCacheOptions {
  /** Bytes of BAT pages kept in memory (default 4 MiB: the whole BAT of a 2040 GiB disk of 2 MiB blocks). */
  cacheBytes?: number;
  /** Bytes of sector bitmaps kept in memory (default 4 MiB). */
  bitmapCacheBytes?: number;
}

const PAGE_BYTES = 64 * 1024;
const ENTRIES_PER_PAGE = PAGE_BYTES / BAT_ENTRY_SIZE;
const SECTORS_PER_PAGE = PAGE_BYTES / SECTOR;
const ENTRIES_PER_SECTOR = SECTOR / BAT_ENTRY_SIZE;

export class VhdBat {
  private readonly pages: PageCache<DataView>;
  private readonly tableOffset: number;

  /** `limit()`: where blocks must end (the data limit, or a writer's end of blocks). */
  constructor(
    private readonly src: RandomAccessSource,
    private readonly layout: VhdLayout,
    private readonly limit: () => number,
    opts: VhdCacheOptions = {},
  ) {
    this.tableOffset = layout.dynamic!.tableOffset;
    const maxPages = Math.max(2, Math.floor((opts.cacheBytes ?? 4 * 1024 * 1024) / PAGE_BYTES));
    this.pages = new PageCache(maxPages, (page) => this.readPage(page), SECTORS_PER_PAGE);
  }

  /** The block sector of block `index` when its page is cached, else undefined. */
  cached(index: number): number | undefined {
    const view = this.pages.cached(Math.floor(index / ENTRIES_PER_PAGE));
    return view?.getUint32((index % ENTRIES_PER_PAGE) * BAT_ENTRY_SIZE, false);
  }

  /** The block sector of block `index` (UNALLOCATED or a validated place). */
  async entry(index: number): Promise<number> {
    return this.cached(index) ?? (await this.pages.get(Math.floor(index / ENTRIES_PER_PAGE))).getUint32((index % ENTRIES_PER_PAGE) * BAT_ENTRY_SIZE, false);
  }

  /** Load, and so validate, the pages holding blocks `first` to `last`. */
  async validate(first: number, last: number): Promise<void> {
    for (let p = Math.floor(first / ENTRIES_PER_PAGE); p <= Math.floor(last / ENTRIES_PER_PAGE); p++) await this.pages.get(p);
  }

  /** Point block `index` at `sector` in memory; its BAT sector is dirty until a commit takes it. */
  async set(index: number, sector: number): Promise<void> {
    await this.pages.change(Math.floor(index / ENTRIES_PER_PAGE), (view) => {
      view.setUint32((index % ENTRIES_PER_PAGE) * BAT_ENTRY_SIZE, sector, false);
      return Math.floor(index / ENTRIES_PER_SECTOR);
    });
  }

  get dirtyCount(): number {
    return this.pages.dirtyCount;
  }

  /** Copies of the dirty BAT sectors, as they must land in the file (pinned until `release`). */
  takeDirty(): DirtyBatch {
    return this.pages.takeDirty(Infinity, (sector, view) => ({
      fileOffset: this.tableOffset + sector * SECTOR,
      data: new Uint8Array(view.buffer, view.byteOffset + (sector % SECTORS_PER_PAGE) * SECTOR, SECTOR).slice(),
    }));
  }

  release(batch: DirtyBatch, applied: boolean): void {
    this.pages.release(batch, applied);
  }

  private async readPage(page: number): Promise<DataView> {
    const d = this.layout.dynamic!;
    const first = page * ENTRIES_PER_PAGE;
    if (first >= d.blocks) throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `BAT index ${first} beyond ${d.blocks} blocks`);
    // Whole sectors of the table (it is padded to a sector), so a dirty sector is written as is.
    const bytes = await readBytes(this.src, this.tableOffset + first * BAT_ENTRY_SIZE, Math.min(PAGE_BYTES, d.tableBytes - first * BAT_ENTRY_SIZE), 'VHD BAT');
    const view = viewOf(bytes);
    const limit = this.limit();
    for (let i = 0, n = Math.min(ENTRIES_PER_PAGE, d.blocks - first); i < n; i++) {
      const sector = view.getUint32(i * BAT_ENTRY_SIZE, false);
      if (sector === UNALLOCATED) continue;
      const v = judgeBlock(this.layout, first + i, sector, limit);
      if (v.kind === 'bad') throw badEntryError(this.layout, first + i, v);
    }
    return view;
  }
}

/** A block's sector bitmap in memory: where it is in the file, its bits, and whether all are set. */
export interface BlockBitmap {
  fileOffset: number;
  bits: Uint8Array;
  full: boolean;
}

export class VhdBitmaps {
  private readonly pages: PageCache<BlockBitmap>;
  /** Bitmaps of blocks allocated in this session, handed to the cache on their first load. */
  private readonly fresh = new Map<number, BlockBitmap>();
  private readonly sectorsPerBlock: number;

  constructor(
    private readonly src: RandomAccessSource,
    private readonly bat: VhdBat,
    private readonly bitmapBytes: number,
    blockSize: number,
    opts: VhdCacheOptions = {},
  ) {
    this.sectorsPerBlock = blockSize / SECTOR;
    const maxPages = Math.max(16, Math.floor((opts.bitmapCacheBytes ?? 4 * 1024 * 1024) / bitmapBytes));
    this.pages = new PageCache(maxPages, (block) => this.load(block));
  }

  /** The bitmap of allocated block `block` when cached (made most recent), else undefined. */
  cached(block: number): BlockBitmap | undefined {
    return this.pages.cached(block);
  }

  /** The bitmap of allocated block `block`. */
  async get(block: number): Promise<BlockBitmap> {
    return this.pages.get(block);
  }

  /** Record the bitmap of a block allocated now (already written at `fileOffset`). */
  async added(block: number, fileOffset: number, bits: Uint8Array): Promise<void> {
    this.fresh.set(block, { fileOffset, bits, full: allBitsSet(bits, 0, this.sectorsPerBlock) });
    try {
      await this.pages.get(block);
    } finally {
      this.fresh.delete(block);
    }
  }

  /** Change the bits of allocated block `block` in memory; dirty until a commit writes it. */
  async change(block: number, apply: (bits: Uint8Array) => void): Promise<void> {
    await this.pages.change(block, (b) => {
      apply(b.bits);
      b.full = allBitsSet(b.bits, 0, this.sectorsPerBlock);
      return block;
    });
  }

  get dirtyCount(): number {
    return this.pages.dirtyCount;
  }

  takeDirty(): DirtyBatch {
    return this.pages.takeDirty(Infinity, (_block, b) => ({ fileOffset: b.fileOffset, data: b.bits.slice() }));
  }

  release(batch: DirtyBatch, applied: boolean): void {
    this.pages.release(batch, applied);
  }

  private async load(block: number): Promise<BlockBitmap> {
    const f = this.fresh.get(block);
    if (f) return f;
    const sector = await this.bat.entry(block);
    if (sector === UNALLOCATED) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `block ${block} has no bitmap: it is not allocated`);
    const fileOffset = sector * SECTOR;
    const bits = new Uint8Array(this.bitmapBytes);
    await readExact(this.src, fileOffset, bits, 'VHD sector bitmap');
    return { fileOffset, bits, full: allBitsSet(bits, 0, this.sectorsPerBlock) };
  }
}
