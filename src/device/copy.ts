/**
 * Copy a block device's virtual disk into a sink (a raw file, or another block device such as a
 * new VHDX image, or a differencing image's parent when it is committed), driven by block status:
 * unallocated and zero extents are not written (the sink keeps holes, or unallocated blocks),
 * data extents are read and written in chunks with several in flight so reads and writes overlap.
 * Chunks of data that are all zeros are skipped too, at 64 KiB granularity. A source without
 * cheap extents (`can.extents` false, e.g. raw) is read whole and relies on that zero detection
 * alone, so each byte is read once. A caller may choose per extent what happens (`plan`): commit
 * copies only the child's own extents and zeroes the parent where the child reads as zeros.
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import { isZero } from '../codec/bytes.js';
import type { BlockDevice, Extent, ProgressOptions, WritableBlockDevice } from './block-device.js';
import { writableSource, type RandomAccessSource } from '../io/source.js';

/** Options of {@link copyDevice}; progress counts bytes of the virtual disk walked. */
export interface CopyOptions extends ProgressOptions {
  /** Bytes per request (default: the source's copyHint, else 4 MiB). */
  chunkSize?: number;
  /** Requests in flight (default 4); a source's copyHint may ask for more. */
  parallel?: number;
  /** Skip writing ranges of data that read as zeros (default true). */
  detectZeroes?: boolean;
  /**
   * What happens to each extent of the source (default: data is copied, the rest skipped, which
   * a fresh sink already reads as zeros): 'copy' reads it and writes it, 'zero' has the sink make
   * it read as zeros (`CopySink.zero`), 'skip' leaves the sink as it is there.
   */
  plan?: (x: Extent) => 'copy' | 'zero' | 'skip';
}

/** What {@link copyDevice} moved. */
export interface CopyResult {
  /** Bytes of data read from the source. */
  bytesRead: number;
  /** Bytes written to the sink. */
  bytesWritten: number;
  /** Bytes the sink was asked to zero (extents planned 'zero'). */
  bytesZeroed: number;
}

/**
 * Where a copy writes. The sink must read as zeros wherever it is not written (a new file or a
 * new image): the copy writes nothing for the source's zero and unallocated ranges.
 */
export interface CopySink {
  /** Capacity in bytes, when bounded: a copy of a larger source fails before anything is read. */
  readonly size?: number;
  /** Write `data` at `offset`. Several writes may be in flight at once. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make [offset, offset + length) read as zeros (needed by a plan that zeroes). */
  zero?(offset: number, length: number): Promise<void>;
  /** Called once after the last write, with the source's size: set the final size, make durable. */
  finish(size: number): Promise<void>;
}

/** A sink over a file: writes go to the file; at the end it is sized to the disk and flushed. */
export function fileSink(to: RandomAccessSource): CopySink {
  const file = writableSource(to, 'copy destination is not writable');
  return {
    write: file.write.bind(file),
    async finish(size) {
      await file.truncate(size);
      await file.flush();
    },
  };
}

/** A sink over a writable block device at least as large as the source; flushed at the end. */
export function deviceSink(dev: WritableBlockDevice): CopySink {
  if (dev.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'copy destination is open read-only');
  return {
    size: dev.size,
    write: (offset, data) => dev.write(offset, data),
    zero: (offset, length) => dev.writeZeroes(offset, length),
    finish: () => dev.flush(),
  };
}

const ZERO_GRAIN = 64 * 1024;
/** Block status is asked for this much of the disk at a time, bounding the extent list. */
const STATUS_WINDOW = 1024 * 1024 * 1024;

/**
 * True when data[from, to) holds a non-zero byte. Its first bytes settle it for most data (at
 * once, with no call and no view made, which matters at 64 KiB grains of 2 GiB of random data);
 * only a grain that starts with zeros is compared whole.
 */
function hasData(data: Uint8Array, from: number, to: number): boolean {
  const head = Math.min(to, from + 16);
  for (let i = from; i < head; i++) if (data[i] !== 0) return true;
  return !isZero(data.subarray(from, to));
}

function isSink(x: CopySink | RandomAccessSource): x is CopySink {
  return typeof (x as CopySink).finish === 'function';
}

