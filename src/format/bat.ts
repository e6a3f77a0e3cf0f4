/**
 * Block allocation table entries and the chunk interleave (§2.5). The BAT stays raw bytes in the
 * cache; these functions convert one entry at a time.
 */
import { SECTORS_PER_CHUNK, MiB } from './constants.js';
import { fatal, type Parsed } from './problem.js';

/** Payload block states (§2.5.1.1). 5 is the draft-0.95 value of UNMAPPED. */
export const PayloadState = {
  NOT_PRESENT: 0,
  UNDEFINED: 1,
  ZERO: 2,
  UNMAPPED: 3,
  UNMAPPED_DRAFT: 5,
  FULLY_PRESENT: 6,
  PARTIALLY_PRESENT: 7,
} as const;

/** Sector bitmap block states (§2.5.1.2). */
export const BitmapState = {
  NOT_PRESENT: 0,
  PRESENT: 6,
} as const;

export const PAYLOAD_STATE_NAMES: Record<number, string> = {
  0: 'notPresent',
  1: 'undefined',
  2: 'zero',
  3: 'unmapped',
  5: 'unmapped',
  6: 'fullyPresent',
  7: 'partiallyPresent',
};

export const BAT_ENTRY_SIZE = 8;
const RESERVED_MASK = 0x000ffff8; // bits 3..19 of the low word

/** A decoded BAT entry. `fileOffsetMB` is in units of 1 MiB. */
export interface BatEntry {
  state: number;
  fileOffsetMB: number;
}

/**
 * The entry's FileOffsetMB from its two little-endian 32-bit words: bits 20..63, 12 from the low
 * word and 32 from the high one. Scans that walk raw BAT bytes use this and the two below, so the
 * bit layout is written here only.
 */
export function entryFileOffsetMB(lo: number, hi: number): number {
  return hi * 4096 + (lo >>> 20);
}

/** The entry's state (bits 0..2) from its low word. */
export function entryState(lo: number): number {
  return lo & 7;
}

/** True when the low word's reserved bits 3..19 are zero, as the specification requires. */
export function entryReservedClear(lo: number): boolean {
  return (lo & RESERVED_MASK) === 0;
}

/** Decode the entry at byte `at` of `view` (which holds raw BAT bytes). */
export function decodeBatEntry(view: DataView, at: number): BatEntry {
  const lo = view.getUint32(at, true);
  return { state: entryState(lo), fileOffsetMB: entryFileOffsetMB(lo, view.getUint32(at + 4, true)) };
}

/** True when reserved bits 3..19 are zero, as the specification requires. */
export function batEntryReservedClear(view: DataView, at: number): boolean {
  return entryReservedClear(view.getUint32(at, true));
}

export function encodeBatEntry(view: DataView, at: number, entry: BatEntry): void {
  const lo = ((entry.fileOffsetMB % 4096) * 2 ** 20 + entry.state) >>> 0;
  view.setUint32(at, lo, true);
  view.setUint32(at + 4, Math.floor(entry.fileOffsetMB / 4096), true);
}

/** The geometry every BAT computation needs, derived once at open. */
export interface BatGeometry {
  blockSize: number;
  logicalSectorSize: number;
  virtualSize: number;
  /** Payload blocks per chunk (C). */
  chunkRatio: number;
  /** Payload blocks in the disk (P). */
  payloadBlocks: number;
  /** Sector bitmap entries the BAT interleaves (one per started chunk). */
  bitmapBlocks: number;
  /** Entries a BAT must hold for every payload and bitmap entry we may index. */
  entriesNeeded: number;
}

export function batGeometry(virtualSize: number, blockSize: number, logicalSectorSize: number, hasParent: boolean): BatGeometry {
  const chunkRatio = (SECTORS_PER_CHUNK * logicalSectorSize) / blockSize;
  const payloadBlocks = Math.ceil(virtualSize / blockSize);
  const bitmapBlocks = Math.ceil(payloadBlocks / chunkRatio);
  // The last payload entry sits at index (P-1) + floor((P-1)/C). Readers need that many; a
  // differencing disk also needs the sector bitmap entry after its last (possibly partial) chunk.
  const lastPayload = payloadBlocks === 0 ? -1 : payloadBlocks - 1 + Math.floor((payloadBlocks - 1) / chunkRatio);
  const entriesNeeded = hasParent ? bitmapBlocks * (chunkRatio + 1) : lastPayload + 1;
  return { blockSize, logicalSectorSize, virtualSize, chunkRatio, payloadBlocks, bitmapBlocks, entriesNeeded };
}

/** Entries a writer gives the BAT: P + ceil(P / C) for fixed and dynamic disks, whole chunks for differencing. */
export function batEntriesToWrite(g: BatGeometry, hasParent: boolean): number {
  return hasParent ? g.bitmapBlocks * (g.chunkRatio + 1) : g.payloadBlocks + Math.ceil(g.payloadBlocks / g.chunkRatio);
}

/** BAT index of payload block `blockIndex`. */
export function payloadBatIndex(g: BatGeometry, blockIndex: number): number {
  return blockIndex + Math.floor(blockIndex / g.chunkRatio);
}

/** BAT index of the sector bitmap entry of chunk `chunkIndex`. */
export function bitmapBatIndex(g: BatGeometry, chunkIndex: number): number {
  return chunkIndex * (g.chunkRatio + 1) + g.chunkRatio;
}

export function fileOffsetOf(entry: BatEntry): number {
  return entry.fileOffsetMB * MiB;
}

