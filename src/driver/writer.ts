/**
 * The write side of an image: allocation, payload writes, write-zeroes and discard, and the
 * metadata commit through the log.
 *
 * Ordering rules (crash safety):
 * - Headers: the first change of a session updates both headers (new FileWriteGuid and
 *   DataWriteGuid) before anything else reaches the file.
 * - A new block is placed at the 1 MiB-aligned end of the file, the file is extended to cover
 *   it, the payload is written, and only then is the block's BAT entry changed in memory.
 * - A commit flushes the payload, writes one log entry holding the changed BAT sectors, flushes,
 *   sets the header's LogGuid if it is not yet set (so a valid entry exists whenever LogGuid
 *   does), writes the sectors to their places and flushes. Many allocations share one commit.
 * - Close commits, then clears LogGuid with a header update.
 *
 * Concurrency: writes into allocated blocks take no lock. Reserving file space and commits
 * serialise on `metadataLock`; no payload I/O happens while it is held. Concurrent writes to one
 * unallocated block allocate it once: they share its reserved place and write in parallel, the
 * last to finish sets the BAT entry, and none returns before that (a write that returned must be
 * reachable by the next flush's commit).
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import { NIL_GUID, randomGuid } from '../codec/guid.js';
import { MiB } from '../format/constants.js';
import { PayloadState, payloadBatIndex } from '../format/bat.js';
import { readExact, writeZeros, type RandomAccessSource } from '../io/source.js';
import type { BatCache } from './bat-cache.js';
import { updateHeaders, type CurrentHeader } from './headers.js';
import { LogRing, maxDataWritesPerEntry } from './log-writer.js';
import { KeyedMutex, Mutex } from './mutex.js';
import type { Layout } from './open.js';
import type { SectorBitmaps } from './bitmap-cache.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import { BitmapState, bitmapBatIndex } from '../format/bat.js';

export interface WriteOptions {
  /** Durable when the call returns (forced unit access). */
  fua?: boolean;
}

export interface ZeroOptions {
  /** The range may be deallocated instead of written (it reads as zeros either way). */
  mayDiscard?: boolean;
  /** Fail with ENOTSUP rather than write zeros as data. */
  fast?: boolean;
}


/** A block being allocated: where it goes, how many writes into it are in flight, and when it is done. */
interface PendingBlock {
  fileOffset: Promise<number>;
  writers: number;
  /** Resolves when the block has its BAT entry (or its allocation failed) and left `allocating`. */
  done: Promise<void>;
  finish: () => void;
  /** Why recording the block failed, for the writers that waited on it. */
  error?: unknown;
}

export interface WriterOptions {
  /** A differencing disk's sector bitmaps (null otherwise). */
  bitmaps?: SectorBitmaps | null;
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

export class Writer {
  private readonly metadataLock = new Mutex();
  /** Differencing disks: writes into a block that is not FULLY_PRESENT run one at a time. */
  private readonly blockLocks = new KeyedMutex<number>();
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
  private ring: LogRing | null = null;
  /** Where the next block goes: the 1 MiB-aligned end of the file. */
  private fileEnd: number;
  /** The file's size at the last flush. */
  private flushedSize: number;
  private readonly entriesPerCommit: number;
  private backgroundCommit: Promise<void> | null = null;
  private backgroundError: unknown = null;

