import type { RequestKind } from '../errors.js';
import type { CopyHint } from '../io/source.js';

/**
 * The block-device interface every format offers (VHDX, raw). Offsets and lengths are bytes.
 * Many requests may be in flight at once.
 */

/** What a range of the virtual disk holds, as block status reports it. */
export type ExtentType =
  /** Data stored in the image (may still be zeros). */
  | 'data'
  /** Allocated as zeros in the image (ZERO, UNMAPPED, UNDEFINED states): reads return zeros. */
  | 'zero'
  /** Not allocated in this image: zeros, or the parent's data for a differencing disk. */
  | 'unallocated';

/** One run of the virtual disk as block status reports it. */
export interface Extent {
  /** Byte offset in the virtual disk. */
  offset: number;
  /** Length in bytes (never 0). */
  length: number;
  /** What the run holds. */
  type: ExtentType;
  /** File offset of the first byte, for 'data' extents whose bytes are contiguous in the file. */
  fileOffset?: number;
  /**
   * For 'zero' and 'unallocated' extents: true when file space stands behind the range anyway
   * (the zero blocks of a fixed disk keep the space the disk was made with). Absent when no
   * storage does: the range is a hole (NBD block status says HOLE|ZERO, as qemu-nbd does). Data
   * is always stored.
   */
  stored?: true;
  /**
   * For differencing chains: which image holds the range (0 = the image itself, 1 its parent,
   * and so on; for `unallocated`, the last image consulted). Absent for images without a parent.
   * `fileOffset` is then an offset in that image's file.
   */
  depth?: number;
}

/** What a device can do beyond read, write and flush; the NBD server advertises its flags from these. */
export interface DeviceCapabilities {
  /** writeZeroes is supported. */
  zero: boolean;
  /** writeZeroes with `fast` can succeed (zeros without writing data). */
  fastZero: boolean;
  /** discard deallocates. */
  discard: boolean;
  /** blockStatus says more than "all data" (false for raw files: finding holes costs a read). */
  extents: boolean;
  /** write with `fua` is done natively; without it a caller flushes after the write. */
  fua: boolean;
}

/** A virtual disk: what every format offers (VHDX, VHD, raw). Offsets and lengths are bytes. */
export interface BlockDevice {
  /** Size of the virtual disk in bytes. */
  readonly size: number;
  /** Logical sector size in bytes (512 or 4096). */
  readonly logicalSectorSize: number;
  /** True when the device was opened read-only: the write methods fail with EROFS. */
  readonly readOnly: boolean;
  /** What the device supports beyond reads and writes. */
  readonly can: DeviceCapabilities;
  /** How a long copy reads the device best: its file's hint (see CopyHint), if any. */
  readonly copyHint?: CopyHint | undefined;
  /** Fill `into` with the bytes at `offset`. The range must lie inside the disk. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /**
   * Extents covering [offset, offset + length) in order, without reading payload. The last
   * extent may end past the range (never past the disk).
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /**
   * Check a request in full without doing any of it: the device is open, the range lies inside
   * it, and a change is allowed. Every request runs this before it touches anything; a caller
   * that does one request in pieces runs it first for the whole. Errors name the request as given.
   */
  checkRequest(kind: RequestKind, offset: number, length: number): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** Close the device and the source under it (a VHDX image first commits its pending changes); a second call does nothing. */
  close(): Promise<void>;
}

/** Options every long operation accepts. */
export interface ProgressOptions {
  /** Called now and then with the work done and the work in all: bytes, or BAT entries for a BAT scan (check, allocation statistics). */
  onProgress?: (done: number, total: number) => void;
  /** Cancels the operation: it rejects with VhdxError ECANCELED / ABORTED. */
  signal?: AbortSignal;
}

/**
 * A block device that can be written (VHDX images opened writable, raw files). `readOnly` is
 * false; the write methods fail with EROFS otherwise.
 */
export interface WritableBlockDevice extends BlockDevice {
  /** Write `data` at `offset`; with `fua`, durable when this returns. */
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void>;
  /** Make the range read as zeros. `fast`: fail with ENOTSUP rather than write zeros as data. */
  writeZeroes(offset: number, length: number, opts?: { mayDiscard?: boolean; fast?: boolean }): Promise<void>;
  /** Deallocate the range where the device can; it reads as zeros after. */
  discard(offset: number, length: number): Promise<void>;
}
