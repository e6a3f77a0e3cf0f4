/**
 * The rules the format sets on a disk's geometry (§2.6.2): written once, here. Each rule gives
 * what is wrong as a predicate for a subject the caller names ("block size 3 MiB …" in an option
 * error of `create`, "block size 3145728 …" in a corruption an open finds), or null when the
 * value is allowed.
 */
import { MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, MIN_BLOCK_SIZE, OBJECT_ALIGNMENT } from './constants.js';

/** Payload block size: a power of two from 1 MiB to 256 MiB. */
export function blockSizeRule(blockSize: number): string | null {
  const ok = Number.isSafeInteger(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE && (blockSize & (blockSize - 1)) === 0;
  return ok ? null : 'is not a power of two from 1 MiB to 256 MiB';
}

/** Logical and physical sector sizes: 512 or 4096. */
export function sectorSizeRule(sectorSize: number): string | null {
  return sectorSize === 512 || sectorSize === 4096 ? null : 'is not 512 or 4096';
}

/** Virtual size: a positive whole number of logical sectors, at most 64 TiB. */
export function virtualSizeRule(virtualSize: number, logicalSectorSize: number): string | null {
  if (!Number.isSafeInteger(virtualSize) || virtualSize <= 0) return 'is not a positive number of bytes';
  if (virtualSize > MAX_VIRTUAL_SIZE) return "is larger than the format's 64 TiB";
  if (virtualSize % logicalSectorSize !== 0) return `is not a multiple of the ${logicalSectorSize}-byte logical sector size`;
  return null;
}

/** Log length of a new image: a non-zero multiple of 1 MiB that the header's 32-bit field holds. */
export function logSizeRule(logSize: number): string | null {
  const ok = Number.isSafeInteger(logSize) && logSize > 0 && logSize % OBJECT_ALIGNMENT === 0 && logSize <= 0xffffffff;
  return ok ? null : 'is not a non-zero multiple of 1 MiB below 4 GiB';
}