  constructor(
    private readonly file: RandomAccessSource,
    private readonly layout: Layout,
    private readonly bat: BatCache,
    opts: WriterOptions = {},
  ) {
    this.bitmaps = opts.bitmaps ?? null;
    this.parent = opts.parent ?? null;
    this.header = layout.current;
    this.fileEnd = Math.ceil(file.size / MiB) * MiB;
    this.flushedSize = Math.floor(file.size / MiB) * MiB;
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

  /** Commit, then mark the log empty. The file stays open (the caller closes it). */
  async close(): Promise<void> {
    if (this.backgroundCommit) await this.backgroundCommit.catch(() => undefined);
    await this.commit(true);
    this.throwBackgroundError();
    await this.metadataLock.run(async () => {
      if (this.header.logGuid !== NIL_GUID) this.header = await updateHeaders(this.file, this.header, { logGuid: NIL_GUID });
    });
  }

  /**
   * First change of user-visible data in the session: a new DataWriteGuid, and a new
   * FileWriteGuid unless a metadata change already gave one, in both headers.
   */
  private beginChange(): Promise<void> {
    this.dataSession ??= this.metadataLock.run(async () => {
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
    // Every entry is valid before the headers change: the loop below reads them all.
    await this.bat.validateEntries(0, this.layout.batEntries - 1);
    await (opts.contentUnchanged === true ? this.beginMetadataChange() : this.beginChange());
    await Promise.all([...this.allocating.values()].map((a) => a.done));
    const total = this.layout.batEntries;
    for (let i = 0; i < total; i++) {
      if (i % 4096 === 0) {
        throwIfAborted(opts.signal, 'clearing the blocks');
        opts.onProgress?.(i, total);
      }
      const e = this.bat.cached(i) ?? (await this.bat.entry(i));
      if (e.state !== PayloadState.NOT_PRESENT || e.fileOffsetMB !== 0) await this.bat.set(i, { state: PayloadState.NOT_PRESENT, fileOffsetMB: 0 });
      if (this.dirtyCount >= this.entriesPerCommit) await this.commit(false);
    }
    await this.commit(true);
    opts.onProgress?.(total, total);
    await this.metadataLock.run(async () => {
      const l = this.layout;
      const end = Math.max(l.log.logOffset + l.log.logLength, ...l.regions.map((r) => r.fileOffset + r.length));
      if (this.file.size > end) {
        // Every log entry names the file size it relied on (FlushedFileOffset), and replay refuses
        // a file shorter than that as truncated. The commit above put everything in place, so
        // empty the log (LogGuid cleared, a fresh ring for the next commit) before cutting.
        if (this.header.logGuid !== NIL_GUID) this.header = await updateHeaders(this.file, this.header, { logGuid: NIL_GUID });
        this.ring = null;
        await this.file.truncate!(end);
        await this.file.flush!();
      }
      this.fileEnd = Math.ceil(this.file.size / MiB) * MiB;
      this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
    });
  }

  /** First change of the session that leaves the disk's data alone (a parent locator): a new FileWriteGuid. */
  private beginMetadataChange(): Promise<void> {
    this.fileSession ??= this.metadataLock.run(async () => {
      if (this.fileWriteGuidChanged) return;
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
  private async writeDifferencing(blockIndex: number, inBlock: number, data: Uint8Array, bitmaps: SectorBitmaps): Promise<void> {
    const g = this.layout.geometry;
    const batIndex = payloadBatIndex(g, blockIndex);
    const e = await this.bat.entry(batIndex);
    if (e.state === PayloadState.FULLY_PRESENT) {
      await this.file.write!(e.fileOffsetMB * MiB + inBlock, data);
      return;
    }
    const bs = this.layout.blockSize;
    const blockStart = blockIndex * bs;
    const blockLen = Math.min(bs, this.layout.virtualSize - blockStart);
    const partial = e.state === PayloadState.PARTIALLY_PRESENT;
    const showsParent = partial || e.state === PayloadState.NOT_PRESENT;
    if (!showsParent || (inBlock === 0 && data.length === blockLen)) {
      const at = partial ? e.fileOffsetMB * MiB : await this.reserveBlock();
      await this.file.write!(at + inBlock, data);
      await this.bat.set(batIndex, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: at / MiB });
      return;
    }
    const lss = this.layout.logicalSectorSize;
    const alignedStart = Math.floor(inBlock / lss) * lss;
    const alignedEnd = Math.min(Math.ceil((inBlock + data.length) / lss) * lss, blockLen);
    const at = partial ? e.fileOffsetMB * MiB : await this.reserveBlock();
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
        else await this.needParent().read(blockStart + s, sector);
      }
      buf.set(data, inBlock - alignedStart);
    }
    await this.file.write!(at + alignedStart, buf);
    await this.ensureBitmapBlock(Math.floor(blockIndex / g.chunkRatio));
    const blockSector = blockStart / lss;
    // A block allocated now may have bits left over from an earlier allocation: clear them first.
    if (!partial) await bitmaps.set(blockSector, blockLen / lss, false);
    await bitmaps.set((blockStart + alignedStart) / lss, (alignedEnd - alignedStart) / lss, true);
    if (await bitmaps.allSet(blockSector, blockLen / lss)) {
      await this.bat.set(batIndex, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: at / MiB });
    } else if (!partial) {
      await this.bat.set(batIndex, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: at / MiB });
    }
  }

  private needParent(): BlockDevice {
    if (!this.parent) throw new VhdxError('EINVAL', 'NO_PARENT', 'writing part of a sector of a differencing image needs its parent, which was not opened');
    return this.parent;
  }

  /** Give chunk `chunk` its 1 MiB sector bitmap block (zeros: every sector from the parent) if it has none. */
  private async ensureBitmapBlock(chunk: number): Promise<void> {
    const index = bitmapBatIndex(this.layout.geometry, chunk);
    if ((this.bat.cached(index) ?? (await this.bat.entry(index))).state === BitmapState.PRESENT) return;
    await this.metadataLock.run(async () => {
      if ((await this.bat.entry(index)).state === BitmapState.PRESENT) return;
      const at = this.fileEnd;
      this.fileEnd += MiB;
      if (this.file.size < this.fileEnd) await this.file.truncate!(this.fileEnd);
      await this.bat.set(index, { state: BitmapState.PRESENT, fileOffsetMB: at / MiB });
    });
  }

  private async writeInBlock(blockIndex: number, inBlock: number, data: Uint8Array): Promise<void> {
    const batIndex = payloadBatIndex(this.layout.geometry, blockIndex);
    const e = this.bat.cached(batIndex) ?? (await this.bat.entry(batIndex));
    if (e.state === PayloadState.FULLY_PRESENT) {
      await this.file.write!(e.fileOffsetMB * MiB + inBlock, data);
      return;
    }
    if (this.bitmaps) return this.blockLocks.run(blockIndex, () => this.writeDifferencing(blockIndex, inBlock, data, this.bitmaps!));
    // Join the block's allocation, or start it: nothing awaits between this lookup and the set.
    let alloc = this.allocating.get(blockIndex);
    if (!alloc) {
      let finish = (): void => undefined;
      const done = new Promise<void>((r) => (finish = r));
      alloc = { fileOffset: this.reserveBlock(), writers: 0, done, finish };
      this.allocating.set(blockIndex, alloc);
    }
    alloc.writers++;
    try {
      await this.file.write!((await alloc.fileOffset) + inBlock, data);
    } finally {
      // The last writer points the BAT at the block; the others return only once it has, so a
      // write that completed is always reachable by the next flush's commit.
      if (--alloc.writers === 0) await this.settle(blockIndex, batIndex, alloc);
      else await alloc.done;
    }
    if (alloc.error !== undefined) throw alloc.error;
  }

  /** Reserve a block at the end of the file and extend the file over it. */
  private reserveBlock(): Promise<number> {
    return this.metadataLock.run(async () => {
      const at = this.fileEnd;
      this.fileEnd += this.layout.blockSize;
      if (this.file.size < this.fileEnd) await this.file.truncate!(this.fileEnd);
      return at;
    });
  }

  /**
   * The last writer into a new block points the BAT at it, after every write into the block has
   * finished (data before the BAT entry that points at it). The rest of the block is fresh file
   * space and reads as zeros, which is what a NOT_PRESENT, ZERO or UNMAPPED block read as before.
   * Writers that join while this runs write to the same place and settle again (idempotent).
   */
  private async settle(blockIndex: number, batIndex: number, alloc: PendingBlock): Promise<void> {
    try {
      const fileOffset = await alloc.fileOffset;
      await this.bat.set(batIndex, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: fileOffset / MiB });
    } catch (e) {
      alloc.error = e;
      throw e;
    } finally {
      if (alloc.writers === 0 && this.allocating.get(blockIndex) === alloc) {
        this.allocating.delete(blockIndex);
        alloc.finish();
      }
    }
  }