/** What one BAT entry says, judged by the rules every reader applies (§2.5). */
export type BatEntryVerdict =
  /** No block in the file: a non-present payload state, or a sector bitmap entry NOT_PRESENT. */
  | { kind: 'absent'; state: number }
  /** A block in the file: [fileOffset, fileOffset + extent). */
  | { kind: 'present'; state: number; fileOffset: number; extent: number }
  /**
   * A payload entry past the disk's last block (the rest of the last chunk): it describes no
   * part of the disk, so no reader looks at it, whatever it holds.
   */
  | { kind: 'unused'; state: number }
  | {
      kind: 'bad';
      reason: 'BAD_BAT_ENTRY' | 'BAD_BLOCK_STATE' | 'BAT_ENTRY_IN_HEADER' | 'BAT_ENTRY_OUT_OF_BOUNDS';
      /** A predicate for a subject the caller names ("payload block 7 …", "block …"). */
      message: string;
      state: number;
    };

/** A file offset given in MiB, printed exactly in hex even past 2^53. */
function mibHex(fileOffsetMB: number): string {
  return `0x${(BigInt(fileOffsetMB) * 1048576n).toString(16)}`;
}

/**
 * Judge the entry at BAT index `index` from its raw words: reserved bits clear; a state the disk
 * type allows (PARTIALLY_PRESENT and SB_BLOCK_PRESENT only with a parent; 4 is undefined); a
 * present block after the 1 MiB header section and inside a file of `fileSize` bytes. The last
 * payload block of a disk counts only the part of it the disk covers. Payload entries past the
 * last block are 'unused': the disk has no block there to read (§2.5 maps payload block i to
 * entry i + floor(i / C) for i < ceil(size / BlockSize) only), and qemu ignores them too.
 */
export function judgeBatEntry(g: BatGeometry, hasParent: boolean, fileSize: number, index: number, lo: number, hi: number): BatEntryVerdict {
  const state = entryState(lo);
  const fileOffsetMB = entryFileOffsetMB(lo, hi);
  const fileOffset = fileOffsetMB * MiB;
  const isBitmap = (index + 1) % (g.chunkRatio + 1) === 0;
  const blockIndex = index - Math.floor(index / (g.chunkRatio + 1));
  const bad = (reason: Extract<BatEntryVerdict, { kind: 'bad' }>['reason'], message: string): BatEntryVerdict => ({ kind: 'bad', reason, message, state });
  if (!isBitmap && blockIndex >= g.payloadBlocks) return { kind: 'unused', state };
  if (!entryReservedClear(lo)) {
    return bad('BAD_BAT_ENTRY', `has reserved bits 3-19 set (0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')})`);
  }
  if (isBitmap) {
    if (state === BitmapState.NOT_PRESENT) return { kind: 'absent', state };
    if (state !== BitmapState.PRESENT || !hasParent) {
      return bad('BAD_BLOCK_STATE', `has state ${state}; ${hasParent ? 'only 0 (not present) and 6 (present) exist' : 'a disk without a parent allows only 0 (not present)'}`);
    }
  } else if (state === PayloadState.PARTIALLY_PRESENT) {
    if (!hasParent) return bad('BAD_BLOCK_STATE', 'is PARTIALLY_PRESENT (7), which only a differencing disk may use');
  } else if (state === 4) {
    return bad('BAD_BLOCK_STATE', 'has state 4, which is not defined');
  } else if (state !== PayloadState.FULLY_PRESENT) {
    return { kind: 'absent', state };
  }
  const extent = isBitmap ? MiB : Math.max(0, Math.min(g.blockSize, g.virtualSize - blockIndex * g.blockSize));
  if (fileOffset < MiB) {
    return bad('BAT_ENTRY_IN_HEADER', `is at file offset ${mibHex(fileOffsetMB)}, inside the 1 MiB header section`);
  }
  if (fileOffset + extent > fileSize) {
    return bad('BAT_ENTRY_OUT_OF_BOUNDS', `at file offset ${mibHex(fileOffsetMB)} (+${extent}) ends beyond the end of the file (${fileSize})`);
  }
  return { kind: 'present', state, fileOffset, extent };
}

/**
 * The fragmentation `info` and `check` report, in percent with two decimals: of the allocated
 * payload blocks after the first in virtual-disk order, the share that does not directly follow
 * the previous one in the file (`breaks`); 0 with fewer than two blocks. Get-VHD's formula is
 * not published; this is ours, and the one place it is computed.
 */
export function fragmentationPercentage(breaks: number, allocatedBlocks: number): number {
  return allocatedBlocks > 1 ? Math.round((breaks / (allocatedBlocks - 1)) * 10000) / 100 : 0;
}

/**
 * Check the BAT region's size for a disk of geometry `g`: large enough for every entry the disk
 * indexes, and not larger than whole chunks (or what a writer gives it) rounded up to 1 MiB.
 * Gives the number of entries that may be indexed.
 */
export function parseBatRegion(region: { fileOffset: number; length: number }, g: BatGeometry, hasParent: boolean): Parsed<{ entries: number }> {
  const where = ['BAT region', region.fileOffset] as const;
  if (region.length < g.entriesNeeded * BAT_ENTRY_SIZE) {
    return { value: null, problems: [fatal('BAT_TOO_SMALL', `BAT of ${region.length} bytes cannot hold the ${g.entriesNeeded} entries the disk needs`, ...where)] };
  }
  const wholeChunks = g.bitmapBlocks * (g.chunkRatio + 1);
  const maxBytes = Math.ceil((Math.max(wholeChunks, batEntriesToWrite(g, hasParent)) * BAT_ENTRY_SIZE) / MiB) * MiB;
  if (region.length > maxBytes) {
    return { value: null, problems: [fatal('BAT_TOO_LARGE', `BAT of ${region.length} bytes is larger than the ${maxBytes} bytes its entries need`, ...where)] };
  }
  return { value: { entries: Math.min(Math.floor(region.length / BAT_ENTRY_SIZE), wholeChunks) }, problems: [] };
}
