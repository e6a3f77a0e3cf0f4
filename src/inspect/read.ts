/**
 * Reading for the inspect layer: exact reads of small structures at device offsets, refused (null)
 * when they would leave the device or the region, so that an offset read from a table never
 * sizes a read or reaches past the disk. Text and number helpers every structure parser shares.
 */
import type { BlockDevice } from '../device/block-device.js';
import type { Region } from './filesystem.js';

/** The largest single structure any parser here reads at once. */
export const MAX_STRUCTURE_READ = 1024 * 1024;

/**
 * `length` bytes at `offset` of the device, or null when the range is not a whole range of the
 * device (negative, unsafe, past the end, or larger than MAX_STRUCTURE_READ). I/O errors propagate.
 */
export async function readAt(dev: BlockDevice, offset: number, length: number): Promise<Uint8Array | null> {
  if (!inside(offset, length, 0, dev.size) || length > MAX_STRUCTURE_READ) return null;
  const buf = new Uint8Array(length);
  await dev.read(offset, buf);
  return buf;
}

/** Like readAt, relative to a region, and refused when the range leaves the region. */
export function readIn(dev: BlockDevice, region: Region, offset: number, length: number): Promise<Uint8Array | null> {
  if (!inside(offset, length, 0, region.length)) return Promise.resolve(null);
  return readAt(dev, region.start + offset, length);
}

/** True when [offset, offset + length) is a range of safe integers inside [lo, hi). */
export function inside(offset: number, length: number, lo: number, hi: number): boolean {
  return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && length >= 0 && offset >= lo && offset + length <= hi;
}

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * A u64 (little- or big-endian) as a number, or null when it is 2^53 or more (a value no real
 * disk reaches, so such a field is damage).
 */
export function u64(b: Uint8Array, at: number, littleEndian = true): number | null {
  const v = view(b).getBigUint64(at, littleEndian);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : null;
}

/** True when `b` holds the ASCII text `magic` at `at`. */
export function hasMagic(b: Uint8Array, at: number, magic: string): boolean {
  if (at + magic.length > b.length) return false;
  for (let i = 0; i < magic.length; i++) if (b[at + i] !== magic.charCodeAt(i)) return false;
  return true;
}

const latin1 = new TextDecoder('latin1');
const utf8 = new TextDecoder('utf-8');
const utf16le = new TextDecoder('utf-16le');
const utf16be = new TextDecoder('utf-16be');

/** Text of a fixed-size field, cut at the first NUL, trailing spaces removed; null when empty. */
export function textField(b: Uint8Array, at: number, length: number, encoding: 'ascii' | 'utf-8' | 'utf-16le' | 'utf-16be' = 'ascii'): string | null {
  const field = b.subarray(at, at + length);
  let text: string;
  if (encoding === 'utf-16le' || encoding === 'utf-16be') {
    let n = 0;
    while (n + 1 < field.length && (field[n] !== 0 || field[n + 1] !== 0)) n += 2;
    text = (encoding === 'utf-16le' ? utf16le : utf16be).decode(field.subarray(0, n));
  } else {
    const nul = field.indexOf(0);
    const bytes = nul < 0 ? field : field.subarray(0, nul);
    text = (encoding === 'ascii' ? latin1 : utf8).decode(bytes);
  }
  text = text.trimEnd();
  return text === '' ? null : text;
}

/** True when `n` is a power of two between lo and hi inclusive. */
export function powerOfTwoIn(n: number, lo: number, hi: number): boolean {
  return Number.isInteger(n) && n >= lo && n <= hi && (n & (n - 1)) === 0;
}
