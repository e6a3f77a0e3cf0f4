/**
 * What compacting an image could give back, measured from the device's own allocation (block
 * status) and the disk's used map: allocation units that hold data no filesystem uses, and,
 * when asked to read them, units that filesystems use but that hold only zeros. Works on any
 * block device that reports extents; allocation units are the image's blocks.
 */
import type { BlockDevice, Extent, ProgressOptions } from '../device/block-device.js';
import { isZero } from '../codec/bytes.js';
import { throwIfAborted, VhdxError } from '../errors.js';
import type { Run } from './filesystem.js';

/** Bytes of a unit read at a time when looking for zeros. */
const ZERO_PIECE = 256 * 1024;
/** Block status is asked for this much of the disk at a time. */
const STATUS_WINDOW = 1024 * 1024 * 1024;

/** Options of {@link reclaimable} and {@link reclaimableUnits}. */
export interface ReclaimOptions extends ProgressOptions {
  /** The allocation unit (a VHDX block size): whole units are what an image gives back. */
  blockSize: number;
  /** The disk's used runs, ascending (from usedRuns). */
  used: AsyncIterable<Run>;
  /** Read the allocated units that filesystems use and count those that are all zeros. */
  scanZeros: boolean;
}

/** What {@link reclaimable} measured, in bytes. */
export interface Reclaimable {
  /** Bytes of allocated units that no filesystem uses (what a filesystem-aware compact frees). */
  unusedBytes: number;
  /** Bytes of allocated units that are used but read as zeros; null when not scanned. */
  zeroBytes: number | null;
  /** Bytes of allocated units in all (this image's own data, not a parent's). */
  allocatedBytes: number;
}

/** Allocated ranges of this image (data it stores itself), ascending, from block status. */
async function* allocatedExtents(dev: BlockDevice, opts: ProgressOptions): AsyncGenerator<Extent> {
  for (let w = 0; w < dev.size; ) {
    throwIfAborted(opts.signal, 'reclaimable scan');
    const list = await dev.blockStatus(w, Math.min(STATUS_WINDOW, dev.size - w));
    let next = w + Math.min(STATUS_WINDOW, dev.size - w);
    for (const e of list) {
      const s = Math.max(e.offset, w);
      const end = e.offset + e.length;
      if (e.type === 'data' && (e.depth ?? 0) === 0 && end > s) yield { ...e, offset: s, length: end - s };
      next = Math.max(next, end);
    }
    w = next;
    opts.onProgress?.(Math.min(w, dev.size), dev.size);
  }
}

/** One allocated unit of the device and what a compact may do with it. */
export interface UnitVerdict {
  /** The unit's index (a VHDX payload block). */
  unit: number;
  /** Bytes of the disk it covers (the last unit may be short). */
  length: number;
  /** 'unused': no filesystem uses any byte of it; 'zero': used, but all zeros (when scanned); null: it stays. */
  reclaim: 'unused' | 'zero' | null;
}

/**
 * Every allocated unit of `dev`, ascending, with its verdict. The used runs and the extents are
 * walked together, once; a unit a used run touches is read only when `scanZeros` is set.
 */
export async function* reclaimableUnits(dev: BlockDevice, opts: ReclaimOptions): AsyncGenerator<UnitVerdict> {
  const bs = opts.blockSize;
  if (!Number.isSafeInteger(bs) || bs <= 0) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `block size ${bs} is not a positive integer`);
  const used = opts.used[Symbol.asyncIterator]();
  let run: Run | null = null;
  let usedDone = false;
  /** The first used run that ends after `pos`, or null. */
  const runAfter = async (pos: number): Promise<Run | null> => {
    while (!usedDone && (run === null || run.start + run.length <= pos)) {
      const n = await used.next();
      if (n.done) {
        usedDone = true;
        run = null;
      } else run = n.value;
    }
    return run;
  };
  let buf: Uint8Array | null = null;
  let lastUnit = -1;
  try {
    for await (const e of allocatedExtents(dev, opts)) {
      // Whole units: an extent may start or end inside one (a partially present block).
      for (let unit = Math.max(Math.floor(e.offset / bs), lastUnit + 1); unit * bs < e.offset + e.length; unit++) {
        lastUnit = unit;
        const start = unit * bs;
        const len = Math.min(bs, dev.size - start);
        const r = await runAfter(start);
        let reclaim: UnitVerdict['reclaim'] = null;
        if (!r || r.start >= start + len) reclaim = 'unused';
        else if (opts.scanZeros) {
          throwIfAborted(opts.signal, 'reclaimable scan');
          // Piece by piece, stopping at the first that is not all zeros: a block of data costs
          // one small read, not the whole block.
          buf ??= new Uint8Array(Math.min(bs, ZERO_PIECE));
          let zero = true;
          for (let at = 0; at < len && zero; at += buf.length) {
            const b = buf.subarray(0, Math.min(buf.length, len - at));
            await dev.read(start + at, b);
            zero = isZero(b);
          }
          if (zero) reclaim = 'zero';
        }
        yield { unit, length: len, reclaim };
      }
    }
  } finally {
    await used.return?.();
  }
}

/** Count the reclaimable bytes of `dev` (see reclaimableUnits). */
export async function reclaimable(dev: BlockDevice, opts: ReclaimOptions): Promise<Reclaimable> {
  const out: Reclaimable = { unusedBytes: 0, zeroBytes: opts.scanZeros ? 0 : null, allocatedBytes: 0 };
  for await (const u of reclaimableUnits(dev, opts)) {
    out.allocatedBytes += u.length;
    if (u.reclaim === 'unused') out.unusedBytes += u.length;
    else if (u.reclaim === 'zero' && out.zeroBytes !== null) out.zeroBytes += u.length;
  }
  return out;
}
