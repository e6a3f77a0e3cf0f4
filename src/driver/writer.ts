/**
 * The write side of an image: allocation, payload writes, write-zeroes and discard, and the
 * metadata commit through the log.
 *
 * Ordering rules (crash safety):
 * - Headers: the first change of a session updates both headers (new FileWriteGuid and
 *   DataWriteGuid) before anything else reaches the file.
 * - A new block gets a place (below), the payload is written, and only then is the block's BAT
 *   entry changed in memory.
 * - A commit flushes the payload, writes one log entry holding the changed BAT sectors, flushes,
 *   sets the header's LogGuid if it is not yet set (so a valid entry exists whenever LogGuid
 *   does), writes the sectors to their places and flushes. Many allocations share one commit.
 * - Close commits, then clears LogGuid with a header update, then cuts free space off the end.
 *
 * Free space (freed blocks are reused before the file grows):
 * - What frees a block. Discard of a FULLY_PRESENT block makes it UNMAPPED and keeps its
 *   FileOffsetMB: [MS-VHDX] §2.5.1.1 lets an entry moved to UNMAPPED (or UNDEFINED) "leave the
 *   field unmodified", its place then holding the block's earlier contents, which this driver
 *   never shows (UNMAPPED reads as zeros here, as in qemu). Such a place is owned: the entry
 *   names it, so it is not leaked and survives a reopen. ZERO and NOT_PRESENT entries must keep
 *   FileOffsetMB zero (the field is reserved for them), so write-zeroes of an allocated block, a
 *   discard of a PARTIALLY_PRESENT one (whose place may hold sectors never written), and commit
 *   (which zeroes parent blocks through write-zeroes) leave a place no entry names: unowned.
 * - The record. Free places are kept in memory (free-space.ts), at most MAX_FREE_BLOCKS records
 *   and at most MAX_UNOWNED_BYTES of unowned space. Past the first cap an owned place is simply
 *   not recorded (it stays named on disk, for a later scan); past the second, write-zeroes
 *   writes zeros into the block instead of freeing it.
 * - After a reopen. The session's first allocation scans the BAT once (scanFreeSpace, two
 *   streaming passes, memory bounded by the cap) for owned places whose space nothing else
 *   names; a capped scan resumes when the record runs dry. Only places so checked, or freed in
 *   this session, are reused: a damaged or foreign image's claim that overlaps live data never is.
 *   The same scan finds where the image's last object ends; space after it (left by a crash) is
 *   reused too, zeroed first.
 * - Reuse. An allocation takes its own entry's place first (a block written again goes back
 *   where it was, which also keeps an unowned place's releaser able to take it at close), then
 *   the lowest place whose release is committed, then the end of the file. Another block never
 *   takes a place before the change that freed it is in the file: until then a crash would
 *   bring back the old entry pointing at the new block's data. When every free place waits for
 *   that, the allocation commits first (once). A reused place holds old bytes, discarded data
 *   among them, so everything of the block the write does not cover is zeroed before the block's
 *   entry points at it (writing zeros is bounded by the block; whole-block writes need none), and
 *   a failed write into a reused place never points the entry at it. Sector-bitmap-tracked
 *   allocations (a partial write into a differencing block that shows its parent) always take
 *   fresh space at the end: a crash between the BAT and bitmap sectors must not show old bytes.
 * - Commit. The reusing entry's new value and the old owner's claim (set to FileOffsetMB 0)
 *   change together and go to the log in the same entry (their sectors are linked), after the
 *   payload flush that makes the zeros and the data durable. A crash before that commit leaves
 *   the old owner's claim in place (its contents are no longer relied upon, and read as zeros).
 * - Close. Free places at the end of the file are released (owned ones' entries set to offset
 *   0) and cut off after the log is emptied; an unowned place inside the file is zeroed and
 *   given back to the entry that released it (still ZERO or UNMAPPED with offset 0) as an
 *   UNMAPPED claim, which reads as zeros everywhere. So an image this writer closed names all its
 *   space (`check` finds no leak) and ends at its last object; the zeroing is bounded by
 *   MAX_UNOWNED_BYTES. A crash before close may leave unowned places unnamed: leaked, not unsafe.
 * - Fixed disks keep every block allocated (zeroing writes zeros); nothing is freed.
 * - Moving a block (compact, resize): copy, then repoint, then one commit; the old place is free
 *   only once that commit is in the file. The contract is at `moveBlocks`.
 *
 * Concurrency: writes into allocated blocks take no lock (a move of the block waits for those in
 * flight). Choosing places and commits serialise on `metadataLock`; no payload I/O happens while
 * it is held (zeroing a reused place happens after; a sector bitmap block's 1 MiB is the one
 * exception, zeroed or moved under it). Concurrent writes to one unallocated block allocate it once: they share its place and
 * write in parallel (after its zeroing), the last to finish sets the BAT entry, and none returns
 * before that (a write that returned must be reachable by the next flush's commit).
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import { NIL_GUID, randomGuid } from '../codec/guid.js';
import { MiB, REGION_TABLE_OFFSETS } from '../format/constants.js';
import { BitmapState, PayloadState, type BatEntry } from '../format/bat.js';
import { readExact, writeZeros, type WritableSource } from '../io/source.js';
import type { BatCache } from './bat-cache.js';
import type { BlockMap } from './mapping.js';
import { FreeBlocks, assertBlocksApart, fixedObjects, scanFreeSpace, type FreeBlock } from './free-space.js';
import { updateHeaders, type CurrentHeader } from './headers.js';
import { LogRing } from './log-writer.js';
import { maxDataWritesPerEntry } from '../format/log-entry.js';
import { InFlight, KeyedMutex, Mutex } from './mutex.js';
import type { Layout } from './open.js';
import type { SectorBitmaps } from './bitmap-cache.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';

/** Options of a write to a VHDX image. */
export interface WriteOptions {
  /** Durable when the call returns (forced unit access). */
  fua?: boolean;
}

/** Options of {@link VhdxImage.writeZeroes}. */
export interface ZeroOptions {
  /** The range may be deallocated instead of written (it reads as zeros either way). */
  mayDiscard?: boolean;
  /** Fail with ENOTSUP rather than write zeros as data. */
  fast?: boolean;
}


/** Where a new block goes: a fresh place at the end of the file, or a free one reused. */
interface Placement {
  fileOffset: number;
  /** The free record taken, when the place was reused. */
  reused: FreeBlock | null;
}

/** A block being allocated: where it goes, how many writes into it are in flight, and when it is done. */
interface PendingBlock {
  place: Promise<Placement>;
  writers: number;
  /** Why a write into the block failed, if one did: a reused place is then not pointed at (it may show old bytes). */
  failure?: unknown;
  /** Resolves when the block has its BAT entry (or its allocation failed) and left `allocating`. */
  done: Promise<void>;
  finish: () => void;
  /** Why recording the block failed, for the writers that waited on it. */
  error?: unknown;
}

/** Bounds of the writer's record of free space (see the contract at the top of writer.ts). */
export interface FreeSpaceOptions {
  /** Free places recorded at most (default MAX_FREE_BLOCKS, about 50 bytes each). */
  maxFreeBlocks?: number;
  /** Free space no BAT entry names recorded at most, in bytes (default MAX_UNOWNED_BYTES): what close may zero. */
  maxUnownedFreeBytes?: number;
}

export interface WriterOptions extends FreeSpaceOptions {
  /** A differencing disk's parent, for the parts of sectors a write does not cover. */
  parent?: BlockDevice | null;
}

/**
 * Metadata sectors one commit may log for the image: an entry takes at most half the log, so that
 * the next one never overwrites it (it must stay replayable until the next is durable, see
 * LogRing). Throws when the log cannot hold one: such an image cannot be written.
 */
export function entriesPerCommit(layout: Layout): number {
  const n = maxDataWritesPerEntry(layout.log.logLength / 2);
  if (n < 1) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `a log of ${layout.log.logLength} bytes cannot hold a single entry: the image cannot be written`);
  return n;
}

/** Bytes of zeros written at a time when zeroing sectors of a differencing disk. */
const ZERO_CHUNK = 1024 * 1024;
/** Bytes copied at a time when a block moves. */
const MOVE_CHUNK = 4 * MiB;

/** A block to move (see Writer.moveBlocks). */
export interface BlockMove {
  /** A payload block, or the sector bitmap block of a chunk (differencing disks). */
  kind: 'payload' | 'bitmap';
  /** The payload block's index, or the chunk's. */
  index: number;
  /** Fresh space at the end of the file, or (payload blocks) a free place from `freePlaces`. */
  to: 'end' | number;
}

