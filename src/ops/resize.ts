/**
 * Resize an image in place: grow or shrink its virtual size, crash-safe, with the GPT's backup
 * moved to the new end (as `sgdisk -e`).
 *
 * Grow. The Virtual Disk Size item changes through the log in one entry, with a new
 * DataWriteGuid (the disk reads differently after). Entries the bigger disk brings into use
 * (past the old last block) are made what they must be first (NOT_PRESENT, or a fixed disk's new
 * blocks, allocated and written with zeros): the old layout indexes none of them, so these
 * earlier log entries change nothing a reader sees, and a crash before the size change leaves
 * the old disk. The old last block's bytes past the old end are zeroed (outside the log: no
 * reader looks at them yet) so the added range reads as zeros. A differencing disk grows past
 * its parent the same way: its new blocks are NOT_PRESENT, and past the parent's end the
 * mapping shows zeros where it would show the parent (driver/mapping.ts).
 *
 * Growing the BAT region. [MS-VHDX] §2.3: the log "MUST carry every metadata update", and a log
 * entry's data descriptors may name any file offset: region tables included (§2.3.1.3 names no
 * restriction but the header section and the log itself, which the log never writes). When
 * nothing fixed follows the region, it is extended in place: the payload blocks that
 * follow the region are moved to the end of the file first (copy, flush, BAT through the log:
 * `moveBlocks`, each move durable and invisible to readers), the space the region grows into is
 * zeroed (all NOT_PRESENT) and flushed, and then one log entry carries both region table copies
 * (the BAT region's new length) and the new Virtual Disk Size. Extending keeps the BAT where
 * every tool already reads it and leaves no hole the old BAT would leave behind; it needs
 * only the region's own growth in free space, never a second copy of a BAT that may be large.
 * Until that one entry is durable the file reads as the old disk (the moved blocks are reached
 * through their new entries); after it, as the new one. When another fixed structure (the log,
 * the metadata region) follows the BAT (qemu-img's layout, Hyper-V's .avhdx), the region cannot
 * grow in place: a larger BAT is written at the end of the file instead (the current entries
 * copied, the new ones set; no reader looks there yet), flushed, and the same one log entry
 * carries both region table copies (the BAT region's new offset and length) and the size. A
 * crash before that entry is durable leaves the old disk (and unnamed space past its objects);
 * after it, the new one, where the old BAT region is space no structure names (check reports
 * it as leaked; nothing reuses it in place, convert writes a copy without it).
 *
 * Shrink. Only when asked (`shrink`), and never through a partition, a filesystem, the GPT's
 * backup or data a parent shows unless `force`. The GPT's backup is written at the new end
 * first (inside the old disk); the blocks past the new end are released (their entries
 * NOT_PRESENT, committed as the log fills: that range reads as zeros from then on, it is being
 * cut); the size changes in one log entry; kept blocks that sit high in the file move down into
 * the places released; the file is cut after its last object. A crash leaves the old size (its
 * cut-off range perhaps partly zeroed) or the new one (perhaps not yet cut: leaked space).
 *
 * The image given must be open writable; it is closed, and the image reopened at its new size
 * is returned (when the size does not change, the image itself).
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import { ITEM_VIRTUAL_DISK_SIZE, MiB, MAX_VIRTUAL_SIZE, REGION_BAT, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, alignUp } from '../format/constants.js';
import { BAT_ENTRY_SIZE, PayloadState, batEntriesToWrite, batGeometry, encodeBatEntry, payloadBatIndex, type BatEntry, type BatGeometry } from '../format/bat.js';
import { encodeRegionTable } from '../format/region-table.js';
import { readBytes } from '../io/source.js';
import { bytesEqual } from '../codec/bytes.js';
import { fixedObjects } from '../driver/free-space.js';
import type { VhdxImage } from '../driver/image.js';
import type { Writer } from '../driver/writer.js';
import type { ProgressOptions } from '../device/block-device.js';
import { inspectDisk, readPartitions } from '../inspect/disk.js';
import { gptBackupBytes, moveGptBackup, type GptMove } from './gpt-move.js';

/** Options of {@link resize}; progress covers its long steps (moving blocks, writing zeros), `signal` stops it between crash-safe steps (ECANCELED / ABORTED). */
export interface ResizeOptions extends ProgressOptions {
  /** Allow a smaller size (qemu-img's --shrink). */
  shrink?: boolean;
  /** Shrink to the end of the last partition (and the GPT's backup), rounded up to 1 MiB; `newSize` is ignored. */
  toMinimum?: boolean;
  /** Shrink even through partitions, filesystems and data. */
  force?: boolean;
  /** Move the GPT's backup to the new end (default true). */
  gptFix?: boolean;
}

