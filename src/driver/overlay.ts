/**
 * A read-only view of a source with replayed log writes laid over it. Used on read-only opens
 * of an image whose log is dirty (the log's descriptors become ranges here instead of writes to
 * the file), and by the in-place replay, which writes each resolved range to the file once.
 *
 * Compact, because a log may hold two million descriptors: a range is three numbers in typed
 * arrays (RANGE_BYTES), a zero range of any length is one range, and the bytes of data writes lie
 * end to end in one buffer. Writes are collected as they come and resolved into sorted, disjoint
 * ranges (every byte from the last write covering it) whenever as many are pending as are
 * resolved, so resolving costs O(n log n) overall and a log that keeps rewriting the same few
 * sectors keeps only those. `maxRanges` caps the ranges held (resolved, and room for pending
 * ones); a put that would pass it throws ENOTSUP / LOG_REPLAY_FAILED. The data is the caller's to
 * bound (a replay's is the log's data sectors). Resolving n ranges briefly needs about 72n bytes
 * more.
 */
import type { RandomAccessSource } from '../io/source.js';
import { VhdxError } from '../errors.js';

/** Bytes one range takes: start, end and where its data is (-1: zeros), as float64. */
export const RANGE_BYTES = 24;
/** Pending writes are resolved once there are this many, or as many as ranges resolved (at most half the cap). */
const MIN_BATCH = 65536;

export interface OverlayOptions {
  /** Most ranges the overlay may hold, resolved or pending. Default: no limit. */
  maxRanges?: number;
  /** Bytes of data the puts will bring, when known: the data buffer is made that size at once. */
  dataBytes?: number;
}

/** One resolved range: [start, end) reads as `data`, or as zeros when it is null. */
export interface OverlayRange {
  start: number;
  end: number;
  data: Uint8Array | null;
}

export class OverlaySource implements RandomAccessSource {
  readonly readOnly = true;
  // Resolved ranges: sorted, disjoint; `at` is the offset of the range's bytes in `data`, or -1.
  private starts: Float64Array = new Float64Array(0);
  private ends: Float64Array = new Float64Array(0);
  private at: Float64Array = new Float64Array(0);
  // Writes not yet resolved, in the order they were put.
  private pStarts: Float64Array = new Float64Array(0);
  private pEnds: Float64Array = new Float64Array(0);
  private pAt: Float64Array = new Float64Array(0);
  private pending = 0;
  private data: Uint8Array;
  private dataUsed = 0;
  private extent: number;
  /** End of the furthest write. */
  private writesEnd = 0;
  private readonly maxRanges: number;

  constructor(
    private readonly base: RandomAccessSource,
    opts: OverlayOptions = {},
  ) {
    this.extent = base.size;
    this.maxRanges = opts.maxRanges ?? Infinity;
    this.data = new Uint8Array(0);
    this.growData(opts.dataBytes ?? 0);
  }

  /** Size of the file as replay leaves it (extended as the log says). */
  get size(): number {
    return this.extent;
  }

  get segmentCount(): number {
    this.resolve();
    return this.starts.length;
  }

  /** Ranges held: those resolved and the room for pending ones (what `maxRanges` caps). */
  get rangesHeld(): number {
    return this.starts.length + this.pStarts.length;
  }

  /** Bytes held: the ranges and the data buffer. */
  get bytesHeld(): number {
    return this.rangesHeld * RANGE_BYTES + this.data.length;
  }

  /** Make the file at least `size` bytes long (new bytes read as zeros). */
  extendTo(size: number): void {
    if (size > this.extent) this.extent = size;
  }

  /**
   * Make the file at most `size` bytes long, though never shorter than the base or the end of the
   * furthest write: bytes past those were only ever zeros.
   */
  capSize(size: number): void {
    this.extent = Math.max(this.base.size, this.writesEnd, Math.min(this.extent, size));
  }