  /**
   * Zero [offset, offset + length): whole blocks of a dynamic disk change state (`state`) without
   * touching data; the rest gets zeros written where a block is allocated. Fixed disks keep every
   * block allocated, so their blocks get zeros written.
   */
  private async zeroRange(offset: number, length: number, state: number, fast: boolean): Promise<void> {
    this.throwBackgroundError();
    if (length === 0) return;
    if (fast) await this.refuseDataZeroing(offset, length);
    await this.beginChange();
    const bs = this.layout.blockSize;
    const size = this.layout.virtualSize;
    const fixed = this.layout.leaveBlocksAllocated;
    if (this.bitmaps) {
      await this.zeroDifferencing(offset, length, state, fast, this.bitmaps);
      this.maybeCommitInBackground();
      return;
    }
    for (let pos = offset; pos < offset + length; ) {
      const blockIndex = Math.floor(pos / bs);
      const blockStart = blockIndex * bs;
      const blockEnd = Math.min(blockStart + bs, size);
      const end = Math.min(offset + length, blockEnd);
      const batIndex = payloadBatIndex(this.layout.geometry, blockIndex);
      await this.allocationSettled(blockIndex);
      const e = this.bat.cached(batIndex) ?? (await this.bat.entry(batIndex));
      const whole = pos === blockStart && end === blockEnd;
      if (whole && !fixed) {
        if (e.state !== state) await this.bat.set(batIndex, { state, fileOffsetMB: 0 });
      } else if (e.state === PayloadState.FULLY_PRESENT) {
        if (fast) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing ${end - pos} bytes at ${pos} would write data`);
        const base = e.fileOffsetMB * MiB - blockStart;
        await writeZeros(this.file.write!.bind(this.file), base + pos, end - pos);
      }
      pos = end;
    }
    this.maybeCommitInBackground();
  }

  /**
   * A fast zero fails before anything changes when zeroing [offset, offset + length) would write
   * zeros as data: into any FULLY_PRESENT block of a fixed disk, or into a block the range covers
   * only in part that holds data (FULLY_PRESENT) or shows its parent's (differencing disks).
   */
  private async refuseDataZeroing(offset: number, length: number): Promise<void> {
    const bs = this.layout.blockSize;
    const end = offset + length;
    const fixed = this.layout.leaveBlocksAllocated && !this.bitmaps;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    // Whole blocks of other disks only change state: only the two end blocks can need data.
    for (let b = first; b <= last; b = fixed || b === last ? b + 1 : last) {
      const whole = offset <= b * bs && end >= Math.min((b + 1) * bs, this.layout.virtualSize);
      if (whole && !fixed) continue;
      const e = await this.bat.entry(payloadBatIndex(this.layout.geometry, b));
      const showsParent = this.bitmaps !== null && (e.state === PayloadState.NOT_PRESENT || e.state === PayloadState.PARTIALLY_PRESENT);
      if (e.state === PayloadState.FULLY_PRESENT || showsParent) {
        throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing ${length} bytes at ${offset} would write data into block ${b}`);
      }
    }
  }