/** What {@link resize} did. */
export interface ResizeResult {
  /** The image, reopened at its new size (the one passed in is closed). */
  image: VhdxImage;
  /** The virtual size before, in bytes. */
  oldSize: number;
  /** The virtual size after, in bytes. */
  newSize: number;
  /** Bytes the BAT region grew by (0 when it had room). */
  batGrowth: number;
  /** Payload and sector bitmap blocks moved. */
  blocksMoved: number;
  /** The GPT's backup move, when there was a GPT to follow. */
  gpt: GptMove | null;
}

function bad(message: string): VhdxError {
  return new VhdxError('EINVAL', 'BAD_ARGUMENT', message);
}

/**
 * The least size the disk's contents allow: the end of the last partition (for a GPT, plus its
 * backup array and header), of a filesystem that fills the disk, or, for a disk with neither,
 * of the last data it holds (through the chain). Rounded up to the logical sector size.
 */
export async function minimumSize(image: VhdxImage, opts: ProgressOptions = {}): Promise<number> {
  const disk = await inspectDisk(image, { usage: false });
  let end = 0;
  for (const p of disk.partitions) {
    if (p.kind === 'disk') end = Math.max(end, p.filesystem ? p.filesystem.size : await lastDataEnd(image, opts));
    else end = Math.max(end, p.start + p.length);
  }
  if (disk.partitionScheme === 'gpt') {
    // The backup array and header follow the last partition, and the primary's own array comes first.
    const t = await readPartitions(image);
    if (t.gpt) end = Math.max(end, t.gpt.firstUsableLba * t.sectorSize) + gptBackupBytes(t.gpt, t.sectorSize);
  }
  return alignUp(Math.max(end, image.logicalSectorSize), image.logicalSectorSize);
}

/** Where the last extent that holds anything (data, or what a parent shows) ends; 0 for an empty disk. */
async function lastDataEnd(image: VhdxImage, opts: ProgressOptions): Promise<number> {
  const WINDOW = 64 * 1024 * MiB;
  let end = 0;
  for (let at = 0; at < image.size; at += WINDOW) {
    throwIfAborted(opts.signal, 'looking for data');
    for (const x of await image.blockStatus(at, Math.min(WINDOW, image.size - at))) {
      if (x.type === 'data' || (x.depth !== undefined && x.depth > 0 && x.type !== 'unallocated')) end = Math.max(end, Math.min(x.offset + x.length, image.size));
    }
  }
  return end;
}

