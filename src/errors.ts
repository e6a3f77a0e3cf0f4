/**
 * The errno-like class of a {@link VhdxError}, which maps onto NBD error values and CLI exit
 * codes: EINVAL bad input or a damaged file, EIO an I/O failure, ENOSPC no room, EROFS a write to
 * something read-only, EPERM not allowed (a parent from another origin), ENOTSUP not supported,
 * EOVERFLOW a number in the file too large to use, EBUSY locked by another process, ECANCELED aborted, EEXIST the
 * file exists, ENOENT no such file.
 */
export type ErrorCode = 'EINVAL' | 'EIO' | 'ENOSPC' | 'EROFS' | 'EPERM' | 'ENOTSUP' | 'EOVERFLOW' | 'EBUSY' | 'ECANCELED' | 'EEXIST' | 'ENOENT';

/**
 * The stable, fine-grained cause of a {@link VhdxError} or of a check finding, for tests and
 * programs to branch on; the error's structure and offset say where. Grouped below: the VHDX
 * structures, parents and requests; HTTP sources; check-only findings; partition tables; VHD; resize.
 */
export type ErrorReason =
  /** A structure lacks its signature ("head", "regi", "metadata", ...). */
  | 'BAD_SIGNATURE'
  /** A structure's checksum (CRC-32C) does not match its bytes. */
  | 'BAD_CHECKSUM'
  /** A header, log or VHD footer version this library does not know. */
  | 'BAD_VERSION'
  /** Neither header copy is valid. */
  | 'NO_VALID_HEADER'
  /** Neither region table copy is valid. */
  | 'NO_VALID_REGION_TABLE'
  /** A region table holds more entries than it has room for. */
  | 'REGION_ENTRY_COUNT'
  /** A region is not aligned to 1 MiB, or its length is not a multiple of 1 MiB. */
  | 'REGION_MISALIGNED'
  /** Two regions (or VHD structures), or a region and the header section, share bytes. */
  | 'REGION_OVERLAP'
  /** A region is listed twice. */
  | 'REGION_DUPLICATE'
  /** A region (or a VHD dynamic header or BAT) reaches past the end of the file. */
  | 'REGION_OUT_OF_BOUNDS'
  /** The BAT or metadata region is missing. */
  | 'MISSING_REQUIRED_REGION'
  /** A region this library does not know is marked required. */
  | 'UNKNOWN_REQUIRED_REGION'
  /** The metadata table holds more entries than allowed (or has no room for one more). */
  | 'METADATA_ENTRY_COUNT'
  /** A metadata item lies outside the metadata region or is too large. */
  | 'METADATA_ITEM_BOUNDS'
  /** Two metadata items share bytes. */
  | 'METADATA_ITEM_OVERLAP'
  /** A metadata item is listed twice. */
  | 'METADATA_DUPLICATE_ITEM'
  /** A system metadata item the format requires is missing. */
  | 'MISSING_REQUIRED_ITEM'
  /** A metadata item this library does not know is marked required. */
  | 'UNKNOWN_REQUIRED_ITEM'
  /** A system metadata item has the wrong length. */
  | 'BAD_ITEM_LENGTH'
  /** The block size is not a power of two from 1 MiB to 256 MiB. */
  | 'BAD_BLOCK_SIZE'
  /** A logical or physical sector size is not 512 or 4096. */
  | 'BAD_SECTOR_SIZE'
  /** The virtual size is one the format or the file cannot hold (0, not whole sectors, too large). */
  | 'BAD_VIRTUAL_SIZE'
  /** The BAT region cannot hold the entries the disk needs. */
  | 'BAT_TOO_SMALL'
  /** The BAT region is larger than its entries can need. */
  | 'BAT_TOO_LARGE'
  /** A BAT entry has reserved bits set or a file offset its state forbids. */
  | 'BAD_BAT_ENTRY'
  /** A BAT entry names a block past the end of the file. */
  | 'BAT_ENTRY_OUT_OF_BOUNDS'
  /** A BAT entry names a block inside the 1 MiB header section. */
  | 'BAT_ENTRY_IN_HEADER'
  /** A BAT entry holds a state not allowed there (for the disk type, or for a sector bitmap entry). */
  | 'BAD_BLOCK_STATE'
  /** The log is not aligned to 1 MiB, or its length is not a multiple of 1 MiB. */
  | 'LOG_MISALIGNED'
  /** The log shares bytes with the header section or a region. */
  | 'LOG_OVERLAP'
  /** The log reaches past the end of the file. */
  | 'LOG_OUT_OF_BOUNDS'
  /** The header says the log must be replayed, but the log holds no valid sequence of entries. */
  | 'LOG_NO_VALID_SEQUENCE'
  /** The file is shorter than the log's FlushedFileOffset: it was cut after the log was written. */
  | 'LOG_FILE_TRUNCATED'
  /** The log cannot be replayed: too large to replay in memory, or its entries write past what the image's structures need. */
  | 'LOG_REPLAY_FAILED'
  /** The parent locator is malformed, of an unknown type, or lacks what finding the parent needs. */
  | 'BAD_PARENT_LOCATOR'
  /** A differencing disk where this operation does not support one. */
  | 'DIFFERENCING_NOT_SUPPORTED'
  /** A differencing image opened without its parent was asked to read or write (or commit, compact). */
  | 'NO_PARENT'
  /** No file or URL the locator names holds the parent. */
  | 'PARENT_NOT_FOUND'
  /** The parent policy forbids the parent's place (an absolute path, another origin). */
  | 'PARENT_NOT_ALLOWED'
  /** The parent found is not the one the child names (identity, size or sector size differ). */
  | 'PARENT_MISMATCH'
  /** A chain comes back to an image already in it. */
  | 'PARENT_LOOP'
  /** A chain deeper than MAX_CHAIN_DEPTH. */
  | 'CHAIN_TOO_DEEP'
  /** A read returned fewer bytes than the structure needs. */
  | 'SHORT_READ'
  /** The file ends before a structure it must hold. */
  | 'TRUNCATED_FILE'
  /** A request or offset outside the disk or source, or not a whole non-negative number. */
  | 'OUT_OF_RANGE'
  /** A number read from the file is past 2^53 (EOVERFLOW). */
  | 'NUMBER_TOO_LARGE'
  /** The file is not a VHDX image (no "vhdxfile" identifier). */
  | 'NOT_VHDX'
  /** The file is empty. */
  | 'EMPTY_FILE'
  /** The identifier is gone but VHDX headers or region tables are there: refused as raw. */
  | 'DAMAGED_VHDX'
  /** A file cannot be made: its folder does not exist (ENOENT). */
  | 'NO_DIRECTORY'
  /** A change to something opened read-only (EROFS). */
  | 'READ_ONLY'
  /** Another process holds a lock that conflicts with this open (EBUSY). */
  | 'LOCKED'
  /** The file to create exists already (EEXIST). */
  | 'FILE_EXISTS'
  /** The image or source is closed. */
  | 'CLOSED'
  /** The operation's signal was aborted (ECANCELED). */
  | 'ABORTED'
  /** An argument or option the operation cannot take. */
  | 'BAD_ARGUMENT'
  /** The storage failed (the cause holds the system error). */
  | 'IO_ERROR'
  // Sources read over HTTP (src/io/http.ts):
  /** The object behind a URL changed while it was being read (its ETag, Last-Modified or size). */
  | 'SOURCE_CHANGED'
  /** The server answers a range request with the whole object, and the object is too large for that. */
  | 'NO_RANGES'
  /** The server answered with a status that ends the request (404, 403, ...), or kept failing. */
  | 'HTTP_STATUS'
  /** The server sent nothing for longer than the timeout, on every attempt. */
  | 'TIMED_OUT'
  /** An answer that contradicts the request (another range, a body of the wrong length, multipart). */
  | 'BAD_RESPONSE'
  /** Neither the range answer nor a HEAD request gives the object's size. */
  | 'SIZE_UNKNOWN'
  // Findings of `checkImage` that no open raises:
  /** Two blocks, or a block and a structure, share bytes of the file. */
  | 'BLOCK_OVERLAP'
  /** The two region table copies are both valid but differ. */
  | 'REGION_TABLE_MISMATCH'
  /** File space that nothing uses. */
  | 'LEAKED_SPACE'
  /** A reserved field or flag bit is not zero. */
  | 'RESERVED_NONZERO'
  /** The log holds entries to replay. */
  | 'LOG_DIRTY'
  /** A block of a fixed disk is not FULLY_PRESENT. */
  | 'FIXED_BLOCK_NOT_ALLOCATED'
  /** Both headers are valid with the same sequence number. */
  | 'EQUAL_SEQUENCE_NUMBERS'
  /** A check or open skipped part of its work because the image passes a memory bound. */
  | 'LIMIT_EXCEEDED'
  // Findings of the partition-table readers (src/inspect): a damaged table is reported, never thrown.
  /** A GPT header or its partition-entry array fails its CRC-32. */
  | 'GPT_BAD_CRC'
  /** A GPT header's fields are impossible (size, own LBA, usable range, entry size). */
  | 'GPT_BAD_HEADER'
  /** A GPT header's entry count × entry size is larger than any real table. */
  | 'GPT_ENTRY_COUNT'
  /** Neither GPT header can be used. */
  | 'GPT_NO_VALID_HEADER'
  /** The primary GPT is used, but the backup at the last LBA is missing or damaged. */
  | 'GPT_BAD_BACKUP'
  /** The MBR holds partitions beside its GPT-protective entry. */
  | 'GPT_HYBRID_MBR'
  /** A valid GPT without a protective MBR entry (or the other way round). */
  | 'GPT_NO_PROTECTIVE_MBR'
  /** The chain of extended boot records comes back to one already read. */
  | 'MBR_LOOP'
  /** An extended boot record is missing its signature or points outside its extended partition. */
  | 'MBR_BAD_EBR'
  /** A partition ends past the end of the disk. */
  | 'PARTITION_PAST_END'
  /** A partition starts after it ends, outside its table's usable range or its extended partition. */
  | 'PARTITION_BAD_RANGE'
  /** Two partitions share sectors. */
  | 'PARTITION_OVERLAP'
  // VHD (src/vhd): what the older format adds to the reasons above.
  /** No VHD footer ("conectix") at the end of the file, nor a copy at its start. */
  | 'NOT_VHD'
  /** A footer's disk type is not fixed (2), dynamic (3) or differencing (4). */
  | 'BAD_DISK_TYPE'
  /** A dynamic or differencing VHD whose footer at the end is missing or damaged (its copy at offset 0 is good). */
  | 'FOOTER_MISSING'
  /** The footer at the end and its copy at offset 0 are both valid but differ. */
  | 'FOOTER_MISMATCH'
  /** The footer says the disk holds a virtual machine's saved state. */
  | 'SAVED_STATE'
  /** The stored size and the CHS geometry give different disk sizes (readers disagree on which is right). */
  | 'SIZE_RULES_DISAGREE'
  /** The dynamic header's Max Table Entries is not the disk's block count (some readers refuse the file). */
  | 'BAT_SIZE_MISMATCH'
  /** A rule Azure applies to uploaded VHDs is broken (azureProblems). */
  | 'AZURE_RULE'
  // Resize (src/ops/resize.ts).
  /** A smaller size was asked for without the shrink option (--shrink). */
  | 'SHRINK_NOT_ASKED'
  /** A shrink would cut through a partition, a filesystem, the GPT's backup, or data a parent shows. */
  | 'SHRINK_CUTS_DATA';