/** A move made: the block, the place it left and the place it took (file offsets). */
export interface MovedBlock {
  /** A payload block, or a chunk's sector bitmap block. */
  kind: 'payload' | 'bitmap';
  /** The payload block's index, or the chunk's. */
  index: number;
  /** File offset the block left, in bytes. */
  from: number;
  /** File offset the block took, in bytes. */
  to: number;
}
/** Free places recorded at most (about 50 bytes each). */
export const MAX_FREE_BLOCKS = 16384;
/** Unowned free space recorded at most: what close may have to zero. */
export const MAX_UNOWNED_BYTES = 1024 * MiB;

export class Writer {
  private readonly metadataLock = new Mutex();
  /**
   * Per payload block, one at a time: writes into a block of a differencing disk that is not
   * FULLY_PRESENT, zeroing, and moves.
   */
  private readonly blockLocks = new KeyedMutex<number>();
  /** Writes into blocks' current places, which take no lock: a move waits for those in flight. */
  private readonly inPlace = new InFlight();
  /** Blocks being moved, and when their move ends: writes into them wait for it. */
  private readonly moving = new Map<number, Promise<void>>();
  /** Moves run one batch at a time. */
  private readonly moveLock = new Mutex();
  /** The BAT's cache, for what commits take from it (dirty sectors); lookups go through `map`. */
  private readonly bat: BatCache;
  private readonly bitmaps: SectorBitmaps | null;
  private readonly parent: BlockDevice | null;
  private nextDataWriteGuid: string | undefined;
  /** Other metadata sectors (file offset → 4 KiB) to write through the log at the next commit. */
  private readonly pendingSectors = new Map<number, Uint8Array>();
  private readonly allocating = new Map<number, PendingBlock>();
  private header: CurrentHeader;
  /** The session's header updates: FileWriteGuid at the first change, DataWriteGuid at the first data change. */
  private dataSession: Promise<void> | null = null;
  private fileSession: Promise<void> | null = null;
  private fileWriteGuidChanged = false;
  /** The session's one check, before its first change, that no two blocks share file space. */
  private blocksApart: Promise<void> | null = null;
  private ring: LogRing | null = null;
  /** Where the next block goes when no free place is: the 1 MiB-aligned end of the file, or of its last object. */
  private fileEnd: number;
  /** Below this offset fresh space may hold old bytes (after the scan moved `fileEnd` back): it is zeroed before use. */
  private dirtyEnd = 0;
  private readonly free: FreeBlocks;
  /** Places taken from `free` whose new entry is not set yet (a scan must not record them again). */
  private readonly placing = new Set<number>();
  /** Payload blocks whose BAT sectors must reach the log in one entry: a reused place's old owner and new one. */
  private linked: [number, number][] = [];
  /** The free-space scan: not run yet, capped (resume at `scanFrom`), or complete. */
  private scan: 'none' | 'partial' | 'done' = 'none';
  private scanFrom = 0;
  /** The file's size at the last flush. */
  private flushedSize: number;
  private readonly entriesPerCommit: number;
  private backgroundCommit: Promise<void> | null = null;
  private backgroundError: unknown = null;
  /** The layout changed (finishLayoutChange): this writer's picture of the image is out of date. */
  private retired = false;

  constructor(
    private readonly file: WritableSource,
    private readonly layout: Layout,
    private readonly map: BlockMap,
    opts: WriterOptions = {},
  ) {
    this.bat = map.bat;
    this.bitmaps = map.bitmaps;
    this.parent = opts.parent ?? null;
    this.header = layout.current;
    this.fileEnd = Math.ceil(file.size / MiB) * MiB;
    this.flushedSize = Math.floor(file.size / MiB) * MiB;
    this.free = new FreeBlocks(layout.blockSize, Math.max(0, opts.maxFreeBlocks ?? MAX_FREE_BLOCKS), Math.max(0, opts.maxUnownedFreeBytes ?? MAX_UNOWNED_BYTES));
    this.entriesPerCommit = entriesPerCommit(layout);
  }

  /** The current header (it changes as the session updates it). */
  get currentHeader(): CurrentHeader {
    return this.header;
  }

  async write(offset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    this.throwBackgroundError();
    if (data.length === 0) {
      if (opts.fua) await this.flush();
      return; // nothing changes: no session, no new DataWriteGuid
    }
    await this.beginChange();
    const bs = this.layout.blockSize;
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < data.length; ) {
      const vo = offset + pos;
      const blockIndex = Math.floor(vo / bs);
      const inBlock = vo - blockIndex * bs;
      const n = Math.min(bs - inBlock, data.length - pos);
      parts.push(this.writeInBlock(blockIndex, inBlock, data.subarray(pos, pos + n)));
      pos += n;
    }
    await Promise.all(parts);
    this.maybeCommitInBackground();
    if (opts.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    await this.zeroRange(offset, length, PayloadState.ZERO, opts.fast === true);
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.zeroRange(offset, length, PayloadState.UNMAPPED, false);
  }

  /** Make every write that completed before this call durable. */
  async flush(): Promise<void> {
    this.throwBackgroundError();
    await this.commit(true);
  }

  /**
   * Settle the free space (see the contract above), commit, mark the log empty, then cut free
   * space off the end of the file. The file stays open (the caller closes it).
   */
  async close(): Promise<void> {
    if (this.retired) return;
    if (this.backgroundCommit) await this.backgroundCommit.catch(() => undefined);
    const cutTo = this.backgroundError === null ? await this.settleFreeSpace() : null;
    await this.commit(true);
    this.throwBackgroundError();
    await this.metadataLock.run(async () => {
      if (this.header.logGuid !== NIL_GUID) this.header = await updateHeaders(this.file, this.header, { logGuid: NIL_GUID });
      // After the log is empty: every log entry names the file size it relied on, and replay
      // refuses a file shorter than that. The commit above released what lies past `cutTo`.
      if (cutTo !== null && this.file.size > cutTo) {
        await this.file.truncate(cutTo);
        await this.file.flush();
      }
    });
  }

  /**
   * At close: free places at the end of the file are released (an owned one's entry set to
   * offset 0); each unowned place inside the file is zeroed and given back to the entry that
   * released it, as an UNMAPPED claim. Returns the size to cut the file to, or null. Does
   * nothing when the session changed nothing.
   */
  private async settleFreeSpace(): Promise<number | null> {
    if (!this.dataSession && !this.fileSession) return null;
    await Promise.all([...this.allocating.values()].map((a) => a.done));
    let end = this.fileEnd;
    for (const b of this.free.takeTrailing(end)) {
      if (b.owned) await this.dropClaim(b);
      end = b.fileOffset;
    }
    for (const b of this.free.all()) {
      if (b.owned) continue;
      this.free.remove(b);
      // A place a moved block left has no block to take it back.
      if (b.block === null) continue;
      const e = await this.map.entry(b.block);
      // Still as it released the place (an allocation would have taken the place back).
      if (e.fileOffsetMB !== 0 || (e.state !== PayloadState.ZERO && e.state !== PayloadState.UNMAPPED)) continue;
      await writeZeros(this.fileWrite, b.fileOffset, this.map.blockExtent(b.block));
      await this.map.setEntry(b.block, { state: PayloadState.UNMAPPED, fileOffsetMB: b.fileOffset / MiB });
    }
    this.fileEnd = end;
    return end < this.file.size ? end : null;
  }

  /** A recorded place's owner stops naming it (FileOffsetMB 0, state kept), if it still does. */
  private async dropClaim(b: FreeBlock): Promise<void> {
    if (b.block === null) return;
    const e = await this.map.entry(b.block);
    if (e.fileOffsetMB * MiB === b.fileOffset) await this.map.setEntry(b.block, { state: e.state, fileOffsetMB: 0 });
  }

  /** The file's write, for writeZeros. */
  private readonly fileWrite = (offset: number, data: Uint8Array): Promise<void> => this.file.write(offset, data);

  /**
   * First change of user-visible data in the session: a new DataWriteGuid, and a new
   * FileWriteGuid unless a metadata change already gave one, in both headers.
   */
  private beginChange(): Promise<void> {
    this.dataSession ??= this.metadataLock.run(async () => {
      await (this.blocksApart ??= assertBlocksApart(this.file, this.layout));
      const dataWriteGuid = this.nextDataWriteGuid ?? randomGuid();
      this.header = await updateHeaders(this.file, this.header, this.fileWriteGuidChanged ? { dataWriteGuid } : { fileWriteGuid: randomGuid(), dataWriteGuid });
      this.fileWriteGuidChanged = true;
    });
    return this.dataSession;
  }

  /**
   * The DataWriteGuid the session's first data change gives the image, instead of a random one
   * (commit names the parent's next identity in the child before writing to the parent).
   */
  setNextDataWriteGuid(guid: string): void {
    if (this.dataSession) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', 'the DataWriteGuid of this session is already set');
    this.nextDataWriteGuid = guid;
  }

