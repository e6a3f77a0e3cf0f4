/**
 * Parent locator entries of a differencing VHD's dynamic header (specification, "Dynamic Disk
 * Header Format", Parent Locator Entries): eight 24-byte entries, each pointing at a piece of the
 * file that names the parent on one platform.
 *
 * Platform codes: "W2ru" (a Windows path relative to the child, UTF-16LE), "W2ku" (an absolute
 * Windows path, UTF-16LE), "Mac " (a Mac OS alias record, not a path), "MacX" (a file:// URL,
 * UTF-8), and the deprecated "Wi2r"/"Wi2k". Code 0 means the entry is unused.
 *
 * Platform Data Space is, by the specification, the count of 512-byte sectors kept for the data;
 * Virtual PC and Hyper-V store a count of bytes instead (VirtualBox's VHD backend says so, and
 * files show it). `locatorSpaceBytes` reads both.
 */
import { defineStruct, u32be, u64be, type Decoded } from '../codec/struct.js';

export const PARENT_LOCATOR_ENTRY = defineStruct('VHD parent locator entry', 24, {
  platformCode: { at: 0, type: u32be },
  platformDataSpace: { at: 4, type: u32be },
  platformDataLength: { at: 8, type: u32be },
  reserved: { at: 12, type: u32be },
  platformDataOffset: { at: 16, type: u64be },
});
export type ParentLocatorEntry = Decoded<typeof PARENT_LOCATOR_ENTRY.fields>;

export const PARENT_LOCATOR_COUNT = 8;

/** Four ASCII characters as the big-endian u32 the entry stores. */
function code(text: string): number {
  return ((text.charCodeAt(0) << 24) | (text.charCodeAt(1) << 16) | (text.charCodeAt(2) << 8) | text.charCodeAt(3)) >>> 0;
}

export const PlatformCode = {
  NONE: 0,
  /** Windows relative path, UTF-16LE. */
  W2RU: code('W2ru'),
  /** Windows absolute path, UTF-16LE. */
  W2KU: code('W2ku'),
  /** Deprecated Windows relative and absolute paths (ANSI). */
  WI2R: code('Wi2r'),
  WI2K: code('Wi2k'),
  /** Mac OS alias record. */
  MAC: code('Mac '),
  /** Mac OS X file URL, UTF-8. */
  MACX: code('MacX'),
} as const;

/** The four characters of a platform code, for messages ("W2ru"), or its hex value when not printable. */
export function platformName(platformCode: number): string {
  const chars = [24, 16, 8, 0].map((s) => (platformCode >>> s) & 0xff);
  return chars.every((c) => c >= 0x20 && c < 0x7f) ? String.fromCharCode(...chars) : `0x${platformCode.toString(16)}`;
}

/** The most locator data we read (a Windows path of 32767 UTF-16 characters is 65534 bytes). */
export const MAX_LOCATOR_DATA = 65536;

/** The bytes an entry keeps for its data: Platform Data Space as bytes when it can hold the data, else as sectors. */
export function locatorSpaceBytes(e: ParentLocatorEntry): number {
  return e.platformDataSpace >= e.platformDataLength ? e.platformDataSpace : e.platformDataSpace * 512;
}

/** A parent locator's data as a path, or null for platforms whose data is not a path ("Mac " aliases). */
export function decodeLocatorPath(platformCode: number, data: Uint8Array): string | null {
  let s: string;
  if (platformCode === PlatformCode.W2RU || platformCode === PlatformCode.W2KU) {
    s = '';
    for (let i = 0; i + 1 < data.length; i += 2) s += String.fromCharCode(data[i]! | (data[i + 1]! << 8));
  } else if (platformCode === PlatformCode.MACX || platformCode === PlatformCode.WI2R || platformCode === PlatformCode.WI2K) {
    s = new TextDecoder('utf-8', { fatal: false }).decode(data);
  } else return null;
  const nul = s.indexOf('\0');
  return nul >= 0 ? s.slice(0, nul) : s;
}

/** A path as a platform stores it: UTF-16LE for W2ru/W2ku, UTF-8 for MacX. */
export function encodeLocatorPath(platformCode: number, path: string): Uint8Array {
  if (platformCode === PlatformCode.MACX) return new TextEncoder().encode(path);
  const out = new Uint8Array(path.length * 2);
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    out[i * 2] = c & 0xff;
    out[i * 2 + 1] = c >>> 8;
  }
  return out;
}
