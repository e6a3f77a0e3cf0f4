/**
 * The writer's record of free payload-block space (see the contract at the top of writer.ts):
 * places in the file that no payload needs any more, kept in memory so that the next
 * allocations take them before the file grows. Bounded: at most `maxBlocks` records, and at
 * most `maxUnownedBytes` of space that no BAT entry names (which the writer must settle at close,
 * with I/O). Lookups are by file offset (lowest first: allocations fill the file from the front,
 * leaving free space at the end, where close cuts it off) and by the payload block a place belongs to.
 */

import { HEADER_SECTION_SIZE, MiB } from '../format/constants.js';
import { regionName } from '../format/region-table.js';
import { BAT_ENTRY_SIZE, PayloadState, entryFileOffsetMB, entryReservedClear, entryState, judgeBatEntry } from '../format/bat.js';
import { corrupt } from '../errors.js';
import type { RandomAccessSource } from '../io/source.js';
import { scanBat } from './bat-scan.js';
import type { Layout } from './open.js';

/** A fixed object of the file (the header section, the log, a region) that blocks may not overlap. */
export interface FixedObject {
  name: string;
  start: number;
  end: number;
}

/** Space after a metadata region that ends the regions, which qemu-img leaves for it to grow. */
export const QEMU_METADATA_RESERVE = 4 * MiB;

/**
 * The image's fixed objects, and where they end. When the metadata region is the last of them,
 * the end includes the room qemu-img leaves after it ("for future expansion": a fresh qemu-img
 * image ends there, and no block may take it), given as `reserve`.
 */
export function fixedObjects(layout: Layout): { objects: FixedObject[]; end: number; reserve: FixedObject | null } {
  const objects: FixedObject[] = [{ name: 'the header section', start: 0, end: HEADER_SECTION_SIZE }];
  if (layout.log.logLength > 0) objects.push({ name: 'the log', start: layout.log.logOffset, end: layout.log.logOffset + layout.log.logLength });
  for (const r of layout.regions) {
    objects.push({ name: `the ${regionName(r.guid)}`, start: r.fileOffset, end: r.fileOffset + r.length });
  }
  let end = Math.max(...objects.map((o) => o.end));
  const md = layout.metadataRegion;
  let reserve: FixedObject | null = null;
  if (md.fileOffset + md.length === end) {
    reserve = { name: 'the room qemu-img leaves after the metadata region', start: end, end: end + QEMU_METADATA_RESERVE };
    end = reserve.end;
  }
  return { objects, end, reserve };
}

/** What one pass over the BAT found for the writer's free space. */
export interface FreeSpaceScan {
  /**
   * Places named by UNMAPPED or UNDEFINED payload entries that kept their FileOffsetMB (from
   * BAT index `from` on, at most `max`), each a whole block inside the file, after the fixed
   * objects' start, overlapping no fixed object and no place any other entry names. `block` is
   * the payload block whose entry names the place.
   */
  claims: { block: number; fileOffset: number }[];
  /** BAT index to resume collecting from when `max` was reached, else -1. */
  resumeAt: number;
  /** The end of the last thing the image names: fixed objects and every entry's place (1 MiB multiple). */
  objectsEnd: number;
}

/**
 * Find the free places a closed session left behind (see writer.ts): one streaming pass over the
 * BAT collects the claims, a second (only when there are any) drops those whose space another
 * entry also names, as a damaged or foreign image might have. Memory: the claims kept (`max`)
 * and the scan's windows, whatever the BAT's size. `skip` leaves out places already known.
 */