/** Resize `image` (open writable) to `newSize` bytes; see the top of this file. */
export async function resize(image: VhdxImage, newSize: number, opts: ResizeOptions = {}): Promise<ResizeResult> {
  if (image.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'resize needs the image open writable');
  const oldSize = image.size;
  const lss = image.logicalSectorSize;
  if (opts.toMinimum === true) newSize = alignUp(await minimumSize(image, opts), MiB);
  if (!Number.isSafeInteger(newSize) || newSize <= 0 || newSize > MAX_VIRTUAL_SIZE || newSize % lss !== 0) {
    throw bad(`size ${newSize} is not a positive multiple of the ${lss}-byte logical sector size up to 64 TiB`);
  }
  const gptFix = opts.gptFix ?? true;
  if (newSize === oldSize) {
    // Nothing to resize; a GPT whose backup is not at the end (an earlier grow cut short, or
    // another tool's resize) is moved there.
    const table = gptFix ? await readPartitions(image) : null;
    const misplaced = table?.gpt && table.gpt.alternateLba !== Math.floor(oldSize / table.sectorSize) - 1;
    const gpt = table && misplaced ? await moveGptBackup(image, table, oldSize, oldSize) : null;
    return { image, oldSize, newSize, batGrowth: 0, blocksMoved: 0, gpt };
  }
  if (newSize < oldSize) {
    if (opts.shrink !== true && opts.toMinimum !== true) {
      throw new VhdxError('EINVAL', 'SHRINK_NOT_ASKED', `${newSize} bytes is smaller than the disk's ${oldSize}: shrinking cuts data off, and needs --shrink (the shrink option)`);
    }
    return shrink(image, newSize, opts, gptFix);
  }
  return grow(image, newSize, opts, gptFix);
}

/** One 4 KiB sector to write through the log. */
interface Sector {
  fileOffset: number;
  data: Uint8Array;
}

/** The 4 KiB sectors of the metadata region that hold the Virtual Disk Size item, set to `size`. */
async function sizeSectors(image: VhdxImage, size: number): Promise<Sector[]> {
  const l = image.layout;
  const item = l.metadataItems.find((i) => i.itemId === ITEM_VIRTUAL_DISK_SIZE);
  if (!item) throw new VhdxError('EIO', 'MISSING_REQUIRED_ITEM', 'the metadata table has no Virtual Disk Size item');
  const at = l.metadataRegion.fileOffset + item.offset;
  const first = Math.floor(at / 4096) * 4096;
  const buf = await readBytes(l.source, first, alignUp(at + 8, 4096) - first, 'metadata region');
  new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setBigUint64(at - first, BigInt(size), true);
  const out: Sector[] = [];
  for (let p = 0; p < buf.length; p += 4096) out.push({ fileOffset: first + p, data: buf.slice(p, p + 4096) });
  return out;
}

/** Both region table copies with the BAT region at `batOffset`, `batLength` bytes long: the sectors that change. */
async function regionTableSectors(image: VhdxImage, batOffset: number, batLength: number): Promise<Sector[]> {
  const l = image.layout;
  const table = encodeRegionTable(l.regions.map((r) => (r.guid === REGION_BAT ? { ...r, fileOffset: batOffset, length: batLength } : r)));
  const out: Sector[] = [];
  for (const copy of REGION_TABLE_OFFSETS) {
    const now = await readBytes(l.source, copy, REGION_TABLE_SIZE, 'region table');
    for (let p = 0; p < REGION_TABLE_SIZE; p += 4096) {
      const want = table.subarray(p, p + 4096);
      if (!bytesEqual(now.subarray(p, p + 4096), want)) out.push({ fileOffset: copy + p, data: want.slice() });
    }
  }
  return out;
}

/** `sectors` in groups of at most `max` (one log entry each). */
function groups(sectors: Sector[], max: number): Sector[][] {
  const out: Sector[][] = [];
  for (let i = 0; i < sectors.length; i += max) out.push(sectors.slice(i, i + max));
  return out;
}

/**
 * The BAT sectors holding entries from `fromIndex` to `toIndex` (exclusive), rewritten so those
 * entries read as `entryAt` says (null: kept as the file has it): only sectors that change.
 * `regionLength` bytes of BAT exist in the file now; past them the file reads as zeros.
 */