  /**
   * Make every payload block and sector bitmap entry NOT_PRESENT (a differencing disk then
   * shows its parent everywhere), committing as the log fills, then flush and cut the file
   * back to its static structures. The blocks' space is unreferenced once the commit is durable.
   * With `contentUnchanged` (the parent already holds the same data: commit) the DataWriteGuid is
   * kept, so that children of this image still link to it.
   */
  async clearAllBlocks(opts: ProgressOptions & { contentUnchanged?: boolean } = {}): Promise<void> {
    this.throwBackgroundError();
    // Every entry is valid before the headers change: clearing reads them all.
    await this.map.validateAll();
    await (opts.contentUnchanged === true ? this.beginMetadataChange() : this.beginChange());
    await Promise.all([...this.allocating.values()].map((a) => a.done));
    await this.map.clearAll(opts, async () => {
      if (this.dirtyCount >= this.entriesPerCommit) await this.commit(false);
    });
    await this.commit(true);
    await this.metadataLock.run(async () => {
      const l = this.layout;
      const end = Math.max(l.log.logOffset + l.log.logLength, ...l.regions.map((r) => r.fileOffset + r.length));
      await this.cutAfterEmptyingLog(end);
      this.fileEnd = Math.ceil(this.file.size / MiB) * MiB;
      this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
      // Nothing names any place now, and the file ends at its structures.
      this.free.clear();
      this.linked = [];
      this.dirtyEnd = 0;
      this.scan = 'done';
    });
  }

  /**
   * Cut the file to `end` when it is longer (under `metadataLock`, after a commit that put
   * everything in place). Every log entry names the file size it relied on (FlushedFileOffset),
   * and replay refuses a file shorter than that as truncated: the log is emptied first (LogGuid
   * cleared, a fresh ring for the next commit).
   */
  private async cutAfterEmptyingLog(end: number): Promise<void> {
    if (this.file.size <= end) return;
    if (this.header.logGuid !== NIL_GUID) this.header = await updateHeaders(this.file, this.header, { logGuid: NIL_GUID });
    this.ring = null;
    await this.file.truncate(end);
    await this.file.flush();
  }

  /** First change of the session that leaves the disk's data alone (a parent locator): a new FileWriteGuid. */
  private beginMetadataChange(): Promise<void> {
    this.fileSession ??= this.metadataLock.run(async () => {
      if (this.fileWriteGuidChanged) return;
      await (this.blocksApart ??= assertBlocksApart(this.file, this.layout));
      this.header = await updateHeaders(this.file, this.header, { fileWriteGuid: randomGuid() });
      this.fileWriteGuidChanged = true;
    });
    return this.fileSession;
  }

