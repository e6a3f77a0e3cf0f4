/**
 * The mapping layer: the one place that translates the virtual disk into the file.
 *
 * Block level: payload block `b` → its BAT entry, chunk `c` → its sector bitmap entry, through
 * the bounded BAT cache. Nothing else computes a BAT index from a block or looks an entry up.
 *
 * Range level: `runs(offset, length)` cuts [offset, offset + length) into runs, in order:
 * - `data`: the bytes are in this file at `fileOffset` (FULLY_PRESENT blocks, and the set
 *   sectors of PARTIALLY_PRESENT ones, whose sector bitmaps are resolved here);
 * - `zero`: the range reads as zeros from this image (ZERO, UNMAPPED, UNDEFINED blocks);
 * - `parent`: the range reads as the parent does (NOT_PRESENT blocks and the unset sectors of
 *   a differencing disk);
 * - `unallocated`: NOT_PRESENT blocks of a disk without a parent (zeros).
 * A disk without a parent never yields `parent`. A differencing disk grown past its parent's
 * size (resize) shows zeros, not its parent, past the parent's end: what would be a `parent`
 * run there is a `zero` run (not stored). `stored` says whether file space stands behind
 * the run: always for data; for zero and unallocated runs only on a fixed disk, whose blocks
 * keep the space the disk was made with whatever their state. The place an UNMAPPED or UNDEFINED
 * entry may keep (a free-space claim, see writer.ts) holds no part of the block's content and is
 * not storage behind it. Adjacent runs of one kind are merged (data runs when they are also
 * contiguous in the file). The last run may end past the range: a whole-block state to the end
 * of its block, data resolved from a sector bitmap to the end of its sector; parent runs never do.
 *
 * `fastLookup` answers a request inside one block whose BAT page is cached without a promise:
 * small random I/O does no more work than one entry decode.
 *
 * Places change under readers only when a block moves (writer.ts, `moveBlocks`); `generation`
 * counts those moves, so that a read that looked a place up before a move can tell and read again
 * (the old place may hold other data once the move is committed).
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import type { RandomAccessSource } from '../io/source.js';
import { HEADER_SECTION_SIZE, MiB } from '../format/constants.js';
import { PayloadState, bitmapBatIndex, payloadBatIndex, type BatEntry, type BatGeometry } from '../format/bat.js';
import type { ProgressOptions } from '../device/block-device.js';
import { BatCache, type BatCacheOptions } from './bat-cache.js';
import { SectorBitmaps, type BitmapCacheOptions } from './bitmap-cache.js';
import type { Layout } from './open.js';
import { fixedObjects } from './free-space.js';

export type RunKind = 'data' | 'zero' | 'parent' | 'unallocated';

/** One run of the virtual disk as this image maps it (see the top of this file). */
export interface Run {
  offset: number;
  length: number;
  kind: RunKind;
  /** For data runs, the file offset of the run's first byte; -1 otherwise. */
  fileOffset: number;
  /** File space stands behind the run (data; zero and unallocated runs of a fixed disk). */
  stored: boolean;
}

/** An entry that names a place in the file (see BlockMap.places). */
export interface PlacedBlock {
  /** A payload block, or the sector bitmap block of a chunk. */
  kind: 'payload' | 'bitmap';
  /** The payload block's index, or the chunk's. */
  index: number;
  /** The entry's state (PayloadState or BitmapState). */
  state: number;
  /** File offset of the place, in bytes. */
  fileOffset: number;
  /** Bytes the place takes: a payload block, or 1 MiB for a sector bitmap block. */
  length: number;
}

/** `fastLookup`: the request needs `runs` (it crosses a block, its BAT page is not cached, or the block is partially present). */
export const LOOKUP_MISS = -1;
/** `fastLookup`: the request reads as zeros. */
export const LOOKUP_ZERO = -2;
/** `fastLookup`: the request reads as the parent does. */
export const LOOKUP_PARENT = -3;

