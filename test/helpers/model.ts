// Test-side models of a virtual disk for the writer tests: data patterns, a sparse byte model
// (pages of zeros are not stored), and the "at least the last flush" check a crash must pass.
import { bytesEqual } from '../../src/codec/bytes.js';

/** `len` recognisable bytes for write number `seed`, never zero. */
export function pattern(seed: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = 1 + ((i * 7 + seed * 13 + (i >>> 9) * 3) % 251);
  return out;
}

/**
 * Write payloads for property tests: `payload(n, len)` is a slice of 8 MiB of xorshift noise
 * made from `seed` (never all zeros over a sector), at an offset that depends on write number n.
 */
export function noisePayloads(seed: number): (n: number, len: number) => Uint8Array {
  const MiB = 1024 * 1024;
  const noise = new Uint8Array(8 * MiB);
  let x = seed;
  for (let i = 0; i < noise.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    noise[i] = x & 0xff;
  }
  return (n: number, len: number) => noise.subarray((n * 7919) % (4 * MiB), ((n * 7919) % (4 * MiB)) + len);
}

const PAGE = 16 * 1024;
const PIECE = 4096;
/** Pages shared between a model and its clones: whoever writes one first copies it. */
const shared = new WeakSet<Uint8Array>();
const ZERO_PAGE = new Uint8Array(PAGE);

/** A virtual disk model stored in 16 KiB pages; absent pages read as zeros. Clones are copy-on-write. */
export class SparseModel {
  /** Page number -> its 16 KiB of bytes. */
  readonly pages = new Map<number, Uint8Array>();

  clone(): SparseModel {
    const m = new SparseModel();
    for (const [p, bytes] of this.pages) {
      shared.add(bytes);
      m.pages.set(p, bytes);
    }
    return m;
  }

  write(offset: number, data: Uint8Array): void {
    this.#each(offset, data.length, (p, inPage, from, n) => this.#writable(p).set(data.subarray(from, from + n), inPage));
  }

  zero(offset: number, length: number): void {
    this.#each(offset, length, (p, inPage, _from, n) => {
      if (this.pages.has(p)) this.#writable(p).fill(0, inPage, inPage + n);
    });
  }

  /** Fill `into` with the model's bytes at `offset`. */
  read(offset: number, into: Uint8Array): void {
    this.#each(offset, into.length, (p, inPage, from, n) => into.set(this.view(p * PAGE + inPage, n), from));
  }

  /** The model's bytes [offset, offset + n), which must lie in one page: a view, do not change it. */
  view(offset: number, n: number): Uint8Array {
    const p = Math.floor(offset / PAGE);
    const inPage = offset - p * PAGE;
    return (this.pages.get(p) ?? ZERO_PAGE).subarray(inPage, inPage + n);
  }

  #writable(p: number): Uint8Array {
    let page = this.pages.get(p);
    if (!page || shared.has(page)) {
      page = page ? page.slice() : new Uint8Array(PAGE);
      this.pages.set(p, page);
    }
    return page;
  }

  #each(offset: number, length: number, fn: (page: number, inPage: number, from: number, n: number) => void): void {
    for (let pos = 0; pos < length; ) {
      const vo = offset + pos;
      const p = Math.floor(vo / PAGE);
      const inPage = vo - p * PAGE;
      const n = Math.min(PAGE - inPage, length - pos);
      fn(p, inPage, pos, n);
      pos += n;
    }
  }
}

/** An operation issued since the last flush, as crashCheck takes it. */
export type CrashOp = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'zero'; offset: number; length: number };

/**
 * Check bytes read at virtual offset `offset` after a crash: every byte must equal the model as
 * of the last completed flush (`durable`) or the value some operation issued after it (`since`:
 * { kind: 'write', offset, data } or { kind: 'zero', offset, length }) put there. Returns null,
 * or a message naming the first byte that breaks the rule.
 */
export function crashCheck(got: Uint8Array, offset: number, durable: SparseModel, since: readonly CrashOp[]): string | null {
  const explained = new Uint8Array(PIECE);
  // 4 KiB pieces (aligned in the virtual disk, so each lies in one page of the model); only
  // pieces that differ from the last flush are looked at byte by byte. A whole page of the model
  // that reads as the last flush left it is passed in one comparison.
  for (let at = 0; at < got.length; ) {
    const pageEnd = Math.min(got.length, (Math.floor((offset + at) / PAGE) + 1) * PAGE - offset);
    if (bytesEqual(got.subarray(at, pageEnd), durable.view(offset + at, pageEnd - at))) {
      at = pageEnd;
      continue;
    }
    const end = Math.min(got.length, (Math.floor((offset + at) / PIECE) + 1) * PIECE - offset);
    const want = durable.view(offset + at, end - at);
    const piece = got.subarray(at, end);
    if (!bytesEqual(piece, want)) {
      for (let i = 0; i < piece.length; i++) explained[i] = piece[i] === want[i] ? 1 : 0;
      for (const op of since) {
        const len = op.kind === 'write' ? op.data.length : op.length;
        const shift = op.offset - (offset + at); // op start relative to the piece
        const from = Math.max(0, shift);
        const to = Math.min(piece.length, shift + len);
        if (op.kind === 'write') {
          const d = op.data;
          for (let i = from; i < to; i++) if (piece[i] === d[i - shift]) explained[i] = 1;
        } else {
          for (let i = from; i < to; i++) if (piece[i] === 0) explained[i] = 1;
        }
      }
      const bad = explained.subarray(0, piece.length).indexOf(0);
      if (bad >= 0) {
        const p = offset + at + bad;
        return `byte at virtual offset ${p} is ${piece[bad]}: the last flush left ${want[bad]} and no later write put ${piece[bad]} there`;
      }
    }
    at = end;
  }
  return null;
}

/** Byte equality without copying: the library's own (memcmp under Node, no Buffer made per call). */
export { bytesEqual };
