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
/** Bytes of the disk one bitmap byte covers: what a write completes around its clear sectors. */
const UNIT = 8 * SECTOR;

/** Writes (at offsets in the block's data) and the runs of sectors whose bits they make set. */
interface UnitPlan {
  writes: { at: number; data: Uint8Array }[];
  set: [number, number][];
}

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
    let bits: Uint8Array | null = null;
    if (sector !== UNALLOCATED) {
      bits = (await this.bitmaps.get(block)).bits;
      const first = Math.floor(inBlock / SECTOR);
      if (allBitsSet(bits, first, Math.ceil((inBlock + data.length) / SECTOR) - first)) {
        await this.src.write!(sector * SECTOR + this.bitmapBytes + inBlock, data);
        return;
      }
    }
    let plan: UnitPlan;
    if (sector === UNALLOCATED && !this.differencing) {
      // Every sector present: the block's space is fresh, so what the write leaves reads as zeros.
      plan = { writes: [{ at: inBlock, data }], set: [[0, sectorsPerBlock]] };
    } else if (sector === UNALLOCATED && zeros && inBlock === 0 && data.length === this.blockSize) {
      plan = { writes: [], set: [[0, sectorsPerBlock]] }; // fresh space already reads as zeros
    } else {
      plan = await this.completeUnits(block, inBlock, data, bits);
    }
    if (sector !== UNALLOCATED) {
      const dataAt = sector * SECTOR + this.bitmapBytes;
      await Promise.all(plan.writes.map((w) => this.src.write!(dataAt + w.at, w.data)));
      await this.bitmaps.change(block, (b) => plan.set.forEach(([first, count]) => setBits(b, first, count, true)));
      return;
    }
    const newBits = new Uint8Array(this.bitmapBytes);
    for (const [first, count] of plan.set) setBits(newBits, first, count, true);
    const place = this.placeBlock();
    await this.waitForFooter(place);
    const dataAt = place + this.bitmapBytes;
    const writes = [this.src.write!(place, newBits), ...plan.writes.map((w) => this.src.write!(dataAt + w.at, w.data))];
    // The file must reach the block's end, so that its unwritten parts read as zeros (never past
    // the end of the file) until the footer follows it: its last sector, if no write reaches it.
    const reach = Math.max(0, ...plan.writes.map((w) => w.at + w.data.length));
    const tail = Math.max(reach, this.blockSize - SECTOR);
    if (tail < this.blockSize) writes.push(this.src.write!(dataAt + tail, ZEROS.subarray(0, this.blockSize - tail)));
    await Promise.all(writes);
    await this.bitmaps.added(block, place, newBits);
    await this.bat.set(block, place / SECTOR);
  }

  /**
   * What to write for a write into sectors some of whose bits are clear (`bits` null: a block not
   * yet allocated, all clear). Every clear sector of the 4 KiB units (eight sectors: one bitmap
   * byte) the write touches is filled: the write's bytes where it covers them, what the sector
   * reads as now (the parent's data, or zeros) elsewhere; and its bit is set. Sectors whose bit
   * is already set get only the write's own bytes (never a read-modify-write, which could undo a
   * concurrent write into them). So no bitmap byte is left part set by this writer: libvhdi
   * (20210425) reads the clear sectors after a set one in such a byte as zeros, not the parent's.
   */
  private async completeUnits(block: number, inBlock: number, data: Uint8Array, bits: Uint8Array | null): Promise<UnitPlan> {
    const end = inBlock + data.length;
    const blockLen = Math.min(this.blockSize, this.layout.size - block * this.blockSize);
    const u0 = Math.floor(inBlock / UNIT) * UNIT;
    const u1 = Math.min(Math.ceil(end / UNIT) * UNIT, blockLen);
    // The units' bytes: what they read as now around the write, the write in the middle.
    const buf = new Uint8Array(u1 - u0);
    if (this.differencing) {
      const blockStart = block * this.blockSize;
      const parent = this.needParent();
      await Promise.all([
        inBlock > u0 ? parent.read(blockStart + u0, buf.subarray(0, inBlock - u0)) : undefined,
        u1 > end ? parent.read(blockStart + end, buf.subarray(end - u0)) : undefined,
      ]);
    }
    buf.set(data, inBlock - u0);
    const clear = (s: number): boolean => bits === null || ((bits[s >>> 3]! >>> (7 - (s & 7))) & 1) === 0;
    // Byte ranges to write, in order and merged: a clear sector whole, a set one only where the write covers it.
    const ranges: [number, number][] = [];
    const set: [number, number][] = [];
    for (let s = u0 / SECTOR; s < u1 / SECTOR; s++) {
      let from = s * SECTOR;
      let to = from + SECTOR;
      if (clear(s)) {
        const last = set[set.length - 1];
        if (last && last[0] + last[1] === s) last[1]++;
        else set.push([s, 1]);
      } else {
        from = Math.max(from, inBlock);
        to = Math.min(to, end);
        if (to <= from) continue;
      }
      const last = ranges[ranges.length - 1];
      if (last && last[1] === from) last[1] = to;
      else ranges.push([from, to]);
    }
    return { writes: ranges.map(([from, to]) => ({ at: from, data: buf.subarray(from - u0, to - u0) })), set };
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
