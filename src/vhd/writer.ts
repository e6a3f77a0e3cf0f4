/**
 * The write side of a dynamic or differencing VHD. VHD has no log, so crash safety is the order
 * of writes alone, with two flushes as barriers:
 *
 * 1. A new block goes at the end of the file, over the old footer's place (blocks are never
 *    placed anywhere else, so its space has never held anything but that footer: the parts of
 *    the block no write covers read as zeros). Its data and its sector bitmap are written, in any
 *    order; the BAT does not point at them yet.
 * 2. Writing into sectors of an allocated block whose bits are clear: the data first; the bits
 *    are set only in memory.
 * 3. A commit (flush, a FUA write, close, or many pending changes) writes the footer at the new
 *    end of the file, then flushes: from here the data, the new blocks' bitmaps and the footer
 *    are durable.
 * 4. Then it writes the changed bitmaps of existing blocks and the changed BAT sectors (whole
 *    512-byte sectors, which a disk writes atomically), and flushes again.
 *
 * So the BAT never points at a block whose bitmap or data might not be on the disk, and a bit is
 * never set for a sector whose data might not be: after a crash every sector reads as the last
 * flush left it or as a later write made it. What a crash can leave is space: a block written
 * but not yet in the BAT (leaked, at the end of the file), or the footer not yet at the new end
 * (the copy at offset 0 is still good). `repairVhd` fixes both; a writable open refuses until
 * then. The footer's contents never change here (nothing in it depends on the blocks), so the
 * copy at offset 0 is never rewritten; only its place at the end moves.
 *
 * Concurrency: a write into sectors whose bits are all set writes in place with no lock. A write
 * that allocates a block or sets bits runs under that block's lock (writes to one block wait for
 * each other, writes to other blocks do not). Choosing a new block's place is synchronous; commits
 * serialise on their own lock and do only metadata I/O.
 */
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from '../io/source.js';
import type { BlockDevice } from '../device/block-device.js';
import { KeyedMutex, Mutex } from '../driver/mutex.js';
import { SECTOR, UNALLOCATED, allBitsSet, setBits } from './bat.js';
import type { VhdLayout } from './layout.js';
import type { VhdBat, VhdBitmaps } from './tables.js';

/** Changed BAT sectors and bitmaps kept at most before a write commits them. */
const MAX_DIRTY = 4096;
const ZEROS = new Uint8Array(1024 * 1024);

export class VhdWriter {
  /** Where the next block goes; the footer's place after the next commit. */
  private fileEnd: number;
  /** Where the footer is in the file now. */
  private footerAt: number;
  /** The footer write of a commit in progress: a block placed there waits for it. */
  private footerWrite: { at: number; done: Promise<void> } | null = null;
  private readonly blockLocks = new KeyedMutex<number>();
  private readonly commitLock = new Mutex();
  private readonly blockSize: number;
  private readonly bitmapBytes: number;
  private readonly differencing: boolean;

  constructor(
    private readonly src: RandomAccessSource,
    private readonly layout: VhdLayout,
    private readonly bat: VhdBat,
    private readonly bitmaps: VhdBitmaps,
    private readonly parent: BlockDevice | null,
  ) {
    this.fileEnd = layout.endFooterOffset;
    this.footerAt = layout.endFooterOffset;
    this.blockSize = layout.dynamic!.blockSize;
    this.bitmapBytes = layout.dynamic!.bitmapBytes;
    this.differencing = layout.type === 'differencing';
  }