export async function scanFreeSpace(
  src: RandomAccessSource,
  layout: Layout,
  from: number,
  max: number,
  skip: (block: number, fileOffset: number) => boolean,
): Promise<FreeSpaceScan> {
  const g = layout.geometry;
  const period = g.chunkRatio + 1;
  const bs = layout.blockSize;
  const fileSize = src.size;
  const fixed = fixedObjects(layout);
  let objectsEnd = fixed.end;
  const claims: { block: number; fileOffset: number; index: number }[] = [];
  let resumeAt = -1;
  const at = (view: DataView, i: number): [number, number] => {
    const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
    return [lo, entryFileOffsetMB(lo, view.getUint32(i * BAT_ENTRY_SIZE + 4, true))];
  };
  const isClaim = (state: number): boolean => state === PayloadState.UNMAPPED || state === PayloadState.UNMAPPED_DRAFT || state === PayloadState.UNDEFINED;
  await scanBat(src, layout.batRegion.fileOffset, layout.batEntries, period, {}, (view, _bytes, first, count) => {
    for (let i = 0; i < count; i++) {
      const [lo, mb] = at(view, i);
      if (mb === 0) continue;
      const index = first + i;
      const isBitmap = index % period === g.chunkRatio;
      const start = mb * MiB;
      objectsEnd = Math.max(objectsEnd, start + (isBitmap ? MiB : bs));
      if (isBitmap || index < from || resumeAt >= 0 || !isClaim(entryState(lo)) || !entryReservedClear(lo)) continue;
      const block = index - Math.floor(index / period);
      if (block >= g.payloadBlocks) continue;
      if (start < HEADER_SECTION_SIZE || start + bs > fileSize || skip(block, start)) continue;
      if (fixed.objects.some((o) => start < o.end && o.start < start + bs)) continue;
      if (claims.length >= max) resumeAt = index;
      else claims.push({ block, fileOffset: start, index });
    }
  });
  if (claims.length === 0) return { claims: [], resumeAt, objectsEnd };
  claims.sort((a, b) => a.fileOffset - b.fileOffset);
  const rejected = new Set<number>();
  await scanBat(src, layout.batRegion.fileOffset, layout.batEntries, period, {}, (view, _bytes, first, count) => {
    for (let i = 0; i < count; i++) {
      const [, mb] = at(view, i);
      if (mb === 0) continue;
      const index = first + i;
      const start = mb * MiB;
      const end = start + (index % period === g.chunkRatio ? MiB : bs);
      // Claims starting before `end`, from the first whose block reaches past `start`.
      let a = 0;
      let b = claims.length;
      while (a < b) {
        const mid = (a + b) >>> 1;
        if (claims[mid]!.fileOffset + bs <= start) a = mid + 1;
        else b = mid;
      }
      for (let k = a; k < claims.length && claims[k]!.fileOffset < end; k++) if (claims[k]!.index !== index) rejected.add(k);
    }
  });
  return { claims: claims.filter((_, k) => !rejected.has(k)).map(({ block, fileOffset }) => ({ block, fileOffset })), resumeAt, objectsEnd };
}

/** Finding blocks that overlap each other needs one bit per MiB of file; past this many MiB (256 TiB) it is skipped. */
export const MAX_OCCUPANCY_UNITS = 2 ** 28;

/**
 * Mark MiB units [start, end) taken in `occ` (one bit per MiB of file) and return the first of
 * them that was taken already, or -1: how check and the writer find blocks sharing file space.
 */
export function claimUnits(occ: Uint8Array, start: number, end: number): number {
  let hit = -1;
  for (let u = start; u < Math.min(end, occ.length * 8); u++) {
    const bit = 1 << (u & 7);
    if (occ[u >>> 3]! & bit) {
      if (hit < 0) hit = u;
    } else occ[u >>> 3]! |= bit;
  }
  return hit;
}

/**
 * Refuse (BLOCK_OVERLAP) an image where two present blocks share file space: a write to one
 * would change the other (found by the write fuzz target). One streaming pass over the BAT with
 * one bit per MiB of file; entries the BAT cache refuses on their own are left to it. Files past
 * MAX_OCCUPANCY_UNITS MiB are not checked, as in check.
 */
export async function assertBlocksApart(src: RandomAccessSource, layout: Layout): Promise<void> {
  const fileSize = src.size;
  const units = Math.ceil(fileSize / MiB);
  if (units > MAX_OCCUPANCY_UNITS) return;
  const occ = new Uint8Array(Math.ceil(units / 8));
  const period = layout.geometry.chunkRatio + 1;
  const batOffset = layout.batRegion.fileOffset;
  type Clash = { index: number; fileOffset: number; unit: number };
  let clash: Clash | null = null;
  await scanBat(src, batOffset, layout.batEntries, period, {}, (view, _bytes, first, count) => {
    for (let i = 0; i < count && !clash; i++) {
      const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
      const hi = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
      if (lo === 0 && hi === 0) continue;
      const v = judgeBatEntry(layout.geometry, layout.hasParent, fileSize, first + i, lo, hi);
      if (v.kind !== 'present') continue;
      const start = v.fileOffset / MiB;
      const hit = claimUnits(occ, start, start + Math.ceil(v.extent / MiB));
      if (hit >= 0) clash = { index: first + i, fileOffset: v.fileOffset, unit: hit };
    }
    return clash === null;
  });
  const found = clash as Clash | null; // set inside the scan's callback
  if (found) {
    const { index, fileOffset, unit } = found;
    throw corrupt('BLOCK_OVERLAP', `block at file offset 0x${fileOffset.toString(16)} overlaps another block at 0x${(unit * MiB).toString(16)}`, {
      structure: `BAT entry ${index}`,
      offset: batOffset + index * BAT_ENTRY_SIZE,
    });
  }
}