/** Where a {@link VhdxError} happened, and what caused it. */
export interface VhdxErrorDetails {
  /** Name of the on-disk structure concerned, e.g. "header 2" or "region table 1". */
  structure?: string;
  /** File offset of that structure or field, in bytes. */
  offset?: number;
  /** The error behind this one (an I/O error, an abort reason), kept as `Error.cause`. */
  cause?: unknown;
}

/**
 * The one error type the library throws. `code` is a small errno-like set that maps onto
 * NBD error values and CLI exit codes; `reason` is finer and stable, for tests and programs.
 * `message` ends with the structure and file offset concerned, when known.
 */
export class VhdxError extends Error {
  /** The errno-like class of the error. */
  readonly code: ErrorCode;
  /** The stable cause of the error. */
  readonly reason: ErrorReason;
  /** The on-disk structure concerned (e.g. "header 2"), when there is one. */
  readonly structure: string | undefined;
  /** File offset of that structure or field, in bytes, when known. */
  readonly offset: number | undefined;
  /** The message without the structure and offset `message` ends with (findings list those apart). */
  readonly summary: string;

  /** An error of `code` and `reason`; `details` name the structure, offset and cause. */
  constructor(code: ErrorCode, reason: ErrorReason, message: string, details: VhdxErrorDetails = {}) {
    const where =
      details.structure !== undefined
        ? ` (${details.structure}${details.offset !== undefined ? ` at file offset ${formatOffset(details.offset)}` : ''})`
        : details.offset !== undefined
          ? ` (at file offset ${formatOffset(details.offset)})`
          : '';
    super(message + where, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.name = 'VhdxError';
    this.code = code;
    this.reason = reason;
    this.structure = details.structure;
    this.offset = details.offset;
    this.summary = message;
  }
}

export function formatOffset(offset: number): string {
  return `0x${offset.toString(16)}`;
}

/** Shorthand for the most common kind: the file's content is invalid. */
export function corrupt(reason: ErrorReason, message: string, details: VhdxErrorDetails = {}): VhdxError {
  return new VhdxError('EINVAL', reason, message, details);
}

/**
 * Stop a long operation whose `signal` was aborted: ECANCELED / ABORTED, with the signal's reason
 * as the cause. `what` names the operation ("copy", "commit"...).
 */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new VhdxError('ECANCELED', 'ABORTED', `${what} cancelled`, { cause: signal.reason });
}

/** True when `e` is a {@link VhdxError} (a type guard for catch blocks). */
export function isVhdxError(e: unknown): e is VhdxError {
  return e instanceof VhdxError;
}

/** What a block device is asked to do, as request errors name it. */
export type RequestKind = 'read' | 'write' | 'write zeroes' | 'discard' | 'block status';

/**
 * Refuse a request unless [offset, offset + length) is a range of whole, non-negative, safe
 * numbers inside a disk of `size` bytes. The error names the request as the caller gave it.
 */
export function checkRequestRange(kind: RequestKind, offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `${kind} of ${length} bytes at offset ${offset}: offset and length must be whole numbers from 0 to 2^53`);
  }
  if (offset + length > size) {
    throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `${kind} of ${length} bytes at offset ${offset} is outside the ${size}-byte disk (it ends at ${offset + length})`);
  }
}
