/**
 * Reply encoders: simple replies and structured reply chunks, written into a buffer the caller
 * provides (`put*`, at a position, returning the position after) or returned whole. Pure: no
 * socket, no device. Also the two decisions about what a reply holds that follow from block
 * status alone: an extent's base:allocation flags, and how a READ splits into data and holes.
 */
import type { Extent } from '../device/block-device.js';
import {
  CHUNK_HEADER_SIZE,
  Chunk,
  Cmd,
  REPLY_FLAG_DONE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_REPLY_MAGIC,
  putU64,
  type Cookie,
} from './protocol.js';

/** An OFFSET_DATA chunk before its data: header and u64 offset. */
export const DATA_CHUNK_HEADER_SIZE = CHUNK_HEADER_SIZE + 8;
/** An OFFSET_HOLE chunk: header, u64 offset, u32 length. */
export const HOLE_CHUNK_SIZE = CHUNK_HEADER_SIZE + 12;
/** Error messages are cut to this many bytes: far below qemu's 1000-byte limit on non-data chunks. */
export const MAX_MESSAGE_BYTES = 200;

/**
 * The cookie's 8 bytes at `at`. Through a DataView over scratch bytes: Buffer.writeBigUInt64BE
 * range-checks in BigInt arithmetic and costs three times as much, once per reply.
 */
const cookieBytes = new Uint8Array(8);
const cookieView = new DataView(cookieBytes.buffer);
function putCookie(out: Buffer, at: number, cookie: Cookie): void {
  cookieView.setBigUint64(0, cookie);
  out.set(cookieBytes, at);
}

/** Simple reply (16 bytes): magic, error, cookie. */
export function putSimpleReply(out: Buffer, at: number, cookie: Cookie, errno: number): number {
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  out.writeUInt32BE(errno, at + 4);
  putCookie(out, at + 8, cookie);
  return at + SIMPLE_REPLY_SIZE;
}

/** Structured chunk header (20 bytes): magic, flags, type, cookie, payload length. */
export function putChunkHeader(out: Buffer, at: number, flags: number, type: Chunk, cookie: Cookie, length: number): number {
  out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  out.writeUInt16BE(flags, at + 4);
  out.writeUInt16BE(type, at + 6);
  putCookie(out, at + 8, cookie);
  out.writeUInt32BE(length, at + 16);
  return at + CHUNK_HEADER_SIZE;
}

/** NONE chunk with DONE: success with nothing to carry (20 bytes). */
export function putNoneChunk(out: Buffer, at: number, cookie: Cookie): number {
  return putChunkHeader(out, at, REPLY_FLAG_DONE, Chunk.NONE, cookie, 0);
}

/**
 * OFFSET_DATA chunk up to its data: header and `offset` (28 bytes). The caller puts the
 * `dataLength` bytes at the position returned.
 */
export function putDataChunkHeader(out: Buffer, at: number, done: boolean, cookie: Cookie, offset: number, dataLength: number): number {
  const p = putChunkHeader(out, at, done ? REPLY_FLAG_DONE : 0, Chunk.OFFSET_DATA, cookie, 8 + dataLength);
  putU64(out, offset, p);
  return p + 8;
}

/** OFFSET_HOLE chunk: `length` bytes at `offset` read as zeros (32 bytes). */
export function putHoleChunk(out: Buffer, at: number, done: boolean, cookie: Cookie, offset: number, length: number): number {
  const p = putChunkHeader(out, at, done ? REPLY_FLAG_DONE : 0, Chunk.OFFSET_HOLE, cookie, 12);
  putU64(out, offset, p);
  out.writeUInt32BE(length, p + 8);
  return p + 12;
}

/** Bytes of a BLOCK_STATUS chunk with `n` extents. */
export function blockStatusChunkSize(n: number): number {
  return CHUNK_HEADER_SIZE + 4 + 8 * n;
}

/**
 * BLOCK_STATUS chunk with DONE: the context id, then `pairs` as [length, flags] pairs of u32
 * (pairs.length / 2 extents).
 */
export function putBlockStatusChunk(out: Buffer, at: number, cookie: Cookie, context: number, pairs: readonly number[]): number {
  const p = putChunkHeader(out, at, REPLY_FLAG_DONE, Chunk.BLOCK_STATUS, cookie, 4 + 4 * pairs.length);
  out.writeUInt32BE(context, p);
  for (let i = 0; i < pairs.length; i++) out.writeUInt32BE(pairs[i]!, p + 4 + 4 * i);
  return p + 4 + 4 * pairs.length;
}

/** ERROR chunk with DONE: errno, u16 message length, message (bytes, already cut to size). */
export function putErrorChunk(out: Buffer, at: number, cookie: Cookie, errno: number, message: Uint8Array): number {
  const p = putChunkHeader(out, at, REPLY_FLAG_DONE, Chunk.ERROR, cookie, 6 + message.length);
  out.writeUInt32BE(errno, p);
  out.writeUInt16BE(message.length, p + 4);
  out.set(message, p + 6);
  return p + 6 + message.length;
}

/** A simple reply on its own. */
export function simpleReply(cookie: Cookie, errno: number): Buffer {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  putSimpleReply(out, 0, cookie, errno);
  return out;
}