/** One free place of one payload block's size. */
export interface FreeBlock {
  /** File offset (a 1 MiB multiple). */
  fileOffset: number;
  /**
   * The payload block this place belongs to. Owned: the block's entry names it (UNMAPPED or
   * UNDEFINED with its FileOffsetMB kept), so it survives a reopen. Unowned: no entry names it;
   * `block` released it (it is ZERO or UNMAPPED with FileOffsetMB 0) and takes it back at close
   * if nothing reused it. Null: a place a moved block left (unowned, and no block to give it back to).
   */
  block: number | null;
  owned: boolean;
  /**
   * The change that freed it is committed. Until then the file may still say the place holds
   * `block`'s data, so only `block` itself may take it back (see writer.ts).
   */
  durable: boolean;
}

export class FreeBlocks {
  /** Ascending by file offset. */
  private readonly sorted: FreeBlock[] = [];
  private readonly byBlock = new Map<number, FreeBlock>();
  private unowned = 0;

  constructor(
    private readonly blockSize: number,
    readonly maxBlocks: number,
    readonly maxUnownedBytes: number,
  ) {}

  get size(): number {
    return this.sorted.length;
  }

  get unownedBytes(): number {
    return this.unowned * this.blockSize;
  }

  /** True when one more record of this kind fits. */
  hasRoom(owned: boolean): boolean {
    return this.sorted.length < this.maxBlocks && (owned || this.unownedRoom());
  }

  /**
   * True when `n` more blocks of unowned space fit, each a new record or an owned one disowned
   * (new records need a slot each; `n` slots is the most they can need).
   */
  roomForUnowned(n: number): boolean {
    return this.sorted.length + n <= this.maxBlocks && (this.unowned + n) * this.blockSize <= this.maxUnownedBytes;
  }

  /** True when one more block of unowned space fits (a new record, or an owned one disowned). */
  unownedRoom(): boolean {
    return (this.unowned + 1) * this.blockSize <= this.maxUnownedBytes;
  }

  /** Record `b` (its block must have no record yet). False, recording nothing, when it does not fit. */
  add(b: FreeBlock): boolean {
    // Only unowned places with a block count against the unowned cap: close may zero those; a
    // place no block takes back (a moved block's, a released one past a shrunk disk's end) never is.
    if ((b.block !== null && this.byBlock.has(b.block)) || !this.hasRoom(b.owned || b.block === null)) return false;
    let lo = 0;
    let hi = this.sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.sorted[mid]!.fileOffset < b.fileOffset) lo = mid + 1;
      else hi = mid;
    }
    this.sorted.splice(lo, 0, b);
    if (b.block !== null) this.byBlock.set(b.block, b);
    if (!b.owned && b.block !== null) this.unowned++;
    return true;
  }

  /** The record of payload block `block`, if any. */
  of(block: number): FreeBlock | undefined {
    return this.byBlock.get(block);
  }

  /** The lowest free place whose release is durable, removed. */
  takeLowest(): FreeBlock | undefined {
    const b = this.sorted.find((x) => x.durable);
    if (b) this.remove(b);
    return b;
  }

  /** True when some place waits for the commit of its release. */
  hasPending(): boolean {
    return this.sorted.some((x) => !x.durable);
  }

  /** Every release so far is committed. */
  markDurable(): void {
    for (const b of this.sorted) b.durable = true;
  }

  remove(b: FreeBlock): void {
    const i = this.sorted.indexOf(b);
    if (i < 0) return;
    this.sorted.splice(i, 1);
    if (b.block !== null) this.byBlock.delete(b.block);
    if (!b.owned && b.block !== null) this.unowned--;
  }

  /** Turn an owned record into an unowned one (its entry no longer names the place). False when that does not fit. */
  disown(b: FreeBlock): boolean {
    if (!b.owned) return true;
    if (!this.unownedRoom()) return false;
    b.owned = false;
    this.unowned++;
    return true;
  }

  /** Remove and return the records that end the space before `end`, highest first (each ends where the next starts). */
  takeTrailing(end: number): FreeBlock[] {
    const out: FreeBlock[] = [];
    for (let last = this.sorted[this.sorted.length - 1]; last && last.fileOffset + this.blockSize === end; last = this.sorted[this.sorted.length - 1]) {
      this.remove(last);
      out.push(last);
      end = last.fileOffset;
    }
    return out;
  }

  /** Every record, lowest first (a copy). */
  all(): FreeBlock[] {
    return [...this.sorted];
  }

  clear(): void {
    this.sorted.length = 0;
    this.byBlock.clear();
    this.unowned = 0;
  }
}