  /** Where blocks end (a BAT page read back is validated against it). */
  get blocksEnd(): number {
    return this.fileEnd;
  }

  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    await this.eachBlock(offset, data.length, (block, inBlock, pos, n) => this.writeInBlock(block, inBlock, data.subarray(pos, pos + n), false));
    if (fua) await this.flush();
    else await this.commitIfFull();
  }

  /** Make the range read as zeros: holes of a dynamic disk stay holes, everything else gets zeros written. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.eachBlock(offset, length, async (block, inBlock, _pos, n) => {
      if (!this.differencing && (this.bat.cached(block) ?? (await this.bat.entry(block))) === UNALLOCATED) return;
      for (let done = 0; done < n; done += ZEROS.length) {
        await this.writeInBlock(block, inBlock + done, ZEROS.subarray(0, Math.min(ZEROS.length, n - done)), true);
      }
    });
    await this.commitIfFull();
  }

  /** Make every completed write durable: the commit of the contract at the top. */
  flush(): Promise<void> {
    return this.commitLock.run(async () => {
      // Taken together, synchronously: every change here had its data written before now.
      const batBatch = this.bat.takeDirty();
      const bitmapBatch = this.bitmaps.takeDirty();
      const end = this.fileEnd;
      let footerDone: Promise<void> | null = null;
      if (end !== this.footerAt) {
        footerDone = this.src.write!(end, this.layout.footerBytes);
        this.footerWrite = { at: end, done: footerDone.catch(() => undefined) };
      }
      try {
        try {
          if (footerDone) await footerDone;
        } finally {
          this.footerWrite = null;
        }
        await this.src.flush!();
        this.footerAt = end;
        const sectors = [...bitmapBatch.sectors, ...batBatch.sectors];
        if (sectors.length > 0) {
          await Promise.all(sectors.map((s) => this.src.write!(s.fileOffset, s.data)));
          await this.src.flush!();
        }
      } catch (e) {
        this.bat.release(batBatch, false);
        this.bitmaps.release(bitmapBatch, false);
        throw e;
      }
      this.bat.release(batBatch, true);
      this.bitmaps.release(bitmapBatch, true);
    });
  }

  private async commitIfFull(): Promise<void> {
    if (this.bat.dirtyCount + this.bitmaps.dirtyCount >= MAX_DIRTY) await this.flush();
  }

  /** Call `fn` for each block's part of [offset, offset + length), in parallel. */
  private async eachBlock(offset: number, length: number, fn: (block: number, inBlock: number, pos: number, n: number) => Promise<void>): Promise<void> {
    const tasks: Promise<void>[] = [];
    for (let pos = 0; pos < length; ) {
      const vo = offset + pos;
      const block = Math.floor(vo / this.blockSize);
      const inBlock = vo - block * this.blockSize;
      const n = Math.min(this.blockSize - inBlock, length - pos);
      tasks.push(fn(block, inBlock, pos, n));
      pos += n;
    }
    await Promise.all(tasks);
  }

  /** A write inside one block: in place when every sector it touches is present, else under the block's lock. */
  private async writeInBlock(block: number, inBlock: number, data: Uint8Array, zeros: boolean): Promise<void> {
    const sector = this.bat.cached(block) ?? (await this.bat.entry(block));
    if (sector !== UNALLOCATED) {
      const bm = this.bitmaps.cached(block) ?? (await this.bitmaps.get(block));
      const first = Math.floor(inBlock / SECTOR);
      if (bm.full || allBitsSet(bm.bits, first, Math.ceil((inBlock + data.length) / SECTOR) - first)) {
        await this.src.write!(sector * SECTOR + this.bitmapBytes + inBlock, data);
        return;
      }
    }
    await this.blockLocks.run(block, () => this.writeWithBits(block, inBlock, data, zeros));
  }

  /**
   * Under the block's lock: allocate the block if it has no place, or complete the sectors whose
   * bits are clear, then write and set the bits (in memory; a commit writes them).
   */
  private async writeWithBits(block: number, inBlock: number, data: Uint8Array, zeros: boolean): Promise<void> {
    const sector = await this.bat.entry(block);
    const sectorsPerBlock = this.blockSize / SECTOR;
    const first = Math.floor(inBlock / SECTOR);
    const last = Math.ceil((inBlock + data.length) / SECTOR); // one past
    if (sector === UNALLOCATED) {
      const bits = new Uint8Array(this.bitmapBytes);
      let at = inBlock;
      let buf = data;
      let writeData = true;
      if (!this.differencing) {
        // Every sector present: the block's space is fresh, so what the write leaves reads as zeros.
        setBits(bits, 0, sectorsPerBlock, true);
      } else if (zeros && inBlock === 0 && data.length === this.blockSize) {
        setBits(bits, 0, sectorsPerBlock, true);
        writeData = false; // fresh space already reads as zeros
      } else {
        ({ at, buf } = await this.completeSectors(block, inBlock, data, null));
        setBits(bits, first, last - first, true);
      }
      const place = this.placeBlock();
      await this.waitForFooter(place);
      const dataAt = place + this.bitmapBytes;
      const writes = [this.src.write!(place, bits)];
      if (writeData) writes.push(this.src.write!(dataAt + at, buf));
      // The file must reach the block's end, so that its unwritten parts read as zeros (never
      // past the end of the file) until the footer follows it: its last sector, if nothing else.
      const tail = writeData ? Math.max(at + buf.length, this.blockSize - SECTOR) : this.blockSize - SECTOR;
      if (tail < this.blockSize) writes.push(this.src.write!(dataAt + tail, ZEROS.subarray(0, this.blockSize - tail)));
      await Promise.all(writes);
      await this.bitmaps.added(block, place, bits);
      await this.bat.set(block, place / SECTOR);
      return;
    }
    const bm = await this.bitmaps.get(block);
    if (allBitsSet(bm.bits, first, last - first)) {
      await this.src.write!(sector * SECTOR + this.bitmapBytes + inBlock, data);
      return;
    }
    const { at, buf } = await this.completeSectors(block, inBlock, data, bm.bits);
    await this.src.write!(sector * SECTOR + this.bitmapBytes + at, buf);
    await this.bitmaps.change(block, (bits) => setBits(bits, first, last - first, true));
  }

  /**
   * Widen a write to whole sectors where it cuts a sector whose bit is clear (or every cut sector,
   * when `bits` is null: a block not yet allocated): the rest of such a sector comes from what it
   * reads as now, the parent's data or zeros. Sectors whose bit is set are written as given.
   */
  private async completeSectors(block: number, inBlock: number, data: Uint8Array, bits: Uint8Array | null): Promise<{ at: number; buf: Uint8Array }> {
    const end = inBlock + data.length;
    const first = Math.floor(inBlock / SECTOR);
    const last = Math.ceil(end / SECTOR) - 1;
    const clear = (s: number): boolean => bits === null || ((bits[s >>> 3]! >>> (7 - (s & 7))) & 1) === 0;
    const headCut = inBlock % SECTOR !== 0 && clear(first);
    const tailCut = end % SECTOR !== 0 && clear(last);
    if (!headCut && !tailCut) return { at: inBlock, buf: data };
    const at = headCut ? first * SECTOR : inBlock;
    const stop = tailCut ? (last + 1) * SECTOR : end;
    const buf = new Uint8Array(stop - at);
    const blockStart = block * this.blockSize;
    const fill = async (s: number): Promise<void> => {
      const piece = buf.subarray(s * SECTOR - at, (s + 1) * SECTOR - at);
      if (this.differencing) await this.needParent().read(blockStart + s * SECTOR, piece);
      // A dynamic disk's clear sector reads as zeros: the buffer already is.
    };
    if (headCut) await fill(first);
    if (tailCut && (last !== first || !headCut)) await fill(last);
    buf.set(data, inBlock - at);
    return { at, buf };
  }

  /** Take the place of a new block at the end of the file (synchronous: no two blocks get one place). */
  private placeBlock(): number {
    const place = this.fileEnd;
    this.fileEnd += this.bitmapBytes + this.blockSize;
    return place;
  }

  /** A block placed where a commit is writing the footer waits for that write (the two must not race). */
  private async waitForFooter(place: number): Promise<void> {
    const w = this.footerWrite;
    if (w && w.at === place) await w.done;
  }

  private needParent(): BlockDevice {
    if (!this.parent) throw new VhdxError('EINVAL', 'NO_PARENT', 'writing part of a sector of a differencing VHD needs its parent, which was not opened');
    return this.parent;
  }
}