/**
 * Copy `src` into `to`: a CopySink, or a writable file (wrapped with `fileSink`). A sink with a
 * capacity smaller than the source fails before anything is read. Cancels through `signal`
 * (ECANCELED / ABORTED).
 */
export async function copyDevice(src: BlockDevice, to: CopySink | RandomAccessSource, opts: CopyOptions = {}): Promise<CopyResult> {
  const sink = isSink(to) ? to : fileSink(to);
  const write = (offset: number, data: Uint8Array): Promise<void> => sink.write(offset, data);
  // The source's hint (an HTTP source: large pieces, several at once) is what it reads best with.
  const chunkSize = opts.chunkSize ?? src.copyHint?.chunkSize ?? 4 * 1024 * 1024;
  const parallel = Math.max(1, opts.parallel ?? 4, src.copyHint?.parallel ?? 0);
  const detectZeroes = opts.detectZeroes ?? true;
  const size = src.size;
  if (sink.size !== undefined && sink.size < size) {
    throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `copy destination of ${sink.size} bytes is smaller than the ${size}-byte source`);
  }
  const plan = opts.plan ?? ((x: Extent) => (x.type === 'data' ? 'copy' : 'skip'));
  const result: CopyResult = { bytesRead: 0, bytesWritten: 0, bytesZeroed: 0 };
  let done = 0;

  // A generator of chunks [offset, length, zero] (zero: 1 to have the sink zero the range, 0 to
  // copy it), walking block status window by window.
  async function* chunks(): AsyncGenerator<[number, number, number]> {
    if (!src.can.extents) {
      for (let o = 0; o < size; o += chunkSize) yield [o, Math.min(chunkSize, size - o), 0];
      return;
    }
    for (let w = 0; w < size; ) {
      const extents = await src.blockStatus(w, Math.min(STATUS_WINDOW, size - w));
      let end = w;
      for (const e of extents) {
        const eEnd = Math.min(size, e.offset + e.length);
        const what = plan(e);
        if (what === 'copy') {
          for (let o = Math.max(e.offset, w); o < eEnd; o += chunkSize) yield [o, Math.min(chunkSize, eEnd - o), 0];
        } else if (what === 'zero') {
          if (!sink.zero) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', 'the copy destination cannot zero a range');
          yield [Math.max(e.offset, w), eEnd - Math.max(e.offset, w), 1];
        } else {
          done += eEnd - Math.max(e.offset, w);
        }
        end = eEnd;
      }
      if (end <= w) throw new VhdxError('EIO', 'IO_ERROR', `block status made no progress at ${w}`);
      w = end;
    }
  }

  const it = chunks();
  let failed: unknown = null;
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(chunkSize);
    for (;;) {
      if (failed) return;
      throwIfAborted(opts.signal, 'copy');
      const next = await it.next();
      if (next.done) return;
      const [offset, length, zero] = next.value;
      if (zero === 1 && sink.zero) {
        await sink.zero(offset, length);
        result.bytesZeroed += length;
        done += length;
        opts.onProgress?.(done, size);
        continue;
      }
      const data = buf.subarray(0, length);
      await src.read(offset, data);
      result.bytesRead += length;
      if (!detectZeroes) {
        await write(offset, data);
        result.bytesWritten += length;
      } else {
        // Write the runs of non-zero grains; the last grain may be short.
        let runStart = -1;
        for (let g = 0; g < length; g += ZERO_GRAIN) {
          const grainEnd = Math.min(length, g + ZERO_GRAIN);
          if (hasData(data, g, grainEnd)) {
            if (runStart < 0) runStart = g;
          } else if (runStart >= 0) {
            await write(offset + runStart, data.subarray(runStart, g));
            result.bytesWritten += g - runStart;
            runStart = -1;
          }
        }
        if (runStart >= 0) {
          await write(offset + runStart, data.subarray(runStart, length));
          result.bytesWritten += length - runStart;
        }
      }
      done += length;
      opts.onProgress?.(done, size);
    }
  };
  // Async generators queue concurrent next() calls, so workers share one walk safely.
  const workers = Array.from({ length: parallel }, () =>
    worker().catch((e: unknown) => {
      failed ??= e;
    }),
  );
  await Promise.all(workers);
  if (failed) throw failed;
  await sink.finish(size);
  opts.onProgress?.(size, size);
  return result;
}
