/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init 0xFFFFFFFF, final XOR),
 * slicing-by-8 with tables built once at load. Tables and the running value stay int32 (no
 * `>>> 0` in the loop): uint32 values above 2^31 would leave V8's small-integer fast path.
 *
 * Runs of zero bytes are not fed through the tables: most of every header (4 KiB) and region
 * table (64 KiB) is zero padding, and an image's open checksums them before the table loop has
 * been optimised, when each byte costs tens of nanoseconds. Feeding n zero bytes into the CRC
 * register (no conditioning) multiplies it by x^(8n) modulo the polynomial, which takes a few
 * dozen steps whatever n is (the method of zlib's crc32_combine).
 */
import { isZero } from './bytes.js';

const POLY = 0x82f63b78;

const TABLES: Int32Array[] = (() => {
  const t: Int32Array[] = [];
  const t0 = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t0[i] = c;
  }
  t.push(t0);
  for (let s = 1; s < 8; s++) {
    const prev = t[s - 1]!;
    const cur = new Int32Array(256);
    for (let i = 0; i < 256; i++) cur[i] = (prev[i]! >>> 8) ^ t0[prev[i]! & 0xff]!;
    t.push(cur);
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7] = TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

/** a(x) * b(x) modulo the polynomial, both in the reflected representation (bit 31 is x^0). */
function multModP(a: number, b: number): number {
  let p = 0;
  for (let m = 0x80000000; m !== 0; m >>>= 1) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p;
}

/** X2N[k] = x^(2^k) modulo the polynomial. */
const X2N: Int32Array = (() => {
  const t = new Int32Array(32);
  let p = 0x40000000; // x^1
  t[0] = p;
  for (let k = 1; k < 32; k++) t[k] = p = multModP(p, p);
  return t;
})();

/** The CRC register `c` (no conditioning) after `n` zero bytes: c * x^(8n) modulo the polynomial. */
function feedZeros(c: number, n: number): number {
  let p = 0x80000000; // x^0
  for (let k = 3; n > 0; k++, n = Math.floor(n / 2)) {
    if (n % 2 === 1) p = multModP(X2N[k & 31]!, p);
  }
  return multModP(p, c);
}

/** Feed data[from, to) through the tables into the register `c`. */
function feedBytes(c: number, data: Uint8Array, from: number, to: number): number {
  let i = from;
  const end8 = to - ((to - from) % 8);
  while (i < end8) {
    const a = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c =
      T7[a & 0xff]! ^
      T6[(a >>> 8) & 0xff]! ^
      T5[(a >>> 16) & 0xff]! ^
      T4[a >>> 24]! ^
      T3[data[i + 4]!]! ^
      T2[data[i + 5]!]! ^
      T1[data[i + 6]!]! ^
      T0[data[i + 7]!]!;
    i += 8;
  }
  while (i < to) {
    c = T0[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
    i++;
  }
  return c;
}

/** Pieces this large are checked for zeros before they are fed through the tables. */
const ZERO_PIECE = 512;

/** Continue a CRC-32C over `data`. `crc` is a previous result (0 to start). */
export function crc32cUpdate(crc: number, data: Uint8Array): number {
  let c = ~crc;
  const n = data.length;
  let zeros = 0;
  let at = 0;
  for (; at + ZERO_PIECE <= n; at += ZERO_PIECE) {
    if (isZero(data.subarray(at, at + ZERO_PIECE))) {
      zeros += ZERO_PIECE;
      continue;
    }
    if (zeros > 0) {
      c = feedZeros(c, zeros);
      zeros = 0;
    }
    c = feedBytes(c, data, at, at + ZERO_PIECE);
  }
  if (zeros > 0) c = feedZeros(c, zeros);
  if (at < n) c = feedBytes(c, data, at, n);
  return ~c >>> 0;
}

export function crc32c(data: Uint8Array): number {
  return crc32cUpdate(0, data);
}

/**
 * CRC-32C of `data` as if the 4 bytes at `fieldAt` were zero, without copying the buffer.
 * This is how every VHDX checksum is defined.
 */
export function crc32cWithZeroField(data: Uint8Array, fieldAt: number): number {
  let c = crc32cUpdate(0, data.subarray(0, fieldAt));
  c = crc32cUpdate(c, ZERO4);
  return crc32cUpdate(c, data.subarray(fieldAt + 4));
}
const ZERO4 = new Uint8Array(4);
