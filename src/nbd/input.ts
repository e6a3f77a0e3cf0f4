/**
 * The bytes a connection has received and not yet consumed. Socket chunks are kept as they
 * arrive; a read that spans chunks joins only the bytes it needs. Payload reads hand out
 * subarrays of the chunks (no copy), so memory follows the bytes actually received, never a
 * length the client announced.
 */
const EMPTY = Buffer.alloc(0);

export class InputBuffer {
  private chunks: Buffer[] = [];
  /** Offset of the first unconsumed byte in chunks[0]. */
  private head = 0;
  private total = 0;

  get available(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * Consume `n` bytes (n <= available). Returns a view of the received bytes when they lie in one
   * chunk, else a joined copy of just those bytes.
   */
  take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0]!;
      const k = Math.min(n - done, c.length - this.head);
      c.copy(out, done, this.head, this.head + k);
      done += k;
      this.advance(k);
    }
    return out;
  }

  /**
   * Consume up to `max` bytes that lie in one chunk, as a view (no copy): for payloads gathered
   * piece by piece.
   */
  takeSome(max: number): Buffer {
    const first = this.chunks[0];
    if (!first || max === 0) return EMPTY;
    const k = Math.min(max, first.length - this.head);
    const out = first.subarray(this.head, this.head + k);
    this.advance(k);
    return out;
  }

  /** Drop up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.total);
    const dropped = left;
    while (left > 0) {
      const c = this.chunks[0]!;
      const k = Math.min(left, c.length - this.head);
      this.advance(k);
      left -= k;
    }
    return dropped;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.total = 0;
  }

  private advance(k: number): void {
    this.head += k;
    this.total -= k;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
