/**
 * NBD wire constants (fixed newstyle handshake, simple and structured replies) and the mapping
 * from our error codes to NBD error values. Every integer on the wire is big-endian. Names follow
 * the protocol document without the `NBD_` prefix.
 */
import { VhdxError } from '../errors.js';

/** "NBDMAGIC": the first 8 bytes of the server's greeting. */
export const INIT_PASSWD = 0x4e42444d41474943n;
/** "IHAVEOPT": the greeting's second word and the magic of every option request. */
export const OPTION_MAGIC = 0x49484156454f5054n;
/** Magic of every option reply. */
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, u16) and client flags (u32) share their two defined bits. */
export const FLAG_FIXED_NEWSTYLE = 0x1;
export const FLAG_NO_ZEROES = 0x2;
export const SERVER_HANDSHAKE_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

export const enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  PEEK_EXPORT = 4,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

export const enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = 0x80000001,
  ERR_POLICY = 0x80000002,
  ERR_INVALID = 0x80000003,
  ERR_PLATFORM = 0x80000004,
  ERR_TLS_REQD = 0x80000005,
  ERR_UNKNOWN = 0x80000006,
  ERR_SHUTDOWN = 0x80000007,
  ERR_BLOCK_SIZE_REQD = 0x80000008,
  ERR_TOO_BIG = 0x80000009,
}

export const enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

/** Transmission flags (u16), sent with the export's size. */
export const enum TFlag {
  HAS_FLAGS = 0x0001,
  READ_ONLY = 0x0002,
  SEND_FLUSH = 0x0004,
  SEND_FUA = 0x0008,
  ROTATIONAL = 0x0010,
  SEND_TRIM = 0x0020,
  SEND_WRITE_ZEROES = 0x0040,
  SEND_DF = 0x0080,
  CAN_MULTI_CONN = 0x0100,
  SEND_CACHE = 0x0400,
  SEND_FAST_ZERO = 0x0800,
}

export const enum Cmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

/** Command flags (u16). */
export const enum CFlag {
  FUA = 0x01,
  NO_HOLE = 0x02,
  DF = 0x04,
  REQ_ONE = 0x08,
  FAST_ZERO = 0x10,
}

export const enum Chunk {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = 0x8001,
}
export const REPLY_FLAG_DONE = 1;

/** base:allocation status bits. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
export const BASE_ALLOCATION = 'base:allocation';

/** NBD error values (Linux errno numbers, as the protocol fixes them). */
export const enum Errno {
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

/**
 * A request's cookie (the protocol's "handle"): 8 bytes the client chooses and the server echoes
 * in every reply to that request, carried as one u64.
 */
export type Cookie = bigint;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Strings (export names, descriptions, context names) may not be longer (protocol limit). */
export const MAX_STRING = 4096;

/** The NBD error value for a failed device operation. */
export function errnoOf(e: unknown): Errno {
  const code = e instanceof VhdxError ? e.code : (e as { code?: unknown } | null)?.code;
  switch (code) {
    case 'EPERM':
    case 'EROFS':
    case 'EACCES':
      return Errno.EPERM;
    case 'EINVAL':
      return Errno.EINVAL;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return Errno.ENOSPC;
    case 'EOVERFLOW':
      return Errno.EOVERFLOW;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return Errno.ENOTSUP;
    case 'ENOMEM':
      return Errno.ENOMEM;
    default:
      return Errno.EIO;
  }
}

/** Write a u64 that is known to be a safe integer (sizes, offsets) at `at`. */
export function putU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/**
 * A u64 from the wire as a number when it is below 2^53, else -1 (every such value is past the
 * end of any disk we serve, so callers treat -1 as out of range). No BigInt on the hot path.
 */
export function getU64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32BE(at);
  if (hi >= 0x200000) return -1;
  return hi * 0x100000000 + buf.readUInt32BE(at + 4);
}

/** UTF-8 string checks shared by names and queries: length, no NUL, valid UTF-8. */
export function decodeString(bytes: Buffer): string | null {
  if (bytes.length > MAX_STRING || bytes.includes(0)) return null;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}
