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
import { VhdxError } from '../errors.js';
import { NIL_GUID, randomGuid } from '../codec/guid.js';
import { MiB } from '../format/constants.js';
import { PayloadState, payloadBatIndex } from '../format/bat.js';
import { writeZeros, type RandomAccessSource } from '../io/source.js';
import type { BatCache } from './bat-cache.js';
import { updateHeaders, type CurrentHeader } from './headers.js';
import { LogRing, maxDataWritesPerEntry } from './log-writer.js';
import { Mutex } from './mutex.js';
import type { Layout } from './open.js';

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

export class Writer {
  private readonly metadataLock = new Mutex();
  private readonly allocating = new Map<number, PendingBlock>();
  private header: CurrentHeader;
  private sessionStarted: Promise<void> | null = null;
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
  ) {
    this.header = layout.current;
    this.fileEnd = Math.ceil(file.size / MiB) * MiB;
    this.flushedSize = Math.floor(file.size / MiB) * MiB;
    // An entry takes at most half the log, so that the next one never overwrites it: it must stay
    // replayable until the next is durable (see LogRing).
    this.entriesPerCommit = maxDataWritesPerEntry(layout.log.logLength / 2);
    if (this.entriesPerCommit < 1) {
      throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `a log of ${layout.log.logLength} bytes cannot hold a single entry: the image cannot be written`);
    }
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

  /** First change of the session: new FileWriteGuid and DataWriteGuid in both headers. */
  private beginChange(): Promise<void> {
    this.sessionStarted ??= this.metadataLock.run(async () => {
      this.header = await updateHeaders(this.file, this.header, { fileWriteGuid: randomGuid(), dataWriteGuid: randomGuid() });
    });
    return this.sessionStarted;
  }

  private async writeInBlock(blockIndex: number, inBlock: number, data: Uint8Array): Promise<void> {
    const batIndex = payloadBatIndex(this.layout.geometry, blockIndex);
    const e = this.bat.cached(batIndex) ?? (await this.bat.entry(batIndex));
    if (e.state === PayloadState.FULLY_PRESENT) {
      await this.file.write!(e.fileOffsetMB * MiB + inBlock, data);
      return;
    }
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
    await this.beginChange();
    const bs = this.layout.blockSize;
    const size = this.layout.virtualSize;
    const fixed = this.layout.leaveBlocksAllocated;
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

  /** Wait until a block being allocated has its BAT entry (or its allocation failed). */
  private async allocationSettled(blockIndex: number): Promise<void> {
    for (let a = this.allocating.get(blockIndex); a; a = this.allocating.get(blockIndex)) await a.done;
  }

  /** Start a commit without waiting when the changes pending would fill a log entry. */
  private maybeCommitInBackground(): void {
    if (this.bat.dirtyCount < this.entriesPerCommit || this.backgroundCommit) return;
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
      if (this.bat.dirtyCount === 0) {
        if (flushAlways) await this.file.flush!();
        this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
        return;
      }
      while (this.bat.dirtyCount > 0) {
        const batch = this.bat.takeDirty(this.entriesPerCommit);
        let applied = false;
        try {
          await this.file.flush!();
          this.flushedSize = Math.floor(this.file.size / MiB) * MiB;
          this.ring ??= new LogRing(this.file, this.layout.log.logOffset, this.layout.log.logLength, randomGuid());
          const writes = batch.sectors.map((s) => ({ kind: 'data' as const, fileOffset: s.fileOffset, data: s.data }));
          await this.ring.append(writes, this.flushedSize, this.fileEnd);
          await this.file.flush!();
          if (this.header.logGuid !== this.ring.logGuid) {
            this.header = await updateHeaders(this.file, this.header, { logGuid: this.ring.logGuid });
          }
          for (const s of batch.sectors) await this.file.write!(s.fileOffset, s.data);
          await this.file.flush!();
          applied = true;
        } finally {
          this.bat.release(batch, applied);
        }
      }
    });
  }
}
