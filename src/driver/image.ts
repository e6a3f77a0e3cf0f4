/**
 * A VHDX image opened for reading: the layout validated at open, the BAT through a bounded
 * cache, reads at any offset and length, block status, and a streaming BAT scan for statistics.
 */
import { VhdxError, corrupt } from '../errors.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import { MiB } from '../format/constants.js';
import { BAT_ENTRY_SIZE, PAYLOAD_STATE_NAMES, PayloadState, judgeBatEntry, payloadBatIndex } from '../format/bat.js';
import { batWindowEntries, scanBat } from './bat-scan.js';
import type { BlockDevice, DeviceCapabilities, Extent, ProgressOptions } from '../device/block-device.js';
import { BatCache, type BatCacheOptions, type BatPlacement } from './bat-cache.js';
import { openLayout, replayInPlace, type Layout } from './open.js';
import { Writer, type WriteOptions, type ZeroOptions } from './writer.js';
import type { CurrentHeader } from './headers.js';

function batPlacement(layout: Layout, src: RandomAccessSource): BatPlacement {
  return {
    regionOffset: layout.batRegion.fileOffset,
    regionLength: layout.batRegion.length,
    entryCount: layout.batEntries,
    geometry: layout.geometry,
    hasParent: layout.hasParent,
    fileSize: () => src.size,
  };
}
import { bytesEqual } from '../codec/bytes.js';

export interface OpenOptions extends BatCacheOptions {
  /**
   * Open for reading only (the default). A writable open needs a writable source; it replays a
   * dirty log into the file first.
   */
  readOnly?: boolean;
}

/** Bytes of the virtual disk per payload block state, and how scattered the allocated blocks are. */
export interface AllocationStats {
  /** Bytes of the virtual disk in each state (keys: notPresent, undefined, zero, unmapped, fullyPresent, partiallyPresent). */
  bytesByState: Record<string, number>;
  /** Payload blocks stored in the file (fully or partially present). */
  allocatedBlocks: number;
  /** Sector bitmap blocks present (differencing disks). */
  bitmapBlocks: number;
  /**
   * Percentage of allocated blocks, after the first in virtual-disk order, that do not directly
   * follow the previous allocated block in the file. 0 for a disk written front to back.
   */
  fragmentationPercentage: number;
}


export class VhdxImage implements BlockDevice {
  readonly readOnly: boolean;
  readonly can: DeviceCapabilities;
  private readonly bat: BatCache;
  private readonly src: RandomAccessSource;
  private readonly writer: Writer | null;
  private closed = false;

  private constructor(
    readonly layout: Layout,
    private readonly file: RandomAccessSource,
    opts: OpenOptions,
  ) {
    this.src = layout.source;
    this.bat = new BatCache(this.src, batPlacement(layout, this.src), opts);
    this.readOnly = opts.readOnly ?? true;
    this.writer = this.readOnly ? null : new Writer(file, layout, this.bat);
    const w = !this.readOnly;
    this.can = { zero: w, fastZero: w && !layout.leaveBlocksAllocated, discard: w, extents: true, fua: w };
  }

  /**
   * Open and validate an image. Read-only (the default): a dirty log is replayed in memory and
   * the file is never written. Writable: a dirty log is replayed into the file first.
   */
  static async open(source: RandomAccessSource, opts: OpenOptions = {}): Promise<VhdxImage> {
    const readOnly = opts.readOnly ?? true;
    if (!readOnly) {
      if (source.readOnly || !source.write || !source.flush || !source.truncate) {
        throw new VhdxError('EROFS', 'READ_ONLY', 'a writable open needs a writable source');
      }
      await replayInPlace(source);
    }
    const layout = await openLayout(source);
    if (!readOnly && layout.hasParent) {
      throw new VhdxError('ENOTSUP', 'DIFFERENCING_NOT_SUPPORTED', 'writing differencing images is not supported yet');
    }
    return new VhdxImage(layout, source, { ...opts, readOnly });
  }

  /** The current header: after writes, the one this session last wrote. */
  get header(): CurrentHeader {
    return this.writer ? { ...this.writer.currentHeader } : this.layout.current;
  }

  /** Write `data` at `offset`. With `fua`, durable when this returns. */
  async write(offset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    this.checkRange(offset, data.length);
    await this.writable().write(offset, data, opts);
  }