/**
 * READ and BLOCK_STATUS must be answered with structured replies once they are on (they carry
 * data); every other command may use a simple reply, which every client reads.
 */
function wantsChunks(command: number, structured: boolean): boolean {
  return structured && (command === Cmd.READ || command === Cmd.BLOCK_STATUS);
}

/** Success with nothing to carry: a NONE chunk where a chunk is needed, else a simple reply. */
export function successReply(command: number, cookie: Cookie, structured: boolean): Buffer {
  if (!wantsChunks(command, structured)) return simpleReply(cookie, 0);
  const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
  putNoneChunk(out, 0, cookie);
  return out;
}

/**
 * Refuse a request with `errno`: an ERROR chunk carrying `message` (cut to MAX_MESSAGE_BYTES at a
 * character boundary) where a chunk is needed, else a simple reply, which has no room for it.
 */
export function errorReply(command: number, cookie: Cookie, errno: number, message: string, structured: boolean): Buffer {
  if (!wantsChunks(command, structured)) return simpleReply(cookie, errno);
  const msg = utf8Prefix(message, MAX_MESSAGE_BYTES);
  const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 6 + msg.length);
  putErrorChunk(out, 0, cookie, errno, msg);
  return out;
}

/** At most `max` bytes of `text` in UTF-8, cut at a character boundary. */
function utf8Prefix(text: string, max: number): Buffer {
  const b = Buffer.from(text.length > max ? text.slice(0, max) : text);
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // back off to the start of a character
  return b.subarray(0, end);
}

/**
 * An extent's base:allocation flags, as qemu-nbd gives them: data 0; zeros that keep their
 * storage (a fixed disk's) ZERO, zeros with none behind them HOLE|ZERO; unallocated ranges that
 * show a parent's data (`unallocatedIsZero` false: a differencing image served alone) 0.
 */
export function extentStatus(e: Extent, unallocatedIsZero: boolean): number {
  if (e.type === 'data' || (e.type === 'unallocated' && !unallocatedIsZero)) return 0;
  return e.stored ? STATE_ZERO : STATE_HOLE | STATE_ZERO;
}

/**
 * The [length, flags] pairs of a BLOCK_STATUS reply for [offset, offset + length): extents
 * clamped to the range, neighbours with equal flags merged, a gap the device left undescribed
 * reported as 0, at most `max` pairs (the client asks again for the rest). Never empty.
 */
export function statusPairs(extents: readonly Extent[], offset: number, length: number, max: number, unallocatedIsZero: boolean): number[] {
  const end = offset + length;
  const pairs: number[] = [];
  let pos = offset;
  const add = (n: number, status: number): boolean => {
    const k = pairs.length;
    if (k > 0 && pairs[k - 1] === status) pairs[k - 2]! += n;
    else if (k / 2 >= max) return false;
    else pairs.push(n, status);
    pos += n;
    return true;
  };
  for (const e of extents) {
    if (pos >= end) break;
    const eEnd = Math.min(e.offset + e.length, end);
    if (eEnd <= pos) continue;
    if (e.offset > pos && !add(e.offset - pos, 0)) break;
    if (!add(eEnd - pos, extentStatus(e, unallocatedIsZero))) break;
  }
  if (pairs.length === 0) pairs.push(length, 0);
  return pairs;
}

/** A piece of a READ reply: bytes to send as data, or a hole that reads as zeros. */
export interface ReadPiece {
  offset: number;
  length: number;
  hole: boolean;
}

/**
 * How a READ of [offset, offset + length) splits into data and hole chunks, from block status:
 * ranges that read as zeros are holes, everything else (gaps the device left undescribed
 * included) is data, neighbours of one kind merged. Null when one data chunk is as short: the
 * read lies in one data extent, or its holes are too small to pay for their chunk headers (so a
 * READ reply never passes its length + 28 bytes).
 */
export function readPieces(extents: readonly Extent[], offset: number, length: number, unallocatedIsZero: boolean): ReadPiece[] | null {
  const end = offset + length;
  const first = extents[0];
  if (first && first.type === 'data' && first.offset <= offset && first.offset + first.length >= end) return null;
  const pieces: ReadPiece[] = [];
  let pos = offset;
  const add = (n: number, hole: boolean): void => {
    const last = pieces[pieces.length - 1];
    if (last && last.hole === hole) last.length += n;
    else pieces.push({ offset: pos, length: n, hole });
    pos += n;
  };
  for (const e of extents) {
    if (pos >= end) break;
    const eEnd = Math.min(e.offset + e.length, end);
    if (eEnd <= pos) continue;
    if (e.offset > pos) add(e.offset - pos, false);
    add(eEnd - pos, (extentStatus(e, unallocatedIsZero) & STATE_ZERO) !== 0);
  }
  if (pos < end) add(end - pos, false);
  return readReplySize(pieces) > DATA_CHUNK_HEADER_SIZE + length ? null : pieces;
}

/** Bytes of the reply `pieces` make: a hole chunk for each hole, a data chunk for each data piece. */
export function readReplySize(pieces: readonly ReadPiece[]): number {
  let total = 0;
  for (const p of pieces) total += p.hole ? HOLE_CHUNK_SIZE : DATA_CHUNK_HEADER_SIZE + p.length;
  return total;
}