  /**
   * Queue whole 4 KiB sectors of metadata (outside the BAT and the sector bitmaps: the metadata
   * region) to be written through the log at the next commit. The caller flushes.
   */
  async writeMetadataSectors(sectors: { fileOffset: number; data: Uint8Array }[]): Promise<void> {
    this.throwBackgroundError();
    for (const x of sectors) {
      if (x.fileOffset % 4096 !== 0 || x.data.length !== 4096) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `metadata writes go through the log in whole 4 KiB sectors (offset ${x.fileOffset}, ${x.data.length} bytes)`);
      }
    }
    if (sectors.length === 0) return;
    await this.beginMetadataChange();
    for (const x of sectors) this.pendingSectors.set(x.fileOffset, x.data.slice());
  }

  /** Metadata sectors changed in memory and not yet committed. */
  private get dirtyCount(): number {
    return this.bat.dirtyCount + (this.bitmaps?.dirtyCount ?? 0) + this.pendingSectors.size;
  }

  /**
   * A write into a block of a differencing disk that is not FULLY_PRESENT, under the block's
   * lock. A whole block, or a block that reads as zeros (ZERO, UNMAPPED, UNDEFINED), gets the
   * data in place and becomes FULLY_PRESENT: fresh file space reads as zeros. Otherwise the
   * write goes sector by sector: sectors cut by the write are completed from their current
   * content (this file where their bit is set, else the parent), the sectors are written, then
   * their bits are set, and a NOT_PRESENT block becomes PARTIALLY_PRESENT (FULLY_PRESENT once
   * every bit is set).
   */
  private async writeDifferencing(block: number, inBlock: number, data: Uint8Array, bitmaps: SectorBitmaps): Promise<void> {
    const e = await this.map.entry(block);
    if (e.state === PayloadState.FULLY_PRESENT) {
      await this.file.write(e.fileOffsetMB * MiB + inBlock, data);
      return;
    }
    const bs = this.layout.blockSize;
    const blockStart = block * bs;
    const blockLen = this.map.blockExtent(block);
    const partial = e.state === PayloadState.PARTIALLY_PRESENT;
    const showsParent = partial || e.state === PayloadState.NOT_PRESENT;
    if (!showsParent || (inBlock === 0 && data.length === blockLen)) {
      if (partial) {
        await this.file.write(e.fileOffsetMB * MiB + inBlock, data);
        await this.map.setEntry(block, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: e.fileOffsetMB });
        return;
      }
      const place = await this.placeBlock(block, true, blockLen, inBlock, inBlock + data.length);
      await this.writeInto(place, inBlock, data);
      await this.pointAt(block, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: place.fileOffset / MiB }, place);
      return;
    }
    const lss = this.layout.logicalSectorSize;
    const alignedStart = Math.floor(inBlock / lss) * lss;
    const alignedEnd = Math.min(Math.ceil((inBlock + data.length) / lss) * lss, blockLen);
    // Sector-bitmap-tracked: fresh space only (see the contract).
    const at = partial ? e.fileOffsetMB * MiB : (await this.placeBlock(block, false, blockLen, alignedStart, alignedEnd)).fileOffset;
    let buf = data;
    if (alignedStart !== inBlock || alignedEnd !== inBlock + data.length) {
      buf = new Uint8Array(alignedEnd - alignedStart);
      const edges = new Set([alignedStart, alignedEnd - lss]);
      for (const s of edges) {
        const cut = (s === alignedStart && inBlock !== alignedStart) || (s === alignedEnd - lss && inBlock + data.length !== alignedEnd);
        if (!cut) continue;
        const sector = buf.subarray(s - alignedStart, s - alignedStart + lss);
        const here = partial && (await bitmaps.allSet((blockStart + s) / lss, 1));
        if (here) await readExact(this.file, at + s, sector, 'payload block');
        else if (blockStart + s < this.map.parentEnd) await this.needParent().read(blockStart + s, sector);
        // Past the parent's end (a child grown past it) the sector reads as zeros: `buf` has them.
      }
      buf.set(data, inBlock - alignedStart);
    }
    await this.file.write(at + alignedStart, buf);
    await this.ensureBitmapBlock(this.map.chunkOf(block));
    const blockSector = blockStart / lss;
    // A block allocated now may have bits left over from an earlier allocation: clear them first.
    if (!partial) await bitmaps.set(blockSector, blockLen / lss, false);
    await bitmaps.set((blockStart + alignedStart) / lss, (alignedEnd - alignedStart) / lss, true);
    if (await bitmaps.allSet(blockSector, blockLen / lss)) {
      await this.map.setEntry(block, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: at / MiB });
    } else if (!partial) {
      await this.map.setEntry(block, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: at / MiB });
    }
  }

  private needParent(): BlockDevice {
    if (!this.parent) throw new VhdxError('EINVAL', 'NO_PARENT', 'writing part of a sector of a differencing image needs its parent, which was not opened');
    return this.parent;
  }

  /** Give chunk `chunk` its 1 MiB sector bitmap block (zeros: every sector from the parent) if it has none. */
  private async ensureBitmapBlock(chunk: number): Promise<void> {
    if ((this.map.cachedBitmapEntry(chunk) ?? (await this.map.bitmapEntry(chunk))).state === BitmapState.PRESENT) return;
    await this.metadataLock.run(async () => {
      if (this.scan === 'none') await this.scanForFreeSpace();
      if ((await this.map.bitmapEntry(chunk)).state === BitmapState.PRESENT) return;
      const at = await this.freshSpace(MiB);
      // Space a crash left after the last object may hold old bits: zeros first (1 MiB of
      // metadata, only in that case, so under the lock).
      if (at < this.dirtyEnd) await writeZeros(this.fileWrite, at, Math.min(MiB, this.dirtyEnd - at));
      await this.map.setBitmapEntry(chunk, { state: BitmapState.PRESENT, fileOffsetMB: at / MiB });
    });
  }

  /** `bytes` of fresh space at the end of the file, the file grown to hold it (under `metadataLock`). */
  private async freshSpace(bytes: number): Promise<number> {
    const at = this.fileEnd;
    this.fileEnd += bytes;
    if (this.file.size < this.fileEnd) await this.file.truncate(this.fileEnd);
    return at;
  }

  private async writeInBlock(block: number, inBlock: number, data: Uint8Array): Promise<void> {
    // Writes into a block's place run without a lock; a move of the block waits for those in
    // flight, and those that come while it runs wait for it (see moveBlocks).
    for (let move = this.moving.get(block); move !== undefined; move = this.moving.get(block)) await move;
    const p = this.inPlace.enter();
    try {
      const e = this.map.cachedEntry(block) ?? (await this.map.entry(block));
      if (e.state === PayloadState.FULLY_PRESENT) {
        await this.file.write(e.fileOffsetMB * MiB + inBlock, data);
        return;
      }
    } finally {
      this.inPlace.leave(p);
    }
    const bitmaps = this.bitmaps;
    if (bitmaps) return this.blockLocks.run(block, () => this.writeDifferencing(block, inBlock, data, bitmaps));
    // Join the block's allocation, or start it: nothing awaits between the lookup above and the set.
    let alloc = this.allocating.get(block);
    if (!alloc) {
      let finish = (): void => undefined;
      const done = new Promise<void>((r) => (finish = r));
      const place = this.placeBlock(block, true, this.map.blockExtent(block), inBlock, inBlock + data.length);
      alloc = { place, writers: 0, done, finish };
      this.allocating.set(block, alloc);
    }
    alloc.writers++;
    try {
      await this.file.write((await alloc.place).fileOffset + inBlock, data);
    } catch (e) {
      alloc.failure ??= e;
      throw e;
    } finally {
      // The last writer points the BAT at the block; the others return only once it has, so a
      // write that completed is always reachable by the next flush's commit.
      if (--alloc.writers === 0) await this.settle(block, alloc);
      else await alloc.done;
    }
    if (alloc.error !== undefined) throw alloc.error;
  }

  /**
   * A place for payload block `block`: its own free place, else the lowest free place, else the
   * end of the file (only the end when `reuse` is false). A place that may hold old bytes gets
   * zeros in its first `extent` bytes, except [keepFrom, keepTo), which the caller writes next.
   * No payload I/O under the lock: the zeros come after it.
   */
  private async placeBlock(block: number, reuse: boolean, extent: number, keepFrom: number, keepTo: number): Promise<Placement> {
    let place: Placement | null = null;
    for (let tries = 0; !place; tries++) {
      place = await this.metadataLock.run(async (): Promise<Placement | null> => {
        if (this.scan === 'none') await this.scanForFreeSpace();
        let b: FreeBlock | undefined;
        if (reuse) {
          b = this.free.of(block);
          if (b) this.free.remove(b);
          else {
            if (this.free.size === 0 && this.scan === 'partial') await this.scanForFreeSpace();
            b = this.free.takeLowest();
            // Places whose release is not committed yet: commit, then take one (once).
            if (!b && tries === 0 && this.free.hasPending()) return null;
          }
        }
        if (b) {
          this.placing.add(b.fileOffset);
          return { fileOffset: b.fileOffset, reused: b };
        }
        return { fileOffset: await this.freshSpace(this.layout.blockSize), reused: null };
      });
      if (!place) await this.commit(false);
    }
    // Old bytes: in all of a reused place; in fresh space, below `dirtyEnd`.
    const oldUpTo = place.reused ? extent : Math.min(extent, this.dirtyEnd - place.fileOffset);
    try {
      if (keepFrom > 0 && oldUpTo > 0) await writeZeros(this.fileWrite, place.fileOffset, Math.min(keepFrom, oldUpTo));
      if (keepTo < oldUpTo) await writeZeros(this.fileWrite, place.fileOffset + keepTo, oldUpTo - keepTo);
    } catch (e) {
      this.unplace(place);
      throw e;
    }
    return place;
  }

  /** Write `data` at `inBlock` of a block's new place; a reused place goes back to the record when that fails. */
  private async writeInto(place: Placement, inBlock: number, data: Uint8Array): Promise<void> {
    try {
      await this.file.write(place.fileOffset + inBlock, data);
    } catch (e) {
      this.unplace(place);
      throw e;
    }
  }

  /** A reused place whose allocation failed goes back to the record (its entry was never pointed at it). */
  private unplace(place: Placement): void {
    const b = place.reused;
    if (!b || !this.placing.delete(b.fileOffset)) return;
    this.free.add(b);
  }

  /**
   * Point payload block `block`'s entry at its new place, whose payload is written. When the
   * place was another block's claim, that block gives it up (FileOffsetMB 0) at the same time,
   * and their BAT sectors are linked so that one log entry carries both changes.
   */
  private async pointAt(block: number, entry: BatEntry, place: Placement): Promise<void> {
    const b = place.reused;
    if (!b || !b.owned || b.block === null || b.block === block) {
      await this.map.setEntry(block, entry);
      if (b) this.placing.delete(b.fileOffset);
      return;
    }
    const owner = b.block;
    // Under the lock, so that no commit takes one change without the other.
    await this.metadataLock.run(async () => {
      await this.map.setEntry(block, entry);
      await this.dropClaim(b);
      this.linked.push([owner, block]);
      this.placing.delete(b.fileOffset);
    });
  }

  /**
   * Look for free places earlier sessions left (under `metadataLock`): owned places checked
   * against the whole BAT are recorded while the record has room. The first scan of a session
   * also moves the end of the file back to the end of its last object, and records the places
   * whose entry already gave them up in this session (ZERO or UNMAPPED with offset 0 now).
   */
  private async scanForFreeSpace(): Promise<void> {
    const first = this.scan === 'none';
    if (this.layout.type === 'fixed') {
      this.scan = 'done'; // a fixed disk frees nothing
      return;
    }
    const found = await scanFreeSpace(this.file, this.layout, this.scanFrom, this.free.maxBlocks - this.free.size, (block, at) => this.placing.has(at) || this.free.of(block) !== undefined);
    for (const c of found.claims) {
      // The file may lag behind memory: what counts is the entry now, still a claim on the place
      // (not, say, the block written back into its own place since).
      const e = await this.map.entry(c.block);
      const claims = e.state === PayloadState.UNMAPPED || e.state === PayloadState.UNMAPPED_DRAFT || e.state === PayloadState.UNDEFINED;
      if (claims && e.fileOffsetMB * MiB === c.fileOffset) this.free.add({ fileOffset: c.fileOffset, block: c.block, owned: true, durable: true });
      else if (first && e.fileOffsetMB === 0 && (e.state === PayloadState.ZERO || e.state === PayloadState.UNMAPPED)) {
        // Nothing else can name it: no place was handed out in this session yet.
        // The file still names it as an UNMAPPED claim, which reads as zeros: reusable at once.
        this.free.add({ fileOffset: c.fileOffset, block: c.block, owned: false, durable: true });
      }
    }
    if (first && found.objectsEnd < this.fileEnd) {
      this.dirtyEnd = this.file.size;
      this.fileEnd = found.objectsEnd;
    }
    this.scan = found.resumeAt >= 0 ? 'partial' : 'done';
    this.scanFrom = Math.max(0, found.resumeAt);
  }

  /**
   * The last writer into a new block points the BAT at it, after every write into the block has
   * finished (data before the BAT entry that points at it). The rest of the block reads as zeros
   * (fresh file space, or zeroed by placeBlock), which is what a NOT_PRESENT, ZERO or UNMAPPED
   * block read as before. A failed write into a reused place leaves the entry as it was.
   * Writers that join while this runs write to the same place and settle again (idempotent).
   */
  private async settle(block: number, alloc: PendingBlock): Promise<void> {
    try {
      const place = await alloc.place;
      if (alloc.failure !== undefined && place.reused) {
        // Every writer into the block fails with the write's error; the place goes back.
        this.unplace(place);
        throw alloc.failure;
      }
      await this.pointAt(block, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: place.fileOffset / MiB }, place);
    } catch (e) {
      alloc.error = e;
      throw e;
    } finally {
      if (alloc.writers === 0 && this.allocating.get(block) === alloc) {
        this.allocating.delete(block);
        alloc.finish();
      }
    }
  }

  /**
   * Zero [offset, offset + length), block by block under each block's lock. Whole blocks of a
   * dynamic or differencing disk change state (`state`: ZERO for write-zeroes, UNMAPPED for
   * discard; both hide a parent) without touching data. Elsewhere, and on fixed disks, which keep
   * every block allocated, the range's runs say what to do: data gets zeros written in place,
   * ranges that show the parent get zeros written as data (sector by sector, see
   * writeDifferencing), and ranges that already read as zeros are left alone.
   */
  private async zeroRange(offset: number, length: number, state: number, fast: boolean): Promise<void> {
    this.throwBackgroundError();
    if (length === 0) return;
    if (fast) await this.refuseDataZeroing(offset, length);
    await this.beginChange();
    const bs = this.layout.blockSize;
    const fixed = this.layout.type === 'fixed';
    const bitmaps = this.bitmaps;
    for (let pos = offset; pos < offset + length; ) {
      const block = Math.floor(pos / bs);
      const blockStart = block * bs;
      const blockEnd = blockStart + this.map.blockExtent(block);
      const end = Math.min(offset + length, blockEnd);
      const from = pos;
      await this.blockLocks.run(block, async () => {
        await this.allocationSettled(block);
        if (from === blockStart && end === blockEnd && !fixed) return this.zeroBlock(block, state, fast);
        for (const r of await this.map.runs(from, end - from)) {
          const rEnd = Math.min(r.offset + r.length, end);
          if (r.kind !== 'data' && r.kind !== 'parent') continue;
          if (fast) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing ${end - from} bytes at ${from} would write data`);
          if (r.kind === 'data') await writeZeros(this.fileWrite, r.fileOffset, rEnd - r.offset);
          else if (bitmaps) {
            const zeros = new Uint8Array(Math.min(ZERO_CHUNK, rEnd - r.offset));
            for (let p = r.offset; p < rEnd; p += zeros.length) {
              await this.writeDifferencing(block, p - blockStart, zeros.subarray(0, Math.min(zeros.length, rEnd - p)), bitmaps);
            }
          }
        }
      });
      pos = end;
    }
    this.maybeCommitInBackground();
  }

  /**
   * A fast zero fails before anything changes when zeroing [offset, offset + length) would write
   * zeros as data: into data anywhere on a fixed disk; elsewhere into data or a range that shows
   * its parent in a block the range covers only in part (whole blocks only change state).
   */
  private async refuseDataZeroing(offset: number, length: number): Promise<void> {
    const bs = this.layout.blockSize;
    const end = offset + length;
    const ranges: [number, number][] = [];
    if (this.layout.type === 'fixed') ranges.push([offset, end]);
    else {
      const firstBlock = Math.floor(offset / bs);
      const lastBlock = Math.floor((end - 1) / bs);
      const firstEnd = firstBlock * bs + this.map.blockExtent(firstBlock);
      if (offset !== firstBlock * bs || end < firstEnd) ranges.push([offset, Math.min(end, firstEnd)]);
      const lastEnd = lastBlock * bs + this.map.blockExtent(lastBlock);
      if (lastBlock !== firstBlock && end !== lastEnd) ranges.push([lastBlock * bs, end]);
    }
    for (const [from, to] of ranges) {
      for (const r of await this.map.runs(from, to - from)) {
        if (r.kind === 'data' || r.kind === 'parent') {
          throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing ${length} bytes at ${offset} would write data into block ${Math.floor(r.offset / bs)}`);
        }
      }
    }
    if (this.layout.type === 'fixed') return;
    // Whole blocks change state, each giving up its place to the record of unowned free space;
    // when that record cannot take them all, some would have zeros written instead (zeroPlace):
    // refuse now rather than fail halfway.
    let places = 0;
    // The blocks the range covers whole (the disk's last block may be short).
    for (let b = Math.ceil(offset / bs); b * bs < end && b * bs + this.map.blockExtent(b) <= end; b++) {
      const e = this.map.cachedEntry(b) ?? (await this.map.entry(b));
      if (e.state === PayloadState.FULLY_PRESENT || e.state === PayloadState.PARTIALLY_PRESENT) places++;
      else if (e.fileOffsetMB !== 0 && this.free.of(b)) places++;
    }
    if (places > 0 && !this.free.roomForUnowned(places)) {
      throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing ${length} bytes at ${offset} would write zeros into ${places} blocks: the record of free space is full`);
    }
  }

  /**
   * Make all of payload block `block` read as zeros in `state`, under its lock: a partially
   * present block's bits are cleared first (bits of a block that is not PARTIALLY_PRESENT mean
   * nothing, but readers such as libvhdi read them anyway: leave none behind), then the block is
   * freed, or its place zeroed when the record of unowned space is full.
   */
  private async zeroBlock(block: number, state: number, fast: boolean): Promise<void> {
    // No await between the caller's allocationSettled and this lookup when the page is cached.
    const e = this.map.cachedEntry(block) ?? (await this.map.entry(block));
    if (e.state === PayloadState.PARTIALLY_PRESENT && this.bitmaps) {
      const lss = this.layout.logicalSectorSize;
      await this.bitmaps.set((block * this.layout.blockSize) / lss, this.map.blockExtent(block) / lss, false);
    }
    if (!(await this.freeBlock(block, e, state))) await this.zeroPlace(block, e, fast);
  }

  /**
   * Make all of payload block `block` (now `e`) read as zeros in `state` (ZERO for write-zeroes,
   * UNMAPPED for discard), recording the place it frees (see the contract). False when the
   * unowned record is full: nothing changed, and the caller zeroes the place instead.
   */
  private async freeBlock(block: number, e: BatEntry, state: number): Promise<boolean> {
    const place = e.fileOffsetMB * MiB;
    const present = e.state === PayloadState.FULLY_PRESENT || e.state === PayloadState.PARTIALLY_PRESENT;
    // UNMAPPED or UNDEFINED keeping its FileOffsetMB (ZERO and NOT_PRESENT never name a place).
    const claim = !present && place !== 0 && e.state !== PayloadState.ZERO && e.state !== PayloadState.NOT_PRESENT;
    if (state === PayloadState.UNMAPPED && (e.state === PayloadState.FULLY_PRESENT || claim)) {
      // The entry keeps naming its place: owned (recorded while there is room; named on disk either way).
      if (e.state !== state) await this.map.setEntry(block, { state, fileOffsetMB: e.fileOffsetMB });
      if (e.state === PayloadState.FULLY_PRESENT) this.free.add({ fileOffset: place, block, owned: true, durable: false });
      return true;
    }
    // The entry stops naming its place before the place is recorded free, so that no other
    // block can be given a place this one still reads from.
    if (present) {
      // Write-zeroes, or a partially present block whose place may hold sectors never written.
      if (!this.free.hasRoom(false)) return false;
      await this.map.setEntry(block, { state, fileOffsetMB: 0 });
      this.free.add({ fileOffset: place, block, owned: false, durable: false });
      return true;
    }
    // Write-zeroes of a claim: ZERO must not name the place. A recorded place stays recorded,
    // unowned; an unrecorded one is not this session's to reuse (not checked, or being reused).
    const r = claim ? this.free.of(block) : undefined;
    if (r && !this.free.unownedRoom()) return false;
    if (e.state !== state || e.fileOffsetMB !== 0) await this.map.setEntry(block, { state, fileOffsetMB: 0 });
    if (r) this.free.disown(r);
    return true;
  }

  /**
   * Write-zeroes of a whole block when the unowned record is full: zeros are written over its
   * place, which it keeps (a partially present block becomes fully present, all zeros).
   */
  private async zeroPlace(block: number, e: BatEntry, fast: boolean): Promise<void> {
    if (fast) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing block ${block} would write data`);
    await writeZeros(this.fileWrite, e.fileOffsetMB * MiB, this.map.blockExtent(block));
    if (e.state === PayloadState.PARTIALLY_PRESENT) await this.map.setEntry(block, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: e.fileOffsetMB });
  }

  /** Wait until a block being allocated has its BAT entry (or its allocation failed). */
  private async allocationSettled(block: number): Promise<void> {
    for (let a = this.allocating.get(block); a; a = this.allocating.get(block)) await a.done;
  }

  /**
   * Move blocks to other places in the file: payload blocks (FULLY_PRESENT or PARTIALLY_PRESENT)
   * and, on a differencing disk, sector bitmap blocks. The disk reads the same throughout, so
   * this is a metadata change (a new FileWriteGuid, the DataWriteGuid kept). Compact and resize
   * stand on it. Durable when it returns. Returns the moves made, with the places left; a block
   * with nothing to move (not present, say) is left out.
   *
   * Crash ordering, for each block: its bytes are copied to the new place; then its entry points
   * there in memory; one commit (payload flush, then the log entry with the changed BAT sectors,
   * shared by all the moves of the call while they fit in one) puts every change in the file.
   * Until that log entry is durable, the file's entries still point at the old places, which are
   * never written: a crash at any point reads as before the move. The old place of a payload
   * block is recorded free only after the commit (an unowned place no block takes back: reused
   * by later allocations, cut at close when it ends the file); a sector bitmap block's old place
   * (1 MiB) is not recorded: the caller decides what becomes of the places a move leaves.
   *
   * Destinations: 'end' is fresh space at the end of the file; a number is a free place this
   * writer has recorded as durable (`freePlaces`, `recordHoles`). Taking another block's claim
   * (an UNMAPPED block's kept place) drops the claim in the same log entry; a sector bitmap block
   * only takes a place no entry names.
   *
   * Concurrency: a payload block moves under its block lock (no write-zeroes, discard or
   * differencing write of the block meanwhile); writes into its place that were in flight finish
   * before the copy starts, and those that come during the move wait for it, then go to the new
   * place. Reads take no part: a read that looked the old place up before the entry changed
   * finds the map's generation changed when its I/O ends, and reads again (the old place may
   * hold another block's data by then). A sector bitmap block is copied and repointed under the
   * metadata lock (1 MiB), so no commit writes one of its pages to the old place after the copy
   * read it; pages changed since go to the new place at the next commit.
   */
  async moveBlocks(moves: readonly BlockMove[], opts: ProgressOptions = {}): Promise<MovedBlock[]> {
    this.throwBackgroundError();
    const seen = new Set<string>();
    for (const m of moves) {
      const limit = m.kind === 'payload' ? this.map.blocks : m.kind === 'bitmap' && this.bitmaps ? this.map.chunks : 0;
      const what = `${m.kind} block ${m.index}`;
      if (!Number.isSafeInteger(m.index) || m.index < 0 || m.index >= limit) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot move ${what}: the disk has no such block`);
      if (seen.has(`${m.kind} ${m.index}`) || (m.to !== 'end' && seen.has(`to ${m.to}`))) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${what} or its destination is named twice`);
      seen.add(`${m.kind} ${m.index}`);
      if (m.to === 'end') continue;
      if (!Number.isSafeInteger(m.to) || m.to % MiB !== 0) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot move ${what} to ${m.to}: a free place is a 1 MiB multiple`);
      }
      seen.add(`to ${m.to}`);
    }
    if (moves.length === 0) return [];
    await this.beginMetadataChange();
    return this.moveLock.run(async () => {
      const done: MovedBlock[] = [];
      for (const m of moves) {
        throwIfAborted(opts.signal, 'moving blocks');
        const r = m.kind === 'payload' ? await this.movePayload(m.index, m.to) : await this.moveBitmap(m.index, m.to);
        if (r) done.push(r);
        opts.onProgress?.(done.length, moves.length);
      }
      await this.commit(true);
      for (const r of done) if (r.kind === 'payload') this.free.add({ fileOffset: r.from, block: null, owned: false, durable: true });
      return done;
    });
  }

  /** The free places this writer may hand out now (durable), lowest first: destinations for `moveBlocks`. */
  async freePlaces(): Promise<number[]> {
    return this.metadataLock.run(async () => {
      if (this.scan === 'none') await this.scanForFreeSpace();
      return this.free.all().filter((b) => b.durable).map((b) => b.fileOffset);
    });
  }

  /**
   * Release whole payload blocks that hold data (compact): each becomes ZERO with no place, on
   * a differencing disk too (ZERO hides the parent; NOT_PRESENT would show it), and its place
   * is recorded free, reusable once the release is committed. A user-visible change (the disk
   * reads zeros there): a new DataWriteGuid. Blocks that hold no data are passed over. Stops,
   * changing nothing more, when the record of unowned space is full: returns how many of
   * `blocks` were dealt with, in order (commit, move and `trimEnd` make room for the rest).
   * Committed as the log fills; the caller flushes.
   */
  async releaseBlocks(blocks: readonly number[], opts: ProgressOptions = {}): Promise<number> {
    this.throwBackgroundError();
    if (this.layout.type === 'fixed') throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', 'a fixed disk keeps every block: nothing can be released');
    for (const b of blocks) {
      if (!Number.isSafeInteger(b) || b < 0 || b >= this.map.blocks) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot release payload block ${b}: the disk has no such block`);
    }
    if (blocks.length === 0) return 0;
    await this.beginChange();
    let done = 0;
    for (const block of blocks) {
      throwIfAborted(opts.signal, 'releasing blocks');
      const released = await this.blockLocks.run(block, async () => {
        await this.allocationSettled(block);
        const e = await this.map.entry(block);
        if (e.state !== PayloadState.FULLY_PRESENT && e.state !== PayloadState.PARTIALLY_PRESENT) return true;
        if (!this.free.hasRoom(false)) return false;
        await this.zeroBlock(block, PayloadState.ZERO, true);
        return true;
      });
      if (!released) break;
      done++;
      if (this.dirtyCount >= this.entriesPerCommit) await this.commit(false);
      opts.onProgress?.(done, blocks.length);
    }
    return done;
  }

  /**
   * Record as free every whole, 1 MiB-aligned payload-block-sized place below the end of the
   * file's objects that nothing names: no fixed object, no BAT entry (in memory, which a commit
   * first makes the file's), no place being handed out. Such space is left by a crash between a
   * release or a move and the cut that follows, or by other writers. Records while there is
   * room; returns how many were added (0 when allocations are in flight: nothing is then sure).
   */
  async recordHoles(): Promise<number> {
    this.throwBackgroundError();
    await this.commit(true);
    return this.metadataLock.run(async () => {
      if (this.scan === 'none') await this.scanForFreeSpace();
      if (this.dirtyCount > 0 || this.allocating.size > 0 || this.placing.size > 0) return 0;
      const units = Math.floor(this.fileEnd / MiB);
      const bs = this.layout.blockSize;
      // One byte per MiB of the file: 1 MiB of memory per TiB.
      const taken = new Uint8Array(units);
      const mark = (start: number, length: number): void => {
        taken.fill(1, Math.floor(start / MiB), Math.min(units, Math.ceil((start + length) / MiB)));
      };
      const fixed = fixedObjects(this.layout);
      for (const o of fixed.reserve ? [...fixed.objects, fixed.reserve] : fixed.objects) mark(o.start, o.end - o.start);
      for await (const p of this.map.places()) mark(p.fileOffset, p.length);
      for (const b of this.free.all()) mark(b.fileOffset, bs);
      const need = bs / MiB;
      let added = 0;
      for (let u = 0; u + need <= units; ) {
        const busy = taken.subarray(u, u + need).lastIndexOf(1);
        if (busy >= 0) {
          u += busy + 1;
          continue;
        }
        if (!this.free.add({ fileOffset: u * MiB, block: null, owned: false, durable: true })) break;
        added++;
        u += need;
      }
      return added;
    });
  }

  /**
   * Cut the file after its last object now, not only at close (compact, between rounds): free
   * places that end the file are released (claims dropped), everything is committed, the log is
   * emptied (replay refuses a file shorter than an entry relied on), and the file is cut at the
   * end of the last fixed object or named place, never below a region. Returns the file size.
   * Does not cut while allocations are in flight.
   */
  async trimEnd(): Promise<number> {
    this.throwBackgroundError();
    await this.metadataLock.run(async () => {
      if (this.scan === 'none') await this.scanForFreeSpace();
      for (const b of this.free.takeTrailing(this.fileEnd)) if (b.owned) await this.dropClaim(b);
    });
    await this.commit(true);
    return this.metadataLock.run(async () => {
      if (this.dirtyCount > 0 || this.allocating.size > 0 || this.placing.size > 0) return this.file.size;
      let end = fixedObjects(this.layout).end;
      for await (const p of this.map.places()) end = Math.max(end, p.fileOffset + p.length);
      end = Math.ceil(end / MiB) * MiB;
      await this.cutAfterEmptyingLog(end);
      this.flushedSize = Math.min(this.flushedSize, Math.floor(this.file.size / MiB) * MiB);
      this.fileEnd = Math.min(this.fileEnd, end);
      this.dirtyEnd = Math.min(this.dirtyEnd, end);
      for (const b of this.free.all()) if (b.fileOffset + this.layout.blockSize > end) this.free.remove(b);
      return this.file.size;
    });
  }

  /** One payload block's move (see moveBlocks), under its block lock. */
  private movePayload(block: number, to: 'end' | number): Promise<MovedBlock | null> {
    return this.blockLocks.run(block, async () => {
      await this.allocationSettled(block);
      let release = (): void => undefined;
      this.moving.set(block, new Promise<void>((r) => (release = r)));
      try {
        await this.inPlace.drain();
        const e = await this.map.entry(block);
        if (e.state !== PayloadState.FULLY_PRESENT && e.state !== PayloadState.PARTIALLY_PRESENT) return null;
        const from = e.fileOffsetMB * MiB;
        const place = await this.metadataLock.run(async (): Promise<Placement> => {
          if (this.scan === 'none') await this.scanForFreeSpace();
          if (to === 'end') return { fileOffset: await this.freshSpace(this.layout.blockSize), reused: null };
          const b = this.free.all().find((x) => x.fileOffset === to && x.durable);
          if (!b) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot move payload block ${block} to ${to}: not a free place`);
          this.free.remove(b);
          this.placing.add(b.fileOffset);
          return { fileOffset: b.fileOffset, reused: b };
        });
        try {
          await this.copyPlace(from, place.fileOffset, this.map.blockExtent(block));
        } catch (err) {
          this.unplace(place);
          throw err;
        }
        await this.pointAt(block, { state: e.state, fileOffsetMB: place.fileOffset / MiB }, place);
        this.map.moved();
        return { kind: 'payload', index: block, from, to: place.fileOffset };
      } finally {
        this.moving.delete(block);
        release();
      }
    });
  }

  /**
   * One sector bitmap block's move (see moveBlocks), under the metadata lock: to the end of the
   * file, or into the first 1 MiB of a free place no entry names (the rest of a larger place is
   * then named by nothing: a later `recordHoles` finds what of it is whole).
   */
  private moveBitmap(chunk: number, to: 'end' | number): Promise<MovedBlock | null> {
    return this.metadataLock.run(async () => {
      const e = await this.map.bitmapEntry(chunk);
      if (e.state !== BitmapState.PRESENT) return null;
      if (this.scan === 'none') await this.scanForFreeSpace();
      const from = e.fileOffsetMB * MiB;
      let taken: FreeBlock | null = null;
      if (to !== 'end') {
        taken = this.free.all().find((x) => x.fileOffset === to && x.durable && !x.owned) ?? null;
        if (!taken) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot move sector bitmap block ${chunk} to ${to}: not a free place that no entry names`);
        this.free.remove(taken);
      }
      const at = taken ? taken.fileOffset : await this.freshSpace(MiB);
      try {
        await this.copyPlace(from, at, MiB);
      } catch (err) {
        if (taken) this.free.add(taken);
        throw err;
      }
      await this.map.setBitmapEntry(chunk, { state: BitmapState.PRESENT, fileOffsetMB: at / MiB });
      this.map.moved();
      return { kind: 'bitmap', index: chunk, from, to: at };
    });
  }

  /** Copy `length` bytes of the file from `from` to `to`, 4 MiB at a time. */
  private async copyPlace(from: number, to: number, length: number): Promise<void> {
    const buf = new Uint8Array(Math.min(length, MOVE_CHUNK));
    for (let done = 0; done < length; done += buf.length) {
      const piece = buf.subarray(0, Math.min(buf.length, length - done));
      await readExact(this.file, from + done, piece, 'payload block');
      await this.file.write(to + done, piece);
    }
  }

  // ---- Layout changes: the virtual size and the BAT region (resize, src/ops/resize.ts) ----
  //
  // Resize changes what the open layout describes (the disk's size, the BAT region), which this
  // writer and its mapping were built from. So the writer takes part only as far as the old
  // layout stays true: it moves blocks, releases entries past a new end (which stay at their BAT
  // indices: an index depends on the block and the chunk ratio only), and carries the caller's
  // sectors through the log. Then `finishLayoutChange` ends the session: the image is reopened.

  /**
   * Keep [from, to) of the file for a structure the caller will place there: no allocation or
   * move lands in it (the end of the file is moved past it, the file grown), and no free place
   * recorded inside it is handed out. The caller moves the blocks out of it first (`blocksIn`).
   */
  async reserveFileRange(from: number, to: number): Promise<void> {
    this.throwBackgroundError();
    await this.metadataLock.run(async () => {
      if (this.scan === 'none') await this.scanForFreeSpace();
      for (const b of this.free.all()) if (b.fileOffset < to && b.fileOffset + this.layout.blockSize > from) this.free.remove(b);
      if (this.fileEnd < to) await this.freshSpace(to - this.fileEnd);
    });
  }

  /**
   * The payload blocks (present ones) and sector bitmap blocks whose places overlap [from, to),
   * as moves to the end of the file. A claim there (an UNMAPPED or UNDEFINED entry that kept its
   * place) is dropped now, in memory, so it no longer names the range after the next commit.
   */
  async blocksIn(from: number, to: number, opts: ProgressOptions = {}): Promise<BlockMove[]> {
    this.throwBackgroundError();
    await this.beginMetadataChange();
    const bs = this.layout.blockSize;
    const out: BlockMove[] = [];
    const overlaps = (at: number, len: number): boolean => at !== 0 && at < to && at + len > from;
    for (let b = 0; b < this.map.blocks; b++) {
      if (b % 4096 === 0) throwIfAborted(opts.signal, 'looking for blocks to move');
      const e = this.map.cachedEntry(b) ?? (await this.map.entry(b));
      if (!overlaps(e.fileOffsetMB * MiB, bs)) continue;
      if (e.state === PayloadState.FULLY_PRESENT || e.state === PayloadState.PARTIALLY_PRESENT) out.push({ kind: 'payload', index: b, to: 'end' });
      else {
        const r = this.free.of(b);
        if (r) this.free.remove(r);
        await this.map.setEntry(b, { state: e.state, fileOffsetMB: 0 });
      }
    }
    if (this.bitmaps) {
      for (let c = 0; c < this.map.chunks; c++) {
        const e = await this.map.bitmapEntry(c);
        if (e.state === BitmapState.PRESENT && overlaps(e.fileOffsetMB * MiB, MiB)) out.push({ kind: 'bitmap', index: c, to: 'end' });
      }
    }
    return out;
  }

  /**
   * Payload blocks from `first` on (past a new, smaller end of the disk) give up their places:
   * entries NOT_PRESENT with FileOffsetMB 0, committed as the log fills, the places recorded free
   * (while the record has room), and the sector bitmap entries of the chunks wholly past it
   * cleared too (their 1 MiB places are not recorded). The blocks read as zeros after: the
   * caller is cutting them off (a shrink changes the size next).
   */
  async releaseBlocksFrom(first: number, opts: ProgressOptions = {}): Promise<void> {
    this.throwBackgroundError();
    await this.beginChange();
    await Promise.all([...this.allocating.values()].map((a) => a.done));
    const clear = { state: PayloadState.NOT_PRESENT, fileOffsetMB: 0 };
    for (let b = Math.max(0, first); b < this.map.blocks; b++) {
      if (b % 4096 === 0) throwIfAborted(opts.signal, 'releasing blocks');
      const e = this.map.cachedEntry(b) ?? (await this.map.entry(b));
      if (e.state === PayloadState.NOT_PRESENT && e.fileOffsetMB === 0) continue;
      const present = e.state === PayloadState.FULLY_PRESENT || e.state === PayloadState.PARTIALLY_PRESENT;
      const r = this.free.of(b);
      if (r) this.free.remove(r);
      await this.map.setEntry(b, clear);
      if (present) this.free.add({ fileOffset: e.fileOffsetMB * MiB, block: null, owned: false, durable: false });
      if (this.dirtyCount >= this.entriesPerCommit) await this.commit(false);
    }
    if (this.bitmaps) {
      for (let c = Math.ceil(first / this.layout.geometry.chunkRatio); c < this.map.chunks; c++) {
        const e = await this.map.bitmapEntry(c);
        if (e.state === BitmapState.NOT_PRESENT && e.fileOffsetMB === 0) continue;
        await this.map.setBitmapEntry(c, clear);
        if (this.dirtyCount >= this.entriesPerCommit) await this.commit(false);
      }
    }
    await this.commit(true);
  }

  /** Where the last object the image names ends (fixed objects and every entry's place), after committing. */
  async objectsEnd(): Promise<number> {
    this.throwBackgroundError();
    await this.commit(true);
    return this.metadataLock.run(async () => (await scanFreeSpace(this.file, this.layout, 0, 0, () => true)).objectsEnd);
  }

  /**
   * Write zeros over [offset, offset + length) of the file, outside the log: for space no
   * structure names yet (a BAT region's growth, a new fixed block) or bytes no reader looks at
   * (the part of the last block past the disk's end). The caller vouches for that.
   */
  async zeroFileRange(offset: number, length: number): Promise<void> {
    this.throwBackgroundError();
    if (offset % 4096 !== 0 || length % 4096 !== 0 || offset < MiB) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot zero ${length} bytes at ${offset}: whole 4 KiB sectors after the header section only`);
    await this.metadataLock.run(async () => {
      if (this.file.size < offset + length) await this.file.truncate(offset + length);
      await writeZeros(this.fileWrite, offset, length);
    });
  }

  /**
   * Write `data` (whole 4 KiB sectors) at `offset` of the file, outside the log: into space no
   * structure names yet (a relocated BAT before the region table names it). The caller vouches.
   */
  async writeFileRange(offset: number, data: Uint8Array): Promise<void> {
    this.throwBackgroundError();
    if (offset % 4096 !== 0 || data.length % 4096 !== 0 || offset < MiB || offset + data.length > this.file.size) {
      throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot write ${data.length} bytes at ${offset}: whole 4 KiB sectors after the header section, inside the file`);
    }
    await this.metadataLock.run(() => this.fileWrite(offset, data));
  }

  /**
   * Fresh space of `bytes` (a 1 MiB multiple) at the end of the file, zeros written (not sparse):
   * a fixed disk's new blocks. Returns where it starts.
   */
  async appendZeros(bytes: number, opts: ProgressOptions = {}): Promise<number> {
    this.throwBackgroundError();
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % MiB !== 0) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `cannot append ${bytes} bytes: a 1 MiB multiple`);
    const at = await this.metadataLock.run(async () => {
      if (this.scan === 'none') await this.scanForFreeSpace();
      return this.freshSpace(bytes);
    });
    const buf = new Uint8Array(Math.min(bytes, MOVE_CHUNK));
    for (let done = 0; done < bytes; done += buf.length) {
      throwIfAborted(opts.signal, 'allocating blocks');
      await this.file.write(at + done, buf.subarray(0, Math.min(buf.length, bytes - done)));
      opts.onProgress?.(done + buf.length, bytes);
    }
    return at;
  }

  /**
   * Carry whole 4 KiB sectors through the log, one log entry per group, in order, after every
   * change made so far is committed: each group reaches the file all or nothing, and a group is
   * durable before the next is written. The first group starts with a header update: a new
   * DataWriteGuid too when `dataChange` (the disk reads differently after: its size). The
   * sectors may lie anywhere past the headers (region tables on) and outside the log (the log "MUST carry every
   * metadata update", [MS-VHDX] §2.3: BAT, metadata region, region tables alike); sectors inside
   * the BAT region must not be ones this writer holds changes for (the caller's changes are to
   * entries this layout does not index). Each group must fit one entry (`maxSectorsPerEntry`).
   */
  async logSectors(groups: readonly (readonly { fileOffset: number; data: Uint8Array }[])[], opts: { dataChange: boolean }): Promise<void> {
    this.throwBackgroundError();
    const logEnd = this.layout.log.logOffset + this.layout.log.logLength;
    for (const g of groups) {
      if (g.length > this.entriesPerCommit) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `${g.length} sectors do not fit one log entry (at most ${this.entriesPerCommit})`);
      for (const x of g) {
        const inLog = x.fileOffset < logEnd && x.fileOffset + 4096 > this.layout.log.logOffset;
        if (x.fileOffset % 4096 !== 0 || x.data.length !== 4096 || x.fileOffset < REGION_TABLE_OFFSETS[0] || inLog) {
          throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `a logged write is one 4 KiB sector past the headers (a region table or later) and outside the log (offset ${x.fileOffset}, ${x.data.length} bytes)`);
        }
      }
    }
    await (opts.dataChange ? this.beginChange() : this.beginMetadataChange());
    await this.commit(true);
    await this.metadataLock.run(async () => {
      for (const g of groups) {
        if (g.length === 0) continue;
        await this.file.flush();
        this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
        this.ring ??= new LogRing(this.file, this.layout.log.logOffset, this.layout.log.logLength, randomGuid());
        await this.ring.append(g.map((x) => ({ kind: 'data' as const, fileOffset: x.fileOffset, data: x.data })), this.flushedSize, Math.max(this.fileEnd, Math.ceil(this.file.size / MiB) * MiB));
        await this.file.flush();
        if (this.header.logGuid !== this.ring.logGuid) this.header = await updateHeaders(this.file, this.header, { logGuid: this.ring.logGuid });
        for (const x of g) await this.file.write(x.fileOffset, x.data);
        await this.file.flush();
      }
    });
  }

  /** Sectors one `logSectors` group may hold for this image. */
  get maxSectorsPerEntry(): number {
    return this.entriesPerCommit;
  }

  /**
   * End a session whose layout changed: commit, empty the log, cut the file to `cutTo` when
   * given (after the log is empty: every entry names the file size it relied on), and refuse
   * everything after (close then only lets go). The caller reopens the image.
   */
  async finishLayoutChange(cutTo: number | null): Promise<void> {
    this.throwBackgroundError();
    await this.commit(true);
    await this.metadataLock.run(async () => {
      if (this.header.logGuid !== NIL_GUID) this.header = await updateHeaders(this.file, this.header, { logGuid: NIL_GUID });
      this.ring = null;
      if (cutTo !== null && this.file.size > cutTo) {
        await this.file.truncate(cutTo);
        await this.file.flush();
      }
      this.retired = true;
    });
  }

  /** Start a commit without waiting when the changes pending would fill a log entry. */
  private maybeCommitInBackground(): void {
    if (this.dirtyCount < this.entriesPerCommit || this.backgroundCommit) return;
    this.backgroundCommit = this.commit(false)
      .catch((e: unknown) => {
        this.backgroundError ??= e;
      })
      .finally(() => {
        this.backgroundCommit = null;
      });
  }

  /** Refuse work after a failed background commit, or after the layout changed (finishLayoutChange). */
  private throwBackgroundError(): void {
    if (this.retired) throw new VhdxError('EINVAL', 'CLOSED', 'the image changed its layout (resize): reopen it');
    if (this.backgroundError) {
      const e = this.backgroundError;
      throw e instanceof VhdxError ? e : new VhdxError('EIO', 'IO_ERROR', 'a background commit failed', { cause: e });
    }
  }

  /**
   * BAT sectors a commit takes first, and sectors it holds back, so that each group of linked
   * sectors (a reused place's old owner and new one, and any sector linked to those) reaches
   * the log in one entry of at most `max` sectors.
   */
  private linkedSectors(max: number): { first: number[]; hold: Set<number> } {
    const first: number[] = [];
    const hold = new Set<number>();
    const root = new Map<number, number>();
    const find = (x: number): number => {
      for (let up = root.get(x)!; up !== x; up = root.get(x)!) x = up;
      return x;
    };
    for (const [a, b] of this.linked) {
      const pair = [this.map.batSectorOf(a), this.map.batSectorOf(b)];
      if (!pair.some((u) => this.bat.isDirty(u))) continue;
      for (const u of pair) if (!root.has(u)) root.set(u, u);
      const [ra, rb] = pair.map(find) as [number, number];
      if (ra !== rb) root.set(ra, rb);
    }
    const groups = new Map<number, number[]>();
    for (const u of root.keys()) {
      const r = find(u);
      const g = groups.get(r);
      if (g) g.push(u);
      else groups.set(r, [u]);
    }
    for (const g of groups.values()) {
      if (first.length + g.length <= max) first.push(...g);
      else for (const u of g) hold.add(u);
    }
    // A group larger than one entry cannot stay together: let it through rather than stall.
    if (first.length === 0) hold.clear();
    return { first, hold };
  }

  /**
   * Write the changed BAT sectors through the log: flush payload, log entry, flush, LogGuid (once),
   * sectors in place, flush; repeated while changes remain. With `flushAlways`, flush even when
   * there is nothing to commit (a plain flush()).
   */
  private commit(flushAlways: boolean): Promise<void> {
    return this.metadataLock.run(async () => {
      if (this.dirtyCount === 0) {
        if (flushAlways) await this.file.flush();
        this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
        this.free.markDurable();
        return;
      }
      while (this.dirtyCount > 0) {
        // BAT sectors, sector bitmap pages and other metadata sectors share the entry. Their
        // copies are taken before the payload flush, so every write they expose is flushed first.
        const links = this.linkedSectors(this.entriesPerCommit);
        const batch = this.bat.takeDirty(this.entriesPerCommit, links.first, links.hold);
        const room = this.entriesPerCommit - batch.sectors.length;
        const bitmapBatch = this.bitmaps?.takeDirty(room) ?? { sectors: [], ids: [] };
        const others = [...this.pendingSectors].slice(0, room - bitmapBatch.sectors.length);
        for (const [at] of others) this.pendingSectors.delete(at);
        let applied = false;
        try {
          await this.file.flush();
          this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
          this.ring ??= new LogRing(this.file, this.layout.log.logOffset, this.layout.log.logLength, randomGuid());
          const sectors = [...batch.sectors, ...bitmapBatch.sectors, ...others.map(([fileOffset, data]) => ({ fileOffset, data }))];
          const writes = sectors.map((s) => ({ kind: 'data' as const, fileOffset: s.fileOffset, data: s.data }));
          await this.ring.append(writes, this.flushedSize, this.fileEnd);
          await this.file.flush();
          if (this.header.logGuid !== this.ring.logGuid) {
            this.header = await updateHeaders(this.file, this.header, { logGuid: this.ring.logGuid });
          }
          for (const s of sectors) await this.file.write(s.fileOffset, s.data);
          await this.file.flush();
          applied = true;
          this.linked = this.linked.filter(([a, b]) => this.bat.isDirty(this.map.batSectorOf(a)) || this.bat.isDirty(this.map.batSectorOf(b)));
        } finally {
          this.bat.release(batch, applied);
          this.bitmaps?.release(bitmapBatch, applied);
          if (!applied) for (const [at, data] of others) if (!this.pendingSectors.has(at)) this.pendingSectors.set(at, data);
        }
      }
      // Nothing is dirty (checked just now, nothing awaited since): every release so far is in the file.
      this.free.markDurable();
    });
  }
}