/** What the sector bitmaps need of the mapping: where each chunk's bitmap block is. */
export interface BitmapPlaces {
  cachedBitmapEntry(chunk: number): BatEntry | undefined;
  bitmapEntry(chunk: number): Promise<BatEntry>;
  readonly generation: number;
}

export class BlockMap implements BitmapPlaces {
  /** The BAT's cache. Commits take its dirty sectors; lookups go through this class. */
  readonly bat: BatCache;
  /** A differencing disk's sector bitmaps (null for other disks). */
  readonly bitmaps: SectorBitmaps | null;
  private readonly g: BatGeometry;
  private readonly blockSize: number;
  private readonly size: number;
  private readonly sectorSize: number;
  private readonly hasParent: boolean;
  /** Zero and unallocated runs keep storage: fixed disks. */
  private readonly zeroStored: boolean;
  private readonly entryCount: number;
  private moves = 0;
  /** Where the parent's disk ends (the disk's size when the parent is as large, or unknown). */
  readonly parentEnd: number;

  /**
   * The mapping of the image `layout` describes, read through `layout.source` with caches bounded
   * by `opts`. `parentSize`: a differencing disk's parent's size, when the parent is open.
   */
  constructor(layout: Layout, opts: BatCacheOptions & BitmapCacheOptions = {}, parentSize?: number) {
    const src: RandomAccessSource = layout.source;
    this.bat = new BatCache(
      src,
      {
        regionOffset: layout.batRegion.fileOffset,
        regionLength: layout.batRegion.length,
        entryCount: layout.batEntries,
        geometry: layout.geometry,
        hasParent: layout.hasParent,
        fileSize: () => src.size,
        // The header section is judged with every entry (BAT_ENTRY_IN_HEADER); the rest here.
        structures: fixedObjects(layout).objects.filter((o) => o.start >= HEADER_SECTION_SIZE),
      },
      opts,
    );
    this.g = layout.geometry;
    this.blockSize = layout.blockSize;
    this.size = layout.virtualSize;
    this.sectorSize = layout.logicalSectorSize;
    this.hasParent = layout.hasParent;
    this.zeroStored = layout.type === 'fixed';
    this.entryCount = layout.batEntries;
    this.parentEnd = Math.min(parentSize ?? layout.virtualSize, layout.virtualSize);
    this.bitmaps = layout.hasParent ? new SectorBitmaps(src, this, this.g, opts) : null;
  }

  /** Moves of blocks so far (see the top of this file). */
  get generation(): number {
    return this.moves;
  }

  /** Payload blocks of the disk. */
  get blocks(): number {
    return this.g.payloadBlocks;
  }

  /** Chunks of the disk (one sector bitmap entry each). */
  get chunks(): number {
    return this.g.bitmapBlocks;
  }

  /** The entry of payload block `block` when its BAT page is cached, else undefined: hot paths skip an await. */
  cachedEntry(block: number): BatEntry | undefined {
    return this.bat.cached(payloadBatIndex(this.g, block));
  }

  /** The entry of payload block `block`, loading (and validating) its BAT page when not cached. */
  entry(block: number): Promise<BatEntry> {
    return this.bat.entry(payloadBatIndex(this.g, block));
  }

  /** Change the entry of payload block `block` in memory; a commit writes it through the log. */
  setEntry(block: number, e: BatEntry): Promise<void> {
    return this.bat.set(payloadBatIndex(this.g, block), e);
  }

  cachedBitmapEntry(chunk: number): BatEntry | undefined {
    return this.bat.cached(bitmapBatIndex(this.g, chunk));
  }

  bitmapEntry(chunk: number): Promise<BatEntry> {
    return this.bat.entry(bitmapBatIndex(this.g, chunk));
  }

  setBitmapEntry(chunk: number, e: BatEntry): Promise<void> {
    return this.bat.set(bitmapBatIndex(this.g, chunk), e);
  }

