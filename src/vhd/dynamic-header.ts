/**
 * The dynamic disk header (specification, "Dynamic Disk Header Format"): 1024 bytes at the
 * footer's Data Offset of dynamic and differencing disks, naming the BAT, the block size and,
 * for a differencing disk, its parent. Big-endian; checksum as the footer's.
 */
import { defineStruct, array, ascii, u32be, u64be, u64bigbe, uuid, utf16be, ONES_COMPLEMENT_SUM, type Decoded } from '../codec/struct.js';
import type { ErrorReason } from '../errors.js';
import type { Problem } from './footer.js';
import { PARENT_LOCATOR_COUNT, PARENT_LOCATOR_ENTRY } from './parent-locator.js';

export const DYNAMIC_HEADER_SIZE = 1024;
export const DYNAMIC_HEADER_COOKIE = 'cxsparse';
export const HEADER_VERSION = 0x00010000;
/** The block size the specification names as the default (and qemu, Hyper-V and Virtual PC use). */
export const DEFAULT_VHD_BLOCK_SIZE = 2 * 1024 * 1024;
/** Block sizes we accept: powers of two from one sector to 2^31 bytes (the field is a u32). */
export const MIN_VHD_BLOCK_SIZE = 512;
export const MAX_VHD_BLOCK_SIZE = 2 ** 31;

export const DYNAMIC_HEADER = defineStruct('VHD dynamic header', DYNAMIC_HEADER_SIZE, {
  cookie: { at: 0, type: ascii(8), expect: DYNAMIC_HEADER_COOKIE },
  /** Unused, all ones (the specification says 0xFFFFFFFF; qemu notes Microsoft's tools write 64 bits of ones). */
  dataOffset: { at: 8, type: u64bigbe },
  /** File offset of the BAT. */
  tableOffset: { at: 16, type: u64be },
  headerVersion: { at: 24, type: u32be },
  /** BAT entries: one per block of the disk. */
  maxTableEntries: { at: 28, type: u32be },
  blockSize: { at: 32, type: u32be },
  checksum: { at: 36, type: u32be, checksum: ONES_COMPLEMENT_SUM },
  /** A differencing disk's parent: its footer's unique id... */
  parentUniqueId: { at: 40, type: uuid },
  /** ...its modification time (seconds since 2000) when the child was made... */
  parentTimestamp: { at: 56, type: u32be },
  reserved: { at: 60, type: u32be },
  /** ...and its file name, UTF-16BE. */
  parentUnicodeName: { at: 64, type: utf16be(512) },
  parentLocators: { at: 576, type: array(PARENT_LOCATOR_ENTRY, PARENT_LOCATOR_COUNT) },
  // 768..1023: reserved, zeros.
});
export type DynamicHeader = Decoded<typeof DYNAMIC_HEADER.fields>;

export const DYNAMIC_HEADER_RESERVED_AT = 768;

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * The problems of a dynamic header decoded leniently from `bytes` that need nothing beyond it
 * (placement in the file and the BAT's size are the layout's checks).
 */
export function dynamicHeaderProblems(h: DynamicHeader, bytes: Uint8Array): Problem[] {
  const out: Problem[] = [];
  const bad = (reason: ErrorReason, message: string): void => void out.push({ severity: 'corruption', reason, message });
  const warn = (reason: ErrorReason, message: string): void => void out.push({ severity: 'warning', reason, message });
  if (h.cookie !== DYNAMIC_HEADER_COOKIE) {
    bad('BAD_SIGNATURE', `cookie is ${JSON.stringify(h.cookie)}, expected "${DYNAMIC_HEADER_COOKIE}"`);
    return out;
  }
  if (!DYNAMIC_HEADER.checksumOk(bytes)) bad('BAD_CHECKSUM', `checksum 0x${h.checksum.toString(16)} does not match the bytes`);
  if (h.headerVersion >>> 16 !== 1) bad('BAD_VERSION', `header version 0x${h.headerVersion.toString(16)}, expected major version 1`);
  if (!isPowerOfTwo(h.blockSize) || h.blockSize < MIN_VHD_BLOCK_SIZE || h.blockSize > MAX_VHD_BLOCK_SIZE) {
    bad('BAD_BLOCK_SIZE', `block size ${h.blockSize} is not a power of two from ${MIN_VHD_BLOCK_SIZE} to 2^31`);
  }
  if (h.reserved !== 0 || bytes.subarray(DYNAMIC_HEADER_RESERVED_AT, DYNAMIC_HEADER_SIZE).some((b) => b !== 0)) {
    warn('RESERVED_NONZERO', 'reserved fields are not all zero (7-Zip refuses such a header)');
  }
  return out;
}