  /** Lay `data` (or zeros, when null) over [start, start + length). */
  put(start: number, length: number, data: Uint8Array | null): void {
    if (length <= 0) return;
    let dataAt = -1;
    if (data) {
      if (this.dataUsed + length > this.data.length) this.growData(Math.max(this.dataUsed + length, 2 * this.data.length));
      this.data.set(data.subarray(0, length), this.dataUsed);
      dataAt = this.dataUsed;
      this.dataUsed += length;
    }
    if (this.pending === this.pStarts.length) {
      // A batch is as large as what is resolved (at least MIN_BATCH), and never more than half
      // the cap: resolving costs O(n log n) overall, and what resolves to few ranges fits.
      const batch = Math.min(Math.max(MIN_BATCH, this.starts.length), Math.max(1, Math.floor(this.maxRanges / 2)));
      if (this.pending >= batch) this.resolve();
      else this.growPending(Math.min(Math.max(1024, 2 * this.pStarts.length), batch));
    }
    const i = this.pending++;
    this.pStarts[i] = start;
    this.pEnds[i] = start + length;
    this.pAt[i] = dataAt;
    this.writesEnd = Math.max(this.writesEnd, start + length);
    this.extendTo(start + length);
  }

  /** The resolved ranges in file order (data ranges as views of the overlay's buffer). */
  *ranges(): Generator<OverlayRange> {
    this.resolve();
    for (let i = 0; i < this.starts.length; i++) {
      const a = this.at[i]!;
      const start = this.starts[i]!;
      const end = this.ends[i]!;
      yield { start, end, data: a < 0 ? null : this.data.subarray(a, a + end - start) };
    }
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    if (offset >= this.extent) return 0;
    const n = Math.min(into.length, this.extent - offset);
    const view = into.subarray(0, n);
    // Base bytes first (zeros past the base's end), then the ranges over them.
    let got = 0;
    if (offset < this.base.size) {
      const want = Math.min(n, this.base.size - offset);
      while (got < want) {
        const r = await this.base.read(offset + got, view.subarray(got, want));
        if (r <= 0) break;
        got += r;
      }
    }
    view.fill(0, got);
    const end = offset + n;
    this.resolve();
    for (let i = this.firstRangeEndingAfter(offset); i < this.starts.length; i++) {
      const s = this.starts[i]!;
      if (s >= end) break;
      const a = Math.max(s, offset);
      const b = Math.min(this.ends[i]!, end);
      const d = this.at[i]!;
      if (d >= 0) view.set(this.data.subarray(d + a - s, d + b - s), a - offset);
      else view.fill(0, a - offset, b - offset);
    }
    return n;
  }

  async close(): Promise<void> {
    await this.base.close();
  }

  async write(): Promise<void> {
    throw new VhdxError('EROFS', 'READ_ONLY', 'the replayed view of a dirty image is read-only');
  }