async function batSectors(image: VhdxImage, fromIndex: number, toIndex: number, regionLength: number, entryAt: (index: number) => BatEntry | null): Promise<Sector[]> {
  const l = image.layout;
  const out: Sector[] = [];
  const per = 4096 / BAT_ENTRY_SIZE;
  const lastSector = Math.ceil(toIndex / per);
  // Read in pieces of up to 1 MiB (one read each, not one per sector); past the region, zeros.
  let piece = new Uint8Array(0);
  let pieceFirst = 0;
  for (let s = Math.floor(fromIndex / per); s < lastSector; s++) {
    const off = s * 4096;
    if (off >= pieceFirst * 4096 + piece.length) {
      pieceFirst = s;
      const inRegion = Math.max(0, Math.min(MiB, (lastSector - s) * 4096, regionLength - off));
      piece = new Uint8Array(Math.min(MiB, (lastSector - s) * 4096));
      if (inRegion > 0) piece.set(await readBytes(l.source, l.batRegion.fileOffset + off, inRegion, 'BAT'));
    }
    const now = piece.subarray((s - pieceFirst) * 4096, (s - pieceFirst + 1) * 4096);
    const want = now.slice();
    const view = new DataView(want.buffer);
    for (let i = Math.max(fromIndex, s * per); i < Math.min(toIndex, (s + 1) * per); i++) {
      const e = entryAt(i);
      if (e) encodeBatEntry(view, (i - s * per) * BAT_ENTRY_SIZE, e);
    }
    if (!bytesEqual(now, want)) out.push({ fileOffset: l.batRegion.fileOffset + off, data: want });
  }
  return out;
}

/**
 * Write a larger BAT at `at` (fresh space, zeroed, that no structure names yet): the current
 * BAT's bytes with the entries from `fromIndex` to `toIndex` (exclusive) as `entryAt` says (null:
 * kept); past them the space stays zero (NOT_PRESENT). In 1 MiB pieces (memory does not grow
 * with the BAT); pieces that stay zero are not written.
 */
async function writeRelocatedBat(image: VhdxImage, w: Writer, at: number, toIndex: number, fromIndex: number, entryAt: (index: number) => BatEntry | null, opts: ProgressOptions): Promise<void> {
  const old = image.layout.batRegion;
  const per = MiB / BAT_ENTRY_SIZE;
  for (let off = 0; off < toIndex * BAT_ENTRY_SIZE; off += MiB) {
    throwIfAborted(opts.signal, 'writing the BAT');
    const piece = new Uint8Array(MiB);
    if (off < old.length) piece.set(await readBytes(image.layout.source, old.fileOffset + off, Math.min(MiB, old.length - off), 'BAT'));
    const view = new DataView(piece.buffer);
    const first = off / BAT_ENTRY_SIZE;
    for (let i = Math.max(fromIndex, first); i < Math.min(toIndex, first + per); i++) {
      const e = entryAt(i);
      if (e) encodeBatEntry(view, (i - first) * BAT_ENTRY_SIZE, e);
    }
    if (off < old.length || piece.some((x) => x !== 0)) await w.writeFileRange(at + off, piece);
  }
}

