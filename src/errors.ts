/**
 * The one error type the library throws. `code` is a small errno-like set that maps onto
 * NBD error values and CLI exit codes; `reason` is finer and stable, for tests and programs.
 */
export type ErrorCode = 'EINVAL' | 'EIO' | 'ENOSPC' | 'EROFS' | 'EPERM' | 'ENOTSUP' | 'EOVERFLOW' | 'EBUSY' | 'ECANCELED' | 'EEXIST' | 'ENOENT';

export type ErrorReason =
  | 'BAD_SIGNATURE'
  | 'BAD_CHECKSUM'
  | 'BAD_VERSION'
  | 'NO_VALID_HEADER'
  | 'NO_VALID_REGION_TABLE'
  | 'REGION_ENTRY_COUNT'
  | 'REGION_MISALIGNED'
  | 'REGION_OVERLAP'
  | 'REGION_DUPLICATE'
  | 'REGION_OUT_OF_BOUNDS'
  | 'MISSING_REQUIRED_REGION'
  | 'UNKNOWN_REQUIRED_REGION'
  | 'METADATA_ENTRY_COUNT'
  | 'METADATA_ITEM_BOUNDS'
  | 'METADATA_ITEM_OVERLAP'
  | 'METADATA_DUPLICATE_ITEM'
  | 'MISSING_REQUIRED_ITEM'
  | 'UNKNOWN_REQUIRED_ITEM'
  | 'BAD_ITEM_LENGTH'
  | 'BAD_BLOCK_SIZE'
  | 'BAD_SECTOR_SIZE'
  | 'BAD_VIRTUAL_SIZE'
  | 'BAT_TOO_SMALL'
  | 'BAT_TOO_LARGE'
  | 'BAD_BAT_ENTRY'
  | 'BAT_ENTRY_OUT_OF_BOUNDS'
  | 'BAT_ENTRY_IN_HEADER'
  | 'BAD_BLOCK_STATE'
  | 'LOG_MISALIGNED'
  | 'LOG_OVERLAP'
  | 'LOG_OUT_OF_BOUNDS'
  | 'LOG_NO_VALID_SEQUENCE'
  | 'LOG_FILE_TRUNCATED'
  | 'LOG_REPLAY_FAILED'
  | 'BAD_PARENT_LOCATOR'
  | 'DIFFERENCING_NOT_SUPPORTED'
  | 'NO_PARENT'
  | 'PARENT_NOT_FOUND'
  | 'PARENT_NOT_ALLOWED'
  | 'PARENT_MISMATCH'
  | 'PARENT_LOOP'
  | 'CHAIN_TOO_DEEP'
  | 'SHORT_READ'
  | 'TRUNCATED_FILE'
  | 'OUT_OF_RANGE'
  | 'NUMBER_TOO_LARGE'
  | 'NOT_VHDX'
  | 'EMPTY_FILE'
  | 'DAMAGED_VHDX'
  | 'NO_DIRECTORY'
  | 'READ_ONLY'
  | 'LOCKED'
  | 'FILE_EXISTS'
  | 'CLOSED'
  | 'ABORTED'
  | 'BAD_ARGUMENT'
  | 'IO_ERROR'
  // Findings of `checkImage` that no open raises:
  | 'BLOCK_OVERLAP'
  | 'REGION_TABLE_MISMATCH'
  | 'LEAKED_SPACE'
  | 'RESERVED_NONZERO'
  | 'LOG_DIRTY'
  | 'FIXED_BLOCK_NOT_ALLOCATED'
  | 'EQUAL_SEQUENCE_NUMBERS'
  | 'LIMIT_EXCEEDED';

export interface VhdxErrorDetails {
  /** Name of the on-disk structure concerned, e.g. "header 2" or "region table 1". */
  structure?: string;
  /** File offset of that structure or field, in bytes. */
  offset?: number;
  cause?: unknown;
}

export class VhdxError extends Error {
  readonly code: ErrorCode;
  readonly reason: ErrorReason;
  readonly structure: string | undefined;
  readonly offset: number | undefined;

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

export function isVhdxError(e: unknown): e is VhdxError {
  return e instanceof VhdxError;
}
