// Annotated hex fixtures for structure tests.
//
//   const HEADER_FIXTURE = hex.padTo(4096)`
//     68 65 61 64                    # signature "head"
//     xx xx xx xx                    # checksum (filled by the fixture builder)
//     0e 00 00 00 00 00 00 00        # sequence number 14
//     00*16                          # a run: 16 zero bytes
//     ${someBytes}                   # an interpolated Uint8Array
//   `;
//
// Syntax: `#` starts a comment that runs to the end of the line; whitespace is ignored; every
// other token is a pair of hex digits (a byte), `xx` (a placeholder byte, 00, that a builder
// such as patchCrc32c fills in) or `HH*N` (byte HH repeated N times, N decimal). A `${}` value
// may be a Uint8Array (its bytes) or a string (more hex text). Anything else throws, so a typo in
// a fixture fails loudly instead of shifting every later field.
//
// This file also holds a reference CRC-32C (bitwise, no tables) that is independent of the
// library's slicing-by-8 code, so fixtures never take their checksums from the code under test.
import assert from 'node:assert/strict';
import type { VhdxError } from '../../src/errors.js';

/** What a fixture may interpolate: bytes, or more hex text. */
export type HexValue = Uint8Array | string;

function parse(strings: TemplateStringsArray, values: HexValue[]): Uint8Array {
  const out: number[] = [];
  const pushText = (text: string): void => {
    const clean = text.replace(/#[^\n]*/g, ' ');
    for (const tok of clean.split(/\s+/)) {
      if (tok === '') continue;
      const m = /^([0-9a-fA-F]{2}|xx)(?:\*(\d+))?$/.exec(tok);
      if (!m) throw new Error(`hex fixture: bad token ${JSON.stringify(tok)}`);
      const byte = m[1] === 'xx' ? 0 : parseInt(m[1]!, 16);
      const count = m[2] === undefined ? 1 : Number(m[2]);
      for (let i = 0; i < count; i++) out.push(byte);
    }
  };
  strings.raw.forEach((s, i) => {
    pushText(s);
    if (i < values.length) {
      const v: unknown = values[i];
      if (v instanceof Uint8Array) out.push(...v);
      else if (typeof v === 'string') pushText(v);
      else throw new Error(`hex fixture: cannot interpolate ${typeof v}`);
    }
  });
  return Uint8Array.from(out);
}

/** Tagged template: annotated hex text to bytes. */
export function hex(strings: TemplateStringsArray, ...values: HexValue[]): Uint8Array {
  return parse(strings, values);
}

/** hex.padTo(n)`...`: the same, zero-padded to exactly n bytes (throws when longer). */
hex.padTo = (size: number) => (strings: TemplateStringsArray, ...values: HexValue[]): Uint8Array => padTo(parse(strings, values), size);

/** A copy of `bytes` zero-padded to `size` bytes; throws when `bytes` is longer. */
export function padTo(bytes: Uint8Array, size: number): Uint8Array {
  if (bytes.length > size) throw new Error(`fixture is ${bytes.length} bytes, more than ${size}`);
  const out = new Uint8Array(size);
  out.set(bytes);
  return out;
}

/** Concatenate byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Lowercase hex of bytes, space separated. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** UTF-16LE bytes of a string (no terminator). */
export function utf16le(s: string): Uint8Array {
  const out = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) {
    out[i * 2] = s.charCodeAt(i) & 0xff;
    out[i * 2 + 1] = s.charCodeAt(i) >>> 8;
  }
  return out;
}

/** Little-endian u32 / u64 bytes (u64 takes a number or a bigint). */
export function le32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, true);
  return b;
}
export function le64(n: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

/** Reference CRC-32C, bit by bit (Castagnoli, reflected 0x82F63B78, init and final XOR ~0). */
export function crc32cRef(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) {
    c ^= bytes[i]!;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

/**
 * Fill the checksum field at `at` in place: CRC-32C (reference implementation) of the first
 * `length` bytes with that field taken as zero, stored little-endian. Returns `bytes`.
 */
export function patchCrc32c(bytes: Uint8Array, at: number, length = bytes.length): Uint8Array {
  bytes.fill(0, at, at + 4);
  const crc = crc32cRef(bytes.subarray(0, length));
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(at, crc, true);
  return bytes;
}

/**
 * Byte-for-byte equality with a readable failure: the first differing offset and the bytes
 * around it, instead of a diff of thousands of array elements.
 */
export function assertBytesEqual(actual: unknown, expected: Uint8Array, what = 'bytes'): void {
  assert.ok(actual instanceof Uint8Array, `${what}: expected a Uint8Array`);
  const n = Math.min(actual.length, expected.length);
  let i = 0;
  while (i < n && actual[i] === expected[i]) i++;
  if (i === n && actual.length === expected.length) return;
  const from = Math.max(0, i - 8);
  assert.fail(
    `${what} differ at offset ${i} (0x${i.toString(16)}; lengths ${actual.length} and ${expected.length})\n` +
      `  actual   @${from}: ${toHex(actual.subarray(from, i + 8))}\n` +
      `  expected @${from}: ${toHex(expected.subarray(from, i + 8))}`,
  );
}

/** Assert that fn throws a VhdxError with the given reason (and code, when given); returns it. */
export function assertVhdxError(fn: () => unknown, reason: string, code?: string): VhdxError {
  let caught: VhdxError | undefined;
  try {
    fn();
  } catch (e) {
    caught = e as VhdxError; // checked field by field below
  }
  assert.ok(caught, `expected a VhdxError with reason ${reason}, nothing was thrown`);
  assert.equal(caught.name, 'VhdxError', `expected a VhdxError, got ${caught}`);
  assert.equal(caught.reason, reason, `wrong reason; message: ${caught.message}`);
  if (code !== undefined) assert.equal(caught.code, code);
  return caught;
}

/** A deterministic pseudo-random generator (mulberry32): returns a function giving [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` deterministic pseudo-random bytes. */
export function seededBytes(seed: number, n: number): Uint8Array {
  const rnd = seededRandom(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
}

/**
 * The two facts every structure fixture must show: decode gives `expected` (when given; fields
 * not listed in `expected` are not compared) and encode(decode(bytes)) gives back `bytes`, byte
 * for byte. Returns the decoded value.
 */
/** What assertRoundTrip needs of a structure (a codec/struct.ts Struct has it). */
export interface RoundTrip<T> {
  readonly name: string;
  readonly size: number;
  decode(bytes: Uint8Array): T;
  encode(value: T): Uint8Array;
}

export function assertRoundTrip<T extends object>(struct: RoundTrip<T>, bytes: Uint8Array, expected?: Partial<T>): T {
  assert.equal(bytes.length, struct.size, `${struct.name} fixture length`);
  const value = struct.decode(bytes);
  if (expected !== undefined) {
    for (const [k, v] of Object.entries(expected)) assert.deepEqual((value as Record<string, unknown>)[k], v, `${struct.name}.${k}`);
  }
  assertBytesEqual(struct.encode(value), bytes, `encode(decode(${struct.name} fixture))`);
  return value;
}