async function grow(image: VhdxImage, newSize: number, opts: ResizeOptions, gptFix: boolean): Promise<ResizeResult> {
  const l = image.layout;
  const oldSize = l.virtualSize;
  const w: Writer = image.layoutWriter();
  const bs = l.blockSize;
  const gOld = l.geometry;
  const gNew: BatGeometry = batGeometry(newSize, bs, l.logicalSectorSize, l.hasParent);
  const newEntries = Math.max(batEntriesToWrite(gNew, l.hasParent), gNew.entriesNeeded);
  const newLength = Math.max(l.batRegion.length, alignUp(newEntries * BAT_ENTRY_SIZE, MiB));
  const batStart = l.batRegion.fileOffset;
  const batEnd = batStart + l.batRegion.length;
  const batGrows = newLength > l.batRegion.length;
  // The log or the metadata region in the way of the BAT's growth: it is written elsewhere.
  const growTo = batStart + newLength;
  const relocate = batGrows && fixedObjects(l).objects.some((o) => o.start < growTo && o.end > batEnd);
  let blocksMoved = 0;
  // 1. Room for the BAT in place: blocks out of the space it grows into, that space zeroed.
  if (batGrows && !relocate) {
    await w.reserveFileRange(batEnd, growTo);
    const moves = await w.blocksIn(batEnd, growTo, opts);
    blocksMoved = (await image.moveBlocks(moves, opts)).length;
    await w.zeroFileRange(batEnd, growTo - batEnd);
  }
  // 2. The old last block's bytes past the old end read as zeros (they come into the disk).
  const lastOld = gOld.payloadBlocks - 1;
  const tail = (lastOld + 1) * bs - oldSize;
  if (tail > 0) {
    const e = await lastBlockPlace(image, lastOld);
    if (e !== null) await w.zeroFileRange(e + (oldSize - lastOld * bs), tail);
  }
  // 3. A fixed disk's new blocks: allocated and written (space reserved, not sparse).
  const newBlocks = gNew.payloadBlocks - gOld.payloadBlocks;
  let firstNewPlaceMB = 0;
  if (l.type === 'fixed' && newBlocks > 0) firstNewPlaceMB = (await w.appendZeros(newBlocks * bs, opts)) / MiB;
  // 4. Entries the bigger disk brings into use, then one entry with the size (and region tables).
  // Kept as they are: old blocks' payload entries and, on a differencing disk, old chunks' bitmap
  // entries. Everything else from the first entry the old layout may not index on is rewritten:
  // through the log in place, or, for a relocated BAT, in its new copy before anything names it.
  const period = gNew.chunkRatio + 1;
  const absent: BatEntry = { state: PayloadState.NOT_PRESENT, fileOffsetMB: 0 };
  const entryAt = (index: number): BatEntry | null => {
    if (index % period === gNew.chunkRatio) return l.hasParent && Math.floor(index / period) < gOld.bitmapBlocks ? null : absent;
    const block = index - Math.floor(index / period);
    if (block < gOld.payloadBlocks) return null;
    if (l.type !== 'fixed' || block >= gNew.payloadBlocks) return absent;
    return { state: PayloadState.FULLY_PRESENT, fileOffsetMB: firstNewPlaceMB + (block - gOld.payloadBlocks) * (bs / MiB) };
  };
  const firstChanged = Math.min(l.batEntries, payloadBatIndex(gNew, gOld.payloadBlocks));
  // Past the old region the BAT reads as zeros (zeroed above, or fresh space), which is
  // NOT_PRESENT: only a fixed disk's new entries there need writing.
  const lastChanged = (l.type === 'fixed' ? newLength : l.batRegion.length) / BAT_ENTRY_SIZE;
  let batAt = batStart;
  if (relocate) {
    batAt = await w.appendZeros(newLength, opts);
    await writeRelocatedBat(image, w, batAt, lastChanged, firstChanged, entryAt, opts);
  }
  await image.flush();
  const pre = relocate ? [] : await batSectors(image, firstChanged, lastChanged, l.batRegion.length, entryAt);
  const last = [...(await sizeSectors(image, newSize)), ...(batGrows ? await regionTableSectors(image, batAt, newLength) : [])];
  await w.logSectors([...groups(pre, w.maxSectorsPerEntry), last], { dataChange: true });
  await w.finishLayoutChange(null);
  const reopened = await image.reopen();
  let gpt: GptMove | null = null;
  if (gptFix) {
    gpt = await moveGptBackup(reopened, await readPartitions(reopened), oldSize, newSize);
  }
  return { image: reopened, oldSize, newSize, batGrowth: newLength - l.batRegion.length, blocksMoved, gpt };
}

/** The file offset of payload block `block` when it has data in the file, else null. */
async function lastBlockPlace(image: VhdxImage, block: number): Promise<number | null> {
  const bs = image.blockSize;
  const x = (await image.blockStatus(block * bs, Math.min(bs, image.size - block * bs))).find((e) => e.fileOffset !== undefined && (e.depth ?? 0) === 0);
  return x?.fileOffset === undefined ? null : x.fileOffset + block * bs - x.offset;
}

