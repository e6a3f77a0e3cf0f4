/**
 * The Block Allocation Table of a dynamic or differencing VHD, and the arithmetic of its blocks
 * (specification, "Block Allocation Table and Data Blocks").
 *
 * The BAT is an array of big-endian u32 entries, one per block of the disk: the file offset of
 * the block in 512-byte sectors, or 0xFFFFFFFF when the block is not allocated. The table is
 * padded with unused entries to a whole number of sectors. A block is its sector bitmap (one bit
 * per 512-byte sector of the block, most significant bit first, padded to a whole sector), then
 * the block's data. Bit 1: the sector's data is in this file; bit 0: it has never been written
 * here (zeros for a dynamic disk, the parent's data for a differencing disk).
 *
 * The table stays raw bytes in a cache (hot tables are read and written entry by entry);
 * BAT_ENTRY declares one entry for the structure tests and for the writes of one entry.
 */
import { defineStruct, u32be } from '../codec/struct.js';

export const SECTOR = 512;
export const BAT_ENTRY_SIZE = 4;
export const UNALLOCATED = 0xffffffff;

export const BAT_ENTRY = defineStruct('VHD BAT entry', BAT_ENTRY_SIZE, {
  /** File offset of the block in 512-byte sectors; 0xFFFFFFFF: not allocated. */
  blockSector: { at: 0, type: u32be },
});

/** Bytes of a block's sector bitmap: one bit per sector, padded to a whole sector. */
export function bitmapBytes(blockSize: number): number {
  return Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
}

/** Bytes of the BAT in the file: `entries` entries padded to a whole sector. */
export function batBytes(entries: number): number {
  return Math.ceil((entries * BAT_ENTRY_SIZE) / SECTOR) * SECTOR;
}

/** Blocks a disk of `size` bytes needs. */
export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

/** True when sector `i` of a block's bitmap is set (most significant bit first). */
export function bitSet(bitmap: Uint8Array, i: number): boolean {
  return ((bitmap[i >>> 3]! >>> (7 - (i & 7))) & 1) === 1;
}

/** Set or clear `count` bits of a block's bitmap from sector `first`. */
export function setBits(bitmap: Uint8Array, first: number, count: number, value: boolean): void {
  let i = first;
  const end = first + count;
  while (i < end) {
    if ((i & 7) === 0 && end - i >= 8) {
      bitmap[i >>> 3] = value ? 0xff : 0;
      i += 8;
      continue;
    }
    const mask = 0x80 >>> (i & 7);
    bitmap[i >>> 3] = value ? bitmap[i >>> 3]! | mask : bitmap[i >>> 3]! & ~mask;
    i++;
  }
}

/** A run of sectors with one bitmap value. */
export interface BitRun {
  present: boolean;
  count: number;
}

/** Split `count` sectors of a block from sector `first` into runs of equal bits. */
export function bitRuns(bitmap: Uint8Array, first: number, count: number): BitRun[] {
  const out: BitRun[] = [];
  let i = first;
  const end = first + count;
  while (i < end) {
    const present = bitSet(bitmap, i);
    let j = i + 1;
    while (j < end) {
      // Whole bytes at a time when aligned and uniform.
      if ((j & 7) === 0 && end - j >= 8 && bitmap[j >>> 3] === (present ? 0xff : 0)) {
        j += 8;
        continue;
      }
      if (bitSet(bitmap, j) !== present) break;
      j++;
    }
    out.push({ present, count: j - i });
    i = j;
  }
  return out;
}

/** True when the `count` bits from sector `first` are all set. */
export function allBitsSet(bitmap: Uint8Array, first: number, count: number): boolean {
  if (count === 0) return true;
  const runs = bitRuns(bitmap, first, count);
  return runs.length === 1 && runs[0]!.present;
}
