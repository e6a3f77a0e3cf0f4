/**
 * The hard disk footer ("Virtual Hard Disk Image Format Specification", Microsoft 2006, "Hard
 * Disk Footer Format"): 512 bytes at the end of every VHD; dynamic and differencing disks also keep
 * a copy at offset 0. All numbers are big-endian. Bytes in, values out; values in, bytes out; and
 * what is wrong with a decoded footer as data (`footerProblems`), for the open and for check.
 */
import { defineStruct, ascii, u8, u16be, u32be, u64be, u64bigbe, uuid, ONES_COMPLEMENT_SUM, type Decoded } from '../codec/struct.js';
import type { ErrorReason } from '../errors.js';

export const FOOTER_SIZE = 512;
export const FOOTER_COOKIE = 'conectix';

export const FOOTER = defineStruct('VHD footer', FOOTER_SIZE, {
  cookie: { at: 0, type: ascii(8), expect: FOOTER_COOKIE },
  /** Bit 0: temporary disk; bit 1: reserved, always set. */
  features: { at: 8, type: u32be },
  /** Major (high 16 bits) 1, minor 0. */
  formatVersion: { at: 12, type: u32be },
  /** Offset of the dynamic header; all ones for a fixed disk. */
  dataOffset: { at: 16, type: u64bigbe },
  /** Creation time, seconds since 2000-01-01 00:00:00 UTC. */
  timestamp: { at: 24, type: u32be },
  /** Four bytes naming the program that made the disk ("vpc ", "win ", "qemu", "qem2", "wa\0\0"...). */
  creatorApplication: { at: 28, type: ascii(4) },
  creatorVersion: { at: 32, type: u32be },
  /** "Wi2k" or "Mac ". */
  creatorHostOs: { at: 36, type: ascii(4) },
  /** The size when the disk was made (kept, never used to size anything). */
  originalSize: { at: 40, type: u64bigbe },
  /** The disk's size in bytes, as Hyper-V and most readers take it (see geometry.ts). */
  currentSize: { at: 48, type: u64be },
  cylinders: { at: 56, type: u16be },
  heads: { at: 58, type: u8 },
  sectorsPerTrack: { at: 59, type: u8 },
  diskType: { at: 60, type: u32be },
  checksum: { at: 64, type: u32be, checksum: ONES_COMPLEMENT_SUM },
  uniqueId: { at: 68, type: uuid },
  /** 1 when the disk belongs to a virtual machine in a saved state. */
  savedState: { at: 84, type: u8 },
  // 85..511: reserved, zeros.
});
export type Footer = Decoded<typeof FOOTER.fields>;

export const FOOTER_RESERVED_AT = 85;

export const DiskType = { FIXED: 2, DYNAMIC: 3, DIFFERENCING: 4 } as const;
/** A VHD's disk type, from its footer (2 fixed, 3 dynamic, 4 differencing). */
export type VhdDiskType = 'fixed' | 'dynamic' | 'differencing';
export const DISK_TYPE_NAMES: Record<number, VhdDiskType> = { 2: 'fixed', 3: 'dynamic', 4: 'differencing' };

export const FORMAT_VERSION = 0x00010000;
export const FEATURE_RESERVED = 0x2;
/** The data offset of a fixed disk (no dynamic header). */
export const NO_DATA_OFFSET = 0xffffffffffffffffn;
/** Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC). */
export const VHD_EPOCH_UNIX_SECONDS = 946684800;

/** VHD time stamp (seconds since 2000) of a JavaScript time in milliseconds, clamped to the u32 range. */
export function vhdTimestamp(ms: number): number {
  return Math.min(0xffffffff, Math.max(0, Math.floor(ms / 1000) - VHD_EPOCH_UNIX_SECONDS));
}

/** The creator application as text a person can read: NULs shown as "\0". */
export function creatorText(app: string): string {
  return app.replace(/\0/g, '\\0');
}

/** What is wrong with a structure, as data: the open throws the first corruption, check lists all. */
export interface Problem {
  severity: 'corruption' | 'warning';
  reason: ErrorReason;
  message: string;
}

/**
 * The problems of a footer decoded leniently from `bytes` (cookie and checksum included), as
 * found at `where` ("the footer at the end"). Sizes are checked by the layout, which knows the file.
 */
export function footerProblems(f: Footer, bytes: Uint8Array): Problem[] {
  const out: Problem[] = [];
  const bad = (reason: ErrorReason, message: string): void => void out.push({ severity: 'corruption', reason, message });
  const warn = (reason: ErrorReason, message: string): void => void out.push({ severity: 'warning', reason, message });
  if (f.cookie !== FOOTER_COOKIE) {
    bad('BAD_SIGNATURE', `cookie is ${JSON.stringify(f.cookie)}, expected "${FOOTER_COOKIE}"`);
    return out; // not a footer at all: nothing else means anything
  }
  if (!FOOTER.checksumOk(bytes)) {
    bad('BAD_CHECKSUM', `checksum 0x${f.checksum.toString(16)} does not match the bytes (0x${ONES_COMPLEMENT_SUM.compute(bytes.subarray(0, FOOTER_SIZE), 64, 4).toString(16)})`);
  }
  if (f.formatVersion >>> 16 !== 1) bad('BAD_VERSION', `file format version 0x${f.formatVersion.toString(16)}, expected major version 1`);
  if (DISK_TYPE_NAMES[f.diskType] === undefined) bad('BAD_DISK_TYPE', `disk type ${f.diskType} is not fixed (2), dynamic (3) or differencing (4)`);
  if ((f.features & FEATURE_RESERVED) === 0) warn('RESERVED_NONZERO', `features 0x${f.features.toString(16)} lack the reserved bit 0x2 the specification says is always set`);
  if (f.savedState !== 0) warn('SAVED_STATE', `the disk is marked as holding a saved virtual machine state (saved state ${f.savedState})`);
  if (bytes.subarray(FOOTER_RESERVED_AT, FOOTER_SIZE).some((b) => b !== 0)) warn('RESERVED_NONZERO', 'reserved bytes 85 to 511 are not all zero');
  return out;
}