async function shrink(image: VhdxImage, newSize: number, opts: ResizeOptions, gptFix: boolean): Promise<ResizeResult> {
  const l = image.layout;
  const oldSize = l.virtualSize;
  if (opts.force !== true) {
    if (image.parent && newSize < image.parent.size) {
      throw new VhdxError('EINVAL', 'SHRINK_CUTS_DATA', `the parent is ${image.parent.size} bytes: the child cannot be smaller than the data it shows (--force does not help: the chain would not open)`);
    }
    const min = await minimumSize(image, opts);
    if (newSize < min) {
      throw new VhdxError('EINVAL', 'SHRINK_CUTS_DATA', `${newSize} bytes would cut through the disk's partitions, filesystem or data, which need ${min} bytes (the GPT's backup included); shrink them first, or give --force`);
    }
  } else if (image.parent && newSize < image.parent.size) {
    throw new VhdxError('EINVAL', 'SHRINK_CUTS_DATA', `the parent is ${image.parent.size} bytes: a differencing disk cannot be smaller than its parent`);
  }
  const w = image.layoutWriter();
  const bs = l.blockSize;
  const gNew = batGeometry(newSize, bs, l.logicalSectorSize, l.hasParent);
  // 1. The GPT's backup at the new end, inside the old disk.
  let gpt: GptMove | null = null;
  if (gptFix) gpt = await moveGptBackup(image, await readPartitions(image), oldSize, newSize);
  // 2. The new last block's bytes past the new end read as zeros (should the disk grow again).
  const blockEnd = Math.min(gNew.payloadBlocks * bs, oldSize);
  if (blockEnd > newSize) await image.writeZeroes(newSize, blockEnd - newSize);
  await image.flush();
  // 3. Release what lies past the new end, then the size in one log entry, then move kept
  // blocks down and cut. Releasing first keeps every entry the format describes consistent at
  // every step (a crash before the size change leaves the old size, its cut-off range reading
  // as zeros where released); entries past a disk's last block are never left stale.
  await w.releaseBlocksFrom(gNew.payloadBlocks, opts);
  await w.logSectors([await sizeSectors(image, newSize)], { dataChange: true });
  const moves = await shrinkMoves(image, newSize, await image.freePlaces(), opts);
  const blocksMoved = (await image.moveBlocks(moves, opts)).length;
  const cut = await w.objectsEnd();
  await w.finishLayoutChange(cut);
  return { image: await image.reopen(), oldSize, newSize, batGrowth: 0, blocksMoved, gpt };
}

/**
 * Kept payload blocks (below `newSize`) to move into lower free places: the highest-placed ones
 * paired with the lowest places while the block sits above the place. Memory: at most twice the
 * free places (which the writer's record bounds).
 */
async function shrinkMoves(image: VhdxImage, newSize: number, free: number[], opts: ProgressOptions): Promise<{ kind: 'payload'; index: number; to: number }[]> {
  if (free.length === 0) return [];
  const bs = image.blockSize;
  const lowest = free[0]!;
  let top: { block: number; place: number }[] = [];
  const keep = (): void => {
    top.sort((a, b) => b.place - a.place);
    top = top.slice(0, free.length);
  };
  const WINDOW = 4096 * bs;
  let lastBlock = -1;
  for (let at = 0; at < newSize; at += WINDOW) {
    throwIfAborted(opts.signal, 'planning moves');
    for (const x of await image.blockStatus(at, Math.min(WINDOW, newSize - at))) {
      if (x.type !== 'data' || x.fileOffset === undefined || (x.depth !== undefined && x.depth !== 0)) continue;
      for (let b = Math.floor(x.offset / bs); b * bs < Math.min(x.offset + x.length, newSize); b++) {
        if (b === lastBlock) continue;
        lastBlock = b;
        const place = x.fileOffset + b * bs - x.offset;
        if (place > lowest) top.push({ block: b, place });
      }
      if (top.length > 2 * free.length) keep();
    }
  }
  keep();
  const moves: { kind: 'payload'; index: number; to: number }[] = [];
  for (let i = 0; i < top.length && i < free.length; i++) {
    if (top[i]!.place <= free[i]!) break;
    moves.push({ kind: 'payload', index: top[i]!.block, to: free[i]! });
  }
  return moves;
}