  /** Make [offset, offset + length) read as zeros: whole blocks become ZERO blocks, no data written. */
  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.checkRange(offset, length);
    await this.writable().writeZeroes(offset, length, opts);
  }

  /** Deallocate [offset, offset + length): whole blocks become UNMAPPED; the range reads as zeros after. */
  async discard(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    await this.writable().discard(offset, length);
  }

  get size(): number {
    return this.layout.virtualSize;
  }
  get logicalSectorSize(): number {
    return this.layout.logicalSectorSize;
  }
  get physicalSectorSize(): number {
    return this.layout.physicalSectorSize;
  }
  get blockSize(): number {
    return this.layout.blockSize;
  }
  get type(): Layout['type'] {
    return this.layout.type;
  }

  /** Fill `into` with the virtual disk's bytes at `offset`. */
  async read(offset: number, into: Uint8Array): Promise<void> {
    this.checkRange(offset, into.length);
    this.assertReadable();
    const bs = this.layout.blockSize;
    // Fast path: a request inside one block whose BAT page is cached (small random I/O).
    const firstBlock = Math.floor(offset / bs);
    if (offset + into.length <= (firstBlock + 1) * bs) {
      const e = this.bat.cached(payloadBatIndex(this.layout.geometry, firstBlock));
      if (e) {
        if (e.state === PayloadState.FULLY_PRESENT) return readExact(this.src, e.fileOffsetMB * MiB + offset - firstBlock * bs, into, 'payload block');
        into.fill(0);
        return;
      }
    }
    let pos = 0;
    // Walk block by block, merging runs of blocks that are contiguous in the file into one read.
    let runFile = -1;
    let runStart = 0;
    let runLen = 0;
    const pending: Promise<void>[] = [];
    const flushRun = (): void => {
      if (runLen > 0) {
        pending.push(readExact(this.src, runFile, into.subarray(runStart, runStart + runLen), 'payload block'));
        runLen = 0;
      }
    };
    while (pos < into.length) {
      const vo = offset + pos;
      const blockIndex = Math.floor(vo / bs);
      const inBlock = vo - blockIndex * bs;
      const n = Math.min(bs - inBlock, into.length - pos);
      const batIndex = payloadBatIndex(this.layout.geometry, blockIndex);
      const e = this.bat.cached(batIndex) ?? (await this.bat.entry(batIndex));
      if (e.state === PayloadState.FULLY_PRESENT) {
        const fo = e.fileOffsetMB * MiB + inBlock;
        if (runLen > 0 && runFile + runLen === fo && runLen < 64 * MiB) runLen += n;
        else {
          flushRun();
          runFile = fo;
          runStart = pos;
          runLen = n;
        }
      } else {
        flushRun();
        into.fill(0, pos, pos + n);
      }
      pos += n;
    }
    flushRun();
    await Promise.all(pending);
  }

  /** Extents of [offset, offset + length), merged, from the BAT alone. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    this.assertReadable();
    const bs = this.layout.blockSize;
    const out: Extent[] = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const blockIndex = Math.floor(pos / bs);
      const blockEnd = Math.min((blockIndex + 1) * bs, this.size);
      const batIndex = payloadBatIndex(this.layout.geometry, blockIndex);
      const e = this.bat.cached(batIndex) ?? (await this.bat.entry(batIndex));
      const type: Extent['type'] =
        e.state === PayloadState.FULLY_PRESENT ? 'data' : e.state === PayloadState.NOT_PRESENT ? 'unallocated' : 'zero';
      const fileOffset = type === 'data' ? e.fileOffsetMB * MiB + (pos - blockIndex * bs) : undefined;
      const last = out[out.length - 1];
      if (
        last &&
        last.type === type &&
        (type !== 'data' || (last.fileOffset !== undefined && last.fileOffset + last.length === fileOffset))
      ) {
        last.length += blockEnd - pos;
      } else {
        const x: Extent = { offset: pos, length: blockEnd - pos, type };
        if (fileOffset !== undefined) x.fileOffset = fileOffset;
        out.push(x);
      }
      pos = blockEnd;
    }
    return out;
  }

  /**
   * Scan the whole BAT once, streaming (bounded memory), and count bytes per block state.
   * Validates every entry as the cache does. Runs of identical chunks are counted in bulk.
   */
  async allocationStats(opts: ProgressOptions = {}): Promise<AllocationStats> {
    const g = this.layout.geometry;
    const period = g.chunkRatio + 1; // entries per chunk, bitmap entry included
    const bytesByState: Record<string, number> = {};
    const add = (state: number, bytes: number): void => {
      const k = PAYLOAD_STATE_NAMES[state] ?? `state${state}`;
      bytesByState[k] = (bytesByState[k] ?? 0) + bytes;
    };
    let allocatedBlocks = 0;
    let bitmapBlocks = 0;
    let breaks = 0;
    let prevEnd = -1;
    const total = this.layout.batEntries;
    const windowEntries = batWindowEntries(period);
    const chunkBytes = period * BAT_ENTRY_SIZE;
    const fileSize = this.src.size;
    await scanBat(this.src, this.layout.batRegion.fileOffset, total, period, opts, (view, bytes, first, count) => {
      // Fast path: a window made of one chunk repeated, whose payload entries all hold one
      // non-present state and no file offset (fresh dynamic disks of any size).
      if (count === windowEntries && count > period && uniformWindow(bytes, view, chunkBytes, g.chunkRatio)) {
        const firstBlock = (first / period) * g.chunkRatio;
        const blocks = Math.min(count - count / period, g.payloadBlocks - firstBlock);
        if (blocks > 0) add(view.getUint32(0, true) & 7, Math.min(this.size, (firstBlock + blocks) * g.blockSize) - firstBlock * g.blockSize);
        return;
      }
      for (let i = 0; i < count; i++) {
        const index = first + i;
        const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
        const hi = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
        const v = judgeBatEntry(g, this.layout.hasParent, fileSize, index, lo, hi);
        if (v.kind === 'bad') {
          throw corrupt(v.reason, `block ${v.message}`, { structure: `BAT entry ${index}`, offset: this.layout.batRegion.fileOffset + index * BAT_ENTRY_SIZE });
        }
        if ((index + 1) % period === 0) {
          if (v.kind === 'present') bitmapBlocks++;
          continue;
        }
        const blockIndex = index - Math.floor(index / period);
        if (blockIndex >= g.payloadBlocks) continue;
        add(v.state, Math.min(g.blockSize, this.size - blockIndex * g.blockSize));
        if (v.kind === 'present') {
          if (allocatedBlocks > 0 && v.fileOffset !== prevEnd) breaks++;
          prevEnd = v.fileOffset + g.blockSize;
          allocatedBlocks++;
        }
      }
    });
    const fragmentationPercentage = allocatedBlocks > 1 ? Math.round((breaks / (allocatedBlocks - 1)) * 10000) / 100 : 0;
    return { bytesByState, allocatedBlocks, bitmapBlocks, fragmentationPercentage };
  }

  /** Make every completed write durable. */
  async flush(): Promise<void> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    await this.writer?.flush();
  }

  /** Commit pending changes (writable), mark the log empty, and close the source. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.writer?.close();
    } finally {
      await this.file.close();
    }
  }

  private writable(): Writer {
    if (!this.writer) throw new VhdxError('EROFS', 'READ_ONLY', 'image is open read-only');
    return this.writer;
  }

  private checkRange(offset: number, length: number): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `range ${offset}+${length} is outside the ${this.size}-byte disk`);
    }
  }

  private assertReadable(): void {
    if (this.layout.hasParent) {
      throw new VhdxError('ENOTSUP', 'DIFFERENCING_NOT_SUPPORTED', 'reading differencing images is not supported yet');
    }
  }
}

/**
 * True when `bytes` is one chunk of entries repeated, and that chunk's payload entries all equal
 * its first entry, which is a non-present state with a zero offset field and clear reserved bits,
 * and its bitmap entry is zero.
 */
function uniformWindow(bytes: Uint8Array, view: DataView, chunkBytes: number, chunkRatio: number): boolean {
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const state = lo & 7;
  if (hi !== 0 || lo !== state || !(state <= 3 || state === 5)) return false;
  for (let i = 1; i < chunkRatio; i++) {
    if (view.getUint32(i * 8, true) !== lo || view.getUint32(i * 8 + 4, true) !== 0) return false;
  }
  if (view.getUint32(chunkRatio * 8, true) !== 0 || view.getUint32(chunkRatio * 8 + 4, true) !== 0) return false;
  return bytesEqual(bytes.subarray(chunkBytes), bytes.subarray(0, bytes.length - chunkBytes));
}
