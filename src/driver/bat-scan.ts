/**
 * One streaming pass over the BAT: windows of whole chunks (about 1 MiB: small enough that the
 * bytes just read are still in the CPU cache when the caller looks at them), two reads ahead so
 * the copies out of the page cache overlap the work. Memory is three windows, whatever the BAT's
 * size. Used by the allocation statistics and by check.
 */
import { throwIfAborted } from '../errors.js';
import { viewOf } from '../codec/struct.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import { MiB } from '../format/constants.js';
import { BAT_ENTRY_SIZE } from '../format/bat.js';
import type { ProgressOptions } from '../device/block-device.js';

/** Entries per window for chunks of `period` entries (payload entries plus the bitmap entry). */
export function batWindowEntries(period: number): number {
  return Math.max(1, Math.floor(MiB / (period * BAT_ENTRY_SIZE))) * period;
}

/**
 * Call `fn` with each window of raw entries in order: `first` is the BAT index of the window's
 * first entry. Windows start on chunk boundaries. `fn` returning false stops the scan. Progress
 * is reported in entries; an aborted `signal` rejects with ECANCELED / ABORTED.
 */
export async function scanBat(
  src: RandomAccessSource,
  batOffset: number,
  total: number,
  period: number,
  opts: ProgressOptions,
  fn: (view: DataView, bytes: Uint8Array, first: number, count: number) => boolean | void,
): Promise<void> {
  const windowEntries = batWindowEntries(period);
  const AHEAD = 2;
  const pool = Array.from({ length: AHEAD + 1 }, () => new Uint8Array(windowEntries * BAT_ENTRY_SIZE));
  const inFlight: Promise<Uint8Array>[] = [];
  let nextRead = 0;
  let poolNext = 0;
  const issue = (): void => {
    if (nextRead >= total) return;
    const count = Math.min(windowEntries, total - nextRead);
    const b = pool[poolNext++ % pool.length]!.subarray(0, count * BAT_ENTRY_SIZE);
    inFlight.push(readExact(src, batOffset + nextRead * BAT_ENTRY_SIZE, b, 'BAT').then(() => b));
    nextRead += count;
  };
  const drain = (): Promise<unknown> => Promise.allSettled(inFlight);
  for (let k = 0; k < AHEAD; k++) issue();
  for (let first = 0; first < total; first += windowEntries) {
    const bytes = await inFlight.shift()!;
    if (opts.signal?.aborted) {
      await drain();
      throwIfAborted(opts.signal, 'BAT scan');
    }
    issue();
    const count = bytes.length / BAT_ENTRY_SIZE;
    const go = fn(viewOf(bytes), bytes, first, count);
    opts.onProgress?.(Math.min(total, first + count), total);
    if (go === false) {
      await drain();
      return;
    }
  }
}