  private firstRangeEndingAfter(offset: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Refuse to hold `ranges` ranges (resolved and room for pending) when that is past the cap. */
  private checkRanges(ranges: number): void {
    if (ranges > this.maxRanges) {
      throw new VhdxError(
        'ENOTSUP',
        'LOG_REPLAY_FAILED',
        `replaying the log in memory needs more than ${this.maxRanges} separate ranges (${this.maxRanges * RANGE_BYTES} bytes)`,
      );
    }
  }

  private growData(size: number): void {
    if (size <= this.data.length) return;
    const grown = new Uint8Array(size);
    grown.set(this.data.subarray(0, this.dataUsed));
    this.data = grown;
  }

  private growPending(cap: number): void {
    this.checkRanges(this.starts.length + cap);
    const grow = (a: Float64Array): Float64Array => {
      const b = new Float64Array(cap);
      b.set(a);
      return b;
    };
    this.pStarts = grow(this.pStarts);
    this.pEnds = grow(this.pEnds);
    this.pAt = grow(this.pAt);
  }

  /** Resolve the pending writes into the ranges (later writes win). */
  private resolve(): void {
    if (this.pending === 0) return;
    const r = paint(this.starts, this.ends, this.at, this.pStarts.subarray(0, this.pending), this.pEnds, this.pAt);
    this.pending = 0;
    this.starts = new Float64Array(0);
    this.ends = this.starts;
    this.at = this.starts;
    this.checkRanges(r.starts.length + this.pStarts.length);
    this.starts = r.starts;
    this.ends = r.ends;
    this.at = r.at;
  }
}

/**
 * Resolve ranges and writes into sorted, disjoint ranges in which every byte comes from the last
 * write covering it. The ranges (`rs`, `re`, `ra`: sorted, disjoint) are older than every write;
 * the writes (`ws`, `we`, `wa`, the first `ws.length`) are in the order they happened. A sweep
 * from start to start, with a max-heap of what covers the current point keyed by age (the ranges
 * first, then the writes in order); adjacent pieces of zeros, or of data that lie end to end in
 * the buffer, become one range.
 */
function paint(
  rs: Float64Array,
  re: Float64Array,
  ra: Float64Array,
  ws: Float64Array,
  we: Float64Array,
  wa: Float64Array,
): { starts: Float64Array; ends: Float64Array; at: Float64Array } {
  const nr = rs.length;
  const nw = ws.length;
  const n = nr + nw;
  // Item k < nr is range k; item nr + i is write i. A larger item is newer.
  const start = (k: number): number => (k < nr ? rs[k]! : ws[k - nr]!);
  const end = (k: number): number => (k < nr ? re[k]! : we[k - nr]!);
  const dataAt = (k: number): number => (k < nr ? ra[k]! : wa[k - nr]!);
  const byStart = writesByStart(ws);

  const outStarts = new Float64Array(2 * n + 1);
  const outEnds = new Float64Array(2 * n + 1);
  const outAt = new Float64Array(2 * n + 1);
  let out = 0;
  const emit = (from: number, to: number, k: number): void => {
    const d = dataAt(k);
    const a = d < 0 ? -1 : d + from - start(k);
    const last = out - 1;
    if (last >= 0 && outEnds[last] === from && (a < 0 ? outAt[last]! < 0 : outAt[last]! >= 0 && outAt[last]! + from - outStarts[last]! === a)) {
      outEnds[last] = to;
      return;
    }
    outStarts[out] = from;
    outEnds[out] = to;
    outAt[out] = a;
    out++;
  };

  const heap = new MaxHeap(n);
  let nextRange = 0;
  let nextWrite = 0;
  /** Start of the next item not yet in the heap (Infinity when none is left). */
  const nextStart = (): number =>
    Math.min(nextRange < nr ? rs[nextRange]! : Infinity, nextWrite < nw ? ws[byStart[nextWrite]!]! : Infinity);
  let point = nextStart();
  while (point < Infinity) {
    while (nextRange < nr && rs[nextRange]! <= point) heap.push(nextRange++);
    while (nextWrite < nw && ws[byStart[nextWrite]!]! <= point) heap.push(nr + byStart[nextWrite++]!);
    while (heap.size > 0 && end(heap.top()) <= point) heap.pop();
    const following = nextStart();
    if (heap.size === 0) {
      point = following;
      continue;
    }
    const k = heap.top();
    const to = Math.min(end(k), following);
    emit(point, to, k);
    point = to;
  }
  return { starts: outStarts.slice(0, out), ends: outEnds.slice(0, out), at: outAt.slice(0, out) };
}

/**
 * Indexes of `starts` ordered by value (ties in any order). A native sort of the values, then
 * each index placed at its value's first position plus the count of equal values placed before
 * it: a comparator sort of two million indexes takes seconds, this a fraction of one.
 */
function writesByStart(starts: Float64Array): Uint32Array {
  const n = starts.length;
  const sorted = Float64Array.from(starts).sort();
  const taken = new Uint32Array(n);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const v = starts[i]!;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid]! < v) lo = mid + 1;
      else hi = mid;
    }
    order[lo + taken[lo]!++] = i;
  }
  return order;
}

/** A binary max-heap of non-negative integers, in a typed array of fixed capacity. */
class MaxHeap {
  private readonly items: Int32Array;
  size = 0;
  constructor(capacity: number) {
    this.items = new Int32Array(capacity);
  }
  top(): number {
    return this.items[0]!;
  }
  push(x: number): void {
    const a = this.items;
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (a[parent]! >= x) break;
      a[i] = a[parent]!;
      i = parent;
    }
    a[i] = x;
  }
  pop(): void {
    const a = this.items;
    const last = a[--this.size]!;
    if (this.size === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= this.size) break;
      const c = l + 1 < this.size && a[l + 1]! > a[l]! ? l + 1 : l;
      if (a[c]! <= last) break;
      a[i] = a[c]!;
      i = c;
    }
    a[i] = last;
  }
}
