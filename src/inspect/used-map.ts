/**
 * What the filesystem drivers share to build a used map: reads confined to the filesystem's
 * region, a one-chunk read cache for tables read a few bytes at a time (group descriptors, FAT
 * entries), runs of bits in allocation bitmaps, and the turn of a driver's ascending FREE ranges
 * into the USED runs the contract yields.
 *
 * A driver only ever says which ranges it has proved free; everything else in the region is
 * used. So damage (a structure outside the region, a bad checksum, a loop) just proves nothing
 * free there, and can never make space look free.
 */
import { throwIfAborted } from '../errors.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import type { Region, Run } from './filesystem.js';

/** A byte range [start, end) relative to the region's start. */
export interface Span {
  start: number;
  end: number;
}

/**
 * The bytes at `offset` (relative to the region) or null when the range is not wholly inside
 * the region and the device: a pointer read from the disk that leads outside is damage, not an
 * I/O error. Errors of the device itself propagate.
 */
export async function readInRegion(dev: BlockDevice, region: Region, offset: number, length: number): Promise<Uint8Array | null> {
  if (!inRegion(dev, region, offset, length)) return null;
  const buf = new Uint8Array(length);
  await dev.read(region.start + offset, buf);
  return buf;
}

function inRegion(dev: BlockDevice, region: Region, offset: number, length: number): boolean {
  return (
    Number.isSafeInteger(offset) &&
    Number.isSafeInteger(length) &&
    offset >= 0 &&
    length >= 0 &&
    offset + length <= region.length &&
    region.start + offset + length <= dev.size
  );
}

/** Bytes a ChunkReader keeps. */
const CHUNK = 256 * 1024;

/**
 * Reads small pieces of a table that is walked in order (descriptors, FAT entries, bitmaps laid
 * side by side) through one cached, aligned chunk, so a walk costs one device read per chunk
 * instead of one per entry. Memory: one chunk.
 */
export class ChunkReader {
  private chunkAt = -1;
  private chunk: Uint8Array | null = null;

  constructor(
    private readonly dev: BlockDevice,
    private readonly region: Region,
    private readonly chunkSize = CHUNK,
  ) {}

  /** Like readInRegion; the result may be a view into the cache, valid until the next call. */
  async read(offset: number, length: number): Promise<Uint8Array | null> {
    if (!inRegion(this.dev, this.region, offset, length)) return null;
    if (length > this.chunkSize) return readInRegion(this.dev, this.region, offset, length);
    const at = Math.floor(offset / this.chunkSize) * this.chunkSize;
    if (offset + length > at + this.chunkSize) return readInRegion(this.dev, this.region, offset, length);
    if (at !== this.chunkAt || !this.chunk) {
      const limit = Math.min(this.region.length, this.dev.size - this.region.start);
      const n = Math.min(this.chunkSize, limit - at);
      const buf = new Uint8Array(n);
      await this.dev.read(this.region.start + at, buf);
      this.chunk = buf;
      this.chunkAt = at;
    }
    return this.chunk.subarray(offset - at, offset - at + length);
  }
}

/**
 * Calls `each(first, end)` for every run of bits in [from, to) equal to `value`, bits numbered
 * least significant first within each byte (ext, NTFS and exFAT bitmaps all count this way).
 */
export function bitRuns(bits: Uint8Array, from: number, to: number, value: 0 | 1, each: (first: number, end: number) => void): void {
  const whole = value ? 0xff : 0;
  let runStart = -1;
  let i = from;
  while (i < to) {
    if ((i & 7) === 0 && i + 8 <= to) {
      const b = bits[i >> 3]!;
      if (b === whole) {
        if (runStart < 0) runStart = i;
        i += 8;
        continue;
      }
      if (b === (whole ^ 0xff)) {
        if (runStart >= 0) each(runStart, i);
        runStart = -1;
        i += 8;
        continue;
      }
    }
    const bit = (bits[i >> 3]! >> (i & 7)) & 1;
    if (bit === value) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      each(runStart, i);
      runStart = -1;
    }
    i++;
  }
  if (runStart >= 0) each(runStart, to);
}

/** Free ranges proved by one piece of a walk, and how far the walk has got (for progress). */
export interface FreeStep {
  free: Span[];
  /** Bytes of the region the walk has finished with. */
  done: number;
}

/**
 * The USED runs of `region` (absolute offsets, ascending, coalesced) given a walk that yields
 * the FREE ranges it proves, ascending. A free range that overlaps or precedes one already
 * taken, or lies outside the region, is cut to what is new and inside: a confused walk loses
 * free space, never used space. Checks the signal and reports progress between steps.
 */
export async function* usedFromFree(region: Region, walk: AsyncIterable<FreeStep>, opts: ProgressOptions = {}, what = 'filesystem scan'): AsyncGenerator<Run> {
  const total = region.length;
  let pos = 0; // everything before pos has been decided
  let pending: Run | null = null;
  const emitUsed = (start: number, end: number): Run | null => {
    if (end <= start) return null;
    if (pending && pending.start + pending.length === region.start + start) {
      pending.length += end - start;
      return null;
    }
    const out = pending;
    pending = { start: region.start + start, length: end - start };
    return out;
  };
  throwIfAborted(opts.signal, what);
  for await (const step of walk) {
    for (const f of step.free) {
      const start = Math.max(f.start, pos);
      const end = Math.min(f.end, total);
      if (end <= start) continue;
      const r = emitUsed(pos, start);
      if (r) yield r;
      pos = end;
    }
    throwIfAborted(opts.signal, what);
    opts.onProgress?.(Math.min(total, Math.max(pos, step.done)), total);
  }
  const r = emitUsed(pos, total);
  if (r) yield r;
  if (pending) yield pending;
  opts.onProgress?.(total, total);
}

/** The walk of a filesystem whose free space is not trusted: nothing is free. */
export async function* noFreeSpace(): AsyncGenerator<FreeStep> {}
