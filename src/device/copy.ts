/**
 * Copy a block device's virtual disk into a sink (a raw file, or later another image), driven by
 * block status: unallocated and zero extents are not written (the sink keeps holes), data extents
 * are read and written in chunks with several in flight so reads and writes overlap. Chunks of
 * data that are all zeros are skipped too, at 64 KiB granularity.
 */
import { VhdxError } from '../errors.js';
import { isZero } from '../codec/bytes.js';
import type { BlockDevice, ProgressOptions } from './block-device.js';
import type { RandomAccessSource } from '../io/source.js';

export interface CopyOptions extends ProgressOptions {
  /** Bytes per request (default 4 MiB). */
  chunkSize?: number;
  /** Requests in flight (default 4). */
  parallel?: number;
  /** Skip writing ranges of data that read as zeros (default true). */
  detectZeroes?: boolean;
}

export interface CopyResult {
  /** Bytes of data read from the source. */
  bytesRead: number;
  /** Bytes written to the sink. */
  bytesWritten: number;
}

const ZERO_GRAIN = 64 * 1024;
/** Block status is asked for this much of the disk at a time, bounding the extent list. */
const STATUS_WINDOW = 1024 * 1024 * 1024;

export async function copyDevice(src: BlockDevice, sink: RandomAccessSource, opts: CopyOptions = {}): Promise<CopyResult> {
  if (!sink.write || !sink.truncate) throw new VhdxError('EROFS', 'READ_ONLY', 'copy destination is not writable');
  const write = sink.write.bind(sink);
  const chunkSize = opts.chunkSize ?? 4 * 1024 * 1024;
  const parallel = Math.max(1, opts.parallel ?? 4);
  const detectZeroes = opts.detectZeroes ?? true;
  const size = src.size;
  const result: CopyResult = { bytesRead: 0, bytesWritten: 0 };
  let done = 0;

  // A generator of data chunks [offset, length), walking block status window by window.
  async function* chunks(): AsyncGenerator<[number, number]> {
    for (let w = 0; w < size; ) {
      const extents = await src.blockStatus(w, Math.min(STATUS_WINDOW, size - w));
      let end = w;
      for (const e of extents) {
        const eEnd = Math.min(size, e.offset + e.length);
        if (e.type === 'data') {
          for (let o = Math.max(e.offset, w); o < eEnd; o += chunkSize) yield [o, Math.min(chunkSize, eEnd - o)];
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
      if (opts.signal?.aborted) throw new VhdxError('ECANCELED', 'ABORTED', 'copy cancelled', { cause: opts.signal.reason });
      const next = await it.next();
      if (next.done) return;
      const [offset, length] = next.value;
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
          if (!isZero(data.subarray(g, grainEnd))) {
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
  await sink.truncate(size);
  opts.onProgress?.(size, size);
  return result;
}