  /** The BAT sector (the unit a commit logs) holding payload block `block`'s entry. */
  batSectorOf(block: number): number {
    return this.bat.sectorOf(payloadBatIndex(this.g, block));
  }

  /** The chunk payload block `block` belongs to. */
  chunkOf(block: number): number {
    return Math.floor(block / this.g.chunkRatio);
  }

  /** Bytes of the virtual disk payload block `block` covers (the last block may be short). */
  blockExtent(block: number): number {
    return Math.min(this.blockSize, this.size - block * this.blockSize);
  }

  /** Count a block's move: reads that looked a place up before it read again. */
  moved(): void {
    this.moves++;
  }

  /**
   * Load, and so validate, the BAT pages that map [offset, offset + length): the payload entries,
   * and on a differencing disk the sector bitmap entries of their chunks.
   */
  async validate(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    const firstBlock = Math.floor(offset / this.blockSize);
    const lastBlock = Math.floor((offset + length - 1) / this.blockSize);
    const last = this.hasParent ? bitmapBatIndex(this.g, this.chunkOf(lastBlock)) : payloadBatIndex(this.g, lastBlock);
    await this.bat.validateEntries(payloadBatIndex(this.g, firstBlock), last);
  }

  /**
   * Make every entry of the BAT NOT_PRESENT with no place (payload and sector bitmap entries,
   * and those past the disk's last block), after validating them all. `step` runs after each
   * change (the writer commits there when the log is full). Progress is in entries.
   */
  async clearAll(opts: ProgressOptions, step: () => Promise<void>): Promise<void> {
    const total = this.entryCount;
    for (let i = 0; i < total; i++) {
      if (i % 4096 === 0) {
        throwIfAborted(opts.signal, 'clearing the blocks');
        opts.onProgress?.(i, total);
      }
      const e = this.bat.cached(i) ?? (await this.bat.entry(i));
      if (e.state !== PayloadState.NOT_PRESENT || e.fileOffsetMB !== 0) {
        await this.bat.set(i, { state: PayloadState.NOT_PRESENT, fileOffsetMB: 0 });
        await step();
      }
    }
    opts.onProgress?.(total, total);
  }

  /**
   * Every entry that names a place in the file, in BAT order, as memory has it now: payload
   * blocks (any state: an UNMAPPED claim names its place too) and sector bitmap blocks. Progress
   * is in entries. Compact and the writer's hole finder walk the BAT through this.
   */
  async *places(opts: ProgressOptions = {}): AsyncGenerator<PlacedBlock> {
    const total = this.entryCount;
    const period = this.g.chunkRatio + 1;
    for (let i = 0; i < total; i++) {
      if (i % 4096 === 0) {
        throwIfAborted(opts.signal, 'walking the BAT');
        opts.onProgress?.(i, total);
      }
      const e = this.bat.cached(i) ?? (await this.bat.entry(i));
      if (e.fileOffsetMB === 0) continue;
      const fileOffset = e.fileOffsetMB * MiB;
      if (i % period === this.g.chunkRatio) yield { kind: 'bitmap', index: Math.floor(i / period), state: e.state, fileOffset, length: MiB };
      else {
        const block = i - Math.floor(i / period);
        // An entry past the disk's last block that names a place still takes the space.
        yield { kind: 'payload', index: block, state: e.state, fileOffset, length: this.blockSize };
      }
    }
    opts.onProgress?.(total, total);
  }

  /** Load, and so validate, every page of the BAT. */
  validateAll(): Promise<void> {
    return this.bat.validateEntries(0, this.entryCount - 1);
  }