  /**
   * Zero a range of a differencing disk, block by block under each block's lock. Whole blocks
   * take `state` (ZERO or UNMAPPED: both hide the parent). Elsewhere the range must stop showing
   * the parent, so zeros are written as data into FULLY_PRESENT blocks and, sector by sector,
   * into blocks that show the parent; blocks that already read as zeros are left alone.
   */
  private async zeroDifferencing(offset: number, length: number, state: number, fast: boolean, bitmaps: SectorBitmaps): Promise<void> {
    const bs = this.layout.blockSize;
    const size = this.layout.virtualSize;
    for (let pos = offset; pos < offset + length; ) {
      const blockIndex = Math.floor(pos / bs);
      const blockStart = blockIndex * bs;
      const blockEnd = Math.min(blockStart + bs, size);
      const end = Math.min(offset + length, blockEnd);
      const from = pos;
      await this.blockLocks.run(blockIndex, async () => {
        const batIndex = payloadBatIndex(this.layout.geometry, blockIndex);
        const e = await this.bat.entry(batIndex);
        if (from === blockStart && end === blockEnd) {
          if (e.state === PayloadState.PARTIALLY_PRESENT) {
            // Bits of a block that is not PARTIALLY_PRESENT mean nothing, but readers such as
            // libvhdi read them anyway: leave none behind.
            const lss = this.layout.logicalSectorSize;
            await bitmaps.set(blockStart / lss, (blockEnd - blockStart) / lss, false);
          }
          if (e.state !== state) await this.bat.set(batIndex, { state, fileOffsetMB: 0 });
          return;
        }
        const showsParent = e.state === PayloadState.NOT_PRESENT || e.state === PayloadState.PARTIALLY_PRESENT;
        if (e.state !== PayloadState.FULLY_PRESENT && !showsParent) return;
        if (fast) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `zeroing ${end - from} bytes at ${from} would write data`);
        if (e.state === PayloadState.FULLY_PRESENT) {
          await writeZeros(this.file.write!.bind(this.file), e.fileOffsetMB * MiB + from - blockStart, end - from);
          return;
        }
        const zeros = new Uint8Array(Math.min(ZERO_CHUNK, end - from));
        for (let p = from; p < end; p += zeros.length) {
          const n = Math.min(zeros.length, end - p);
          await this.writeDifferencing(blockIndex, p - blockStart, zeros.subarray(0, n), bitmaps);
        }
      });
      pos = end;
    }
  }

  /** Wait until a block being allocated has its BAT entry (or its allocation failed). */
  private async allocationSettled(blockIndex: number): Promise<void> {
    for (let a = this.allocating.get(blockIndex); a; a = this.allocating.get(blockIndex)) await a.done;
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

  private throwBackgroundError(): void {
    if (this.backgroundError) {
      const e = this.backgroundError;
      throw e instanceof VhdxError ? e : new VhdxError('EIO', 'IO_ERROR', 'a background commit failed', { cause: e });
    }
  }

  /**
   * Write the changed BAT sectors through the log: flush payload, log entry, flush, LogGuid (once),
   * sectors in place, flush; repeated while changes remain. With `flushAlways`, flush even when
   * there is nothing to commit (a plain flush()).
   */
  private commit(flushAlways: boolean): Promise<void> {
    return this.metadataLock.run(async () => {
      if (this.dirtyCount === 0) {
        if (flushAlways) await this.file.flush!();
        this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
        return;
      }
      while (this.dirtyCount > 0) {
        // BAT sectors, sector bitmap pages and other metadata sectors share the entry. Their
        // copies are taken before the payload flush, so every write they expose is flushed first.
        const batch = this.bat.takeDirty(this.entriesPerCommit);
        const room = this.entriesPerCommit - batch.sectors.length;
        const bitmapBatch = this.bitmaps?.takeDirty(room) ?? { sectors: [], ids: [] };
        const others = [...this.pendingSectors].slice(0, room - bitmapBatch.sectors.length);
        for (const [at] of others) this.pendingSectors.delete(at);
        let applied = false;
        try {
          await this.file.flush!();
          this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
          this.ring ??= new LogRing(this.file, this.layout.log.logOffset, this.layout.log.logLength, randomGuid());
          const sectors = [...batch.sectors, ...bitmapBatch.sectors, ...others.map(([fileOffset, data]) => ({ fileOffset, data }))];
          const writes = sectors.map((s) => ({ kind: 'data' as const, fileOffset: s.fileOffset, data: s.data }));
          await this.ring.append(writes, this.flushedSize, this.fileEnd);
          await this.file.flush!();
          if (this.header.logGuid !== this.ring.logGuid) {
            this.header = await updateHeaders(this.file, this.header, { logGuid: this.ring.logGuid });
          }
          for (const s of sectors) await this.file.write!(s.fileOffset, s.data);
          await this.file.flush!();
          applied = true;
        } finally {
          this.bat.release(batch, applied);
          this.bitmaps?.release(bitmapBatch, applied);
          if (!applied) for (const [at, data] of others) if (!this.pendingSectors.has(at)) this.pendingSectors.set(at, data);
        }
      }
    });
  }
}
