/**
 * A read-only view of a source with replayed log writes laid over it. Used on read-only opens
 * of an image whose log is dirty: the log's descriptors become segments here instead of writes
 * to the file. Segments never overlap; a later write replaces what it covers.
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
  private extent: number;

  constructor(private readonly base: RandomAccessSource) {
    this.extent = base.size;
  }

  /** Size of the file as replay leaves it (extended as the log says). */
  get size(): number {
    return this.extent;
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  /** Make the file at least `size` bytes long (new bytes read as zeros). */
  extendTo(size: number): void {
    if (size > this.extent) this.extent = size;
  }

  /** Lay `data` (or zeros, when null) over [start, start + length). */
  put(start: number, length: number, data: Uint8Array | null): void {
    const end = start + length;
    const kept: Segment[] = [];
    for (const s of this.segments) {
      if (s.end <= start || s.start >= end) {
        kept.push(s);
        continue;
      }
      if (s.start < start) kept.push(cut(s, s.start, start));
      if (s.end > end) kept.push(cut(s, end, s.end));
    }
    kept.push({ start, end, data });
    kept.sort((a, b) => a.start - b.start);
    this.segments = kept;
    this.extendTo(end);
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
    for (let i = this.firstSegmentEndingAfter(offset); i < this.segments.length; i++) {
      const s = this.segments[i]!;
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

function cut(s: Segment, start: number, end: number): Segment {
  return { start, end, data: s.data ? s.data.subarray(start - s.start, end - s.start) : null };
}
