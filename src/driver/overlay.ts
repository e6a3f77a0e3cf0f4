/**
 * A read-only view of a source with replayed log writes laid over it. Used on read-only opens
 * of an image whose log is dirty: the log's descriptors become segments here instead of writes
 * to the file. Segments never overlap; a later write replaces what it covers.
 *
 * Writes are collected as they come and resolved into segments once, on first use, in
 * O(n log n): a log may hold millions of zero descriptors, and resolving each write against
 * every earlier one would take hours on a crafted image.
 */
import type { RandomAccessSource } from '../io/source.js';
import { VhdxError } from '../errors.js';

interface Segment {
  start: number;
  end: number;
  /** Bytes for [start, end), or null for zeros. */
  data: Uint8Array | null;
}

export class OverlaySource implements RandomAccessSource {
  readonly readOnly = true;
  private segments: Segment[] = [];
  /** Writes not yet resolved into `segments`, in the order they were put. */
  private pending: Segment[] = [];
  private extent: number;

  constructor(private readonly base: RandomAccessSource) {
    this.extent = base.size;
  }

  /** Size of the file as replay leaves it (extended as the log says). */
  get size(): number {
    return this.extent;
  }

  get segmentCount(): number {
    return this.resolved().length;
  }

  /** Make the file at least `size` bytes long (new bytes read as zeros). */
  extendTo(size: number): void {
    if (size > this.extent) this.extent = size;
  }

  /** Lay `data` (or zeros, when null) over [start, start + length). */
  put(start: number, length: number, data: Uint8Array | null): void {
    if (length <= 0) return;
    this.pending.push({ start, end: start + length, data });
    this.extendTo(start + length);
  }

  /** The segments, with pending writes resolved into them (later writes win). */
  private resolved(): Segment[] {
    if (this.pending.length > 0) {
      this.segments = paint(this.segments.concat(this.pending));
      this.pending = [];
    }
    return this.segments;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    if (offset >= this.extent) return 0;
    const n = Math.min(into.length, this.extent - offset);
    const view = into.subarray(0, n);
    // Base bytes first (zeros past the base's end), then the segments over them.
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
    const segments = this.resolved();
    for (let i = this.firstSegmentEndingAfter(offset); i < segments.length; i++) {
      const s = segments[i]!;
      if (s.start >= end) break;
      const a = Math.max(s.start, offset);
      const b = Math.min(s.end, end);
      if (s.data) view.set(s.data.subarray(a - s.start, b - s.start), a - offset);
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

  private firstSegmentEndingAfter(offset: number): number {
    let lo = 0;
    let hi = this.segments.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.segments[mid]!.end <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/**
 * Resolve writes, given in the order they happened, into sorted, disjoint segments in which
 * every byte comes from the last write covering it. A sweep over the writes' boundaries with a
 * max-heap of the writes covering the current point, keyed by their order.
 */
function paint(writes: readonly Segment[]): Segment[] {
  const n = writes.length;
  const byStart = Array.from({ length: n }, (_, i) => i).sort((a, b) => writes[a]!.start - writes[b]!.start);
  const points = new Float64Array(2 * n);
  writes.forEach((w, i) => {
    points[2 * i] = w.start;
    points[2 * i + 1] = w.end;
  });
  points.sort();
  const heap = new MaxHeap();
  const out: Segment[] = [];
  let lastWriter = -1;
  let next = 0;
  for (let p = 0; p + 1 < points.length; p++) {
    const from = points[p]!;
    const to = points[p + 1]!;
    if (from === to) continue;
    while (next < n && writes[byStart[next]!]!.start <= from) heap.push(byStart[next++]!);
    while (heap.size > 0 && writes[heap.top()]!.end <= from) heap.pop();
    if (heap.size === 0) continue;
    const w = heap.top();
    const last = out[out.length - 1];
    if (last && w === lastWriter && last.end === from) out[out.length - 1] = cut(writes[w]!, last.start, to);
    else out.push(cut(writes[w]!, from, to));
    lastWriter = w;
  }
  return out;
}

/** A binary max-heap of non-negative integers. */
class MaxHeap {
  private readonly items: number[] = [];
  get size(): number {
    return this.items.length;
  }
  top(): number {
    return this.items[0]!;
  }
  push(x: number): void {
    const a = this.items;
    let i = a.push(x) - 1;
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
    const last = a.pop()!;
    if (a.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= a.length) break;
      const c = l + 1 < a.length && a[l + 1]! > a[l]! ? l + 1 : l;
      if (a[c]! <= last) break;
      a[i] = a[c]!;
      i = c;
    }
    a[i] = last;
  }
}

function cut(s: Segment, start: number, end: number): Segment {
  return { start, end, data: s.data ? s.data.subarray(start - s.start, end - s.start) : null };
}