  /**
   * Where [offset, offset + length) is, when that needs no promise: a file offset (>= 0) when
   * the range lies in one FULLY_PRESENT block whose BAT page is cached, LOOKUP_ZERO or
   * LOOKUP_PARENT when it lies in one such block that reads as zeros or as the parent, else
   * LOOKUP_MISS (call `runs`).
   */
  fastLookup(offset: number, length: number): number {
    const block = Math.floor(offset / this.blockSize);
    const inBlock = offset - block * this.blockSize;
    if (inBlock + length > this.blockSize) return LOOKUP_MISS;
    const e = this.bat.cached(payloadBatIndex(this.g, block));
    if (e === undefined) return LOOKUP_MISS;
    switch (e.state) {
      case PayloadState.FULLY_PRESENT:
        return e.fileOffsetMB * MiB + inBlock;
      case PayloadState.PARTIALLY_PRESENT:
        return LOOKUP_MISS;
      case PayloadState.NOT_PRESENT:
        if (!this.hasParent || offset >= this.parentEnd) return LOOKUP_ZERO;
        return offset + length <= this.parentEnd ? LOOKUP_PARENT : LOOKUP_MISS;
      default:
        return LOOKUP_ZERO;
    }
  }

  /** The runs of [offset, offset + length) (see the top of this file). The range must lie inside the disk. */
  async runs(offset: number, length: number): Promise<Run[]> {
    const out: Run[] = [];
    const end = offset + length;
    const bs = this.blockSize;
    const lss = this.sectorSize;
    for (let pos = offset; pos < end; ) {
      const block = Math.floor(pos / bs);
      const blockStart = block * bs;
      const blockEnd = Math.min(blockStart + bs, this.size);
      if (blockEnd <= blockStart) throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `offset ${pos} lies beyond the ${this.size}-byte disk`);
      const stop = Math.min(blockEnd, end);
      const index = payloadBatIndex(this.g, block);
      const e = this.bat.cached(index) ?? (await this.bat.entry(index));
      // File offset of the block's virtual offset 0, shifted by the block's start.
      const base = e.fileOffsetMB * MiB - blockStart;
      if (e.state === PayloadState.FULLY_PRESENT) {
        push(out, pos, blockEnd - pos, 'data', base + pos, true);
      } else if (e.state === PayloadState.PARTIALLY_PRESENT && this.bitmaps) {
        // Whole sectors from `pos` to the one holding `stop` (`at` is sector aligned after the first run).
        let at = pos;
        let sector = Math.floor(pos / lss);
        for (const r of await this.bitmaps.runs(sector, Math.ceil(stop / lss) - sector)) {
          sector += r.count;
          const runEnd = Math.min(sector * lss, blockEnd);
          if (r.present) push(out, at, runEnd - at, 'data', base + at, true);
          else this.pushParent(out, at, Math.min(runEnd, stop));
          at = runEnd;
        }
      } else if (e.state === PayloadState.NOT_PRESENT) {
        if (this.hasParent) this.pushParent(out, pos, stop);
        else push(out, pos, blockEnd - pos, 'unallocated', -1, this.zeroStored);
      } else {
        push(out, pos, blockEnd - pos, 'zero', -1, this.zeroStored);
      }
      pos = blockEnd;
    }
    return out;
  }

  /** [from, to) shows the parent: a parent run, and zeros for what lies past the parent's end. */
  private pushParent(out: Run[], from: number, to: number): void {
    const cut = Math.max(from, Math.min(to, this.parentEnd));
    if (cut > from) push(out, from, cut - from, 'parent', -1, false);
    if (to > cut) push(out, cut, to - cut, 'zero', -1, false);
  }
}

/** Append a run, merged into the last one when it continues it. */
function push(out: Run[], offset: number, length: number, kind: RunKind, fileOffset: number, stored: boolean): void {
  const last = out[out.length - 1];
  if (
    last !== undefined &&
    last.kind === kind &&
    last.stored === stored &&
    last.offset + last.length === offset &&
    (kind !== 'data' || last.fileOffset + last.length === fileOffset)
  ) {
    last.length += length;
  } else {
    out.push({ offset, length, kind, fileOffset, stored });
  }
}
