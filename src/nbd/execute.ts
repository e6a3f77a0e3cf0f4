/**
 * Carrying out a decoded request: each command with the device capability it needs (as nbdkit
 * pairs its operations with `can_*`), its reply encoded whole in one buffer. A failure rejects;
 * Transmission answers it with the error's NBD errno.
 *
 * | command       | needs                                   | advertised by (export.ts)        |
 * |---------------|-----------------------------------------|----------------------------------|
 * | READ          | read; blockStatus for hole chunks       | always; holes: can.extents       |
 * | WRITE         | a writable device; FUA: can.fua, else a flush | not READ_ONLY; SEND_FUA    |
 * | FLUSH         | flush                                   | SEND_FLUSH                       |
 * | TRIM          | discard                                 | SEND_TRIM: can.discard           |
 * | WRITE_ZEROES  | writeZeroes; FAST_ZERO: can.fastZero     | SEND_WRITE_ZEROES: can.zero      |
 * | BLOCK_STATUS  | blockStatus (without can.extents: all data) | a selected base:allocation   |
 * | CACHE         | nothing (answered by Transmission)      | SEND_CACHE                       |
 */
import type { BlockDevice, Extent, WritableBlockDevice } from '../device/block-device.js';
import { VhdxError } from '../errors.js';
import type { Request } from './decode.js';
import {
  blockStatusChunkSize,
  putBlockStatusChunk,
  putDataChunkHeader,
  putHoleChunk,
  putSimpleReply,
  readPieces,
  readReplySize,
  simpleReply,
  statusPairs,
  DATA_CHUNK_HEADER_SIZE,
} from './encode.js';
import type { NbdExport } from './export.js';
import { CFlag, Cmd, SIMPLE_REPLY_SIZE, type Cookie } from './protocol.js';

/** How READ and BLOCK_STATUS replies are made on one connection. */
export interface ReplyForm {
  /** Structured replies were negotiated. */
  readonly structured: boolean;
  /** Whether 'unallocated' extents read as zeros (see NbdExportOptions.unallocatedIsZero). */
  readonly unallocatedIsZero: boolean;
  /** Id of the selected base:allocation context, or null when none was selected. */
  readonly context: number | null;
  /** Most extents in one BLOCK_STATUS reply. */
  readonly maxExtents: number;
}

/**
 * READ: without structured replies, a simple reply and the data. With them: one OFFSET_DATA
 * chunk (always under DF, or when the device has no block status), else hole chunks for what
 * reads as zeros and data chunks, read in parallel straight into the reply, for the rest.
 */
export async function read(dev: BlockDevice, req: Request, form: ReplyForm): Promise<Buffer> {
  const { cookie, offset, length } = req;
  if (!form.structured) {
    const out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + length);
    await dev.read(offset, out.subarray(SIMPLE_REPLY_SIZE));
    putSimpleReply(out, 0, cookie, 0);
    return out;
  }
  if ((req.flags & CFlag.DF) !== 0 || !dev.can.extents) return readData(dev, cookie, offset, length);
  const pieces = readPieces(await dev.blockStatus(offset, length), offset, length, form.unallocatedIsZero);
  if (!pieces) return readData(dev, cookie, offset, length);
  const out = Buffer.allocUnsafe(readReplySize(pieces));
  const reads: Promise<void>[] = [];
  let at = 0;
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i]!;
    const done = i === pieces.length - 1;
    if (p.hole) {
      at = putHoleChunk(out, at, done, cookie, p.offset, p.length);
    } else {
      at = putDataChunkHeader(out, at, done, cookie, p.offset, p.length);
      reads.push(dev.read(p.offset, out.subarray(at, at + p.length)));
      at += p.length;
    }
  }
  await Promise.all(reads);
  return out;
}

/** One OFFSET_DATA chunk (with DONE) holding the whole range, read straight into the reply. */
async function readData(dev: BlockDevice, cookie: Cookie, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(DATA_CHUNK_HEADER_SIZE + length);
  await dev.read(offset, out.subarray(putDataChunkHeader(out, 0, true, cookie, offset, length)));
  return out;
}

/** WRITE: with FUA, durable before the reply (through the device's FUA, or a flush). */
export async function write(exp: NbdExport, req: Request, data: Buffer): Promise<Buffer> {
  const w = writable(exp);
  const fua = (req.flags & CFlag.FUA) !== 0;
  await w.write(req.offset, data, fua && w.can.fua ? { fua: true } : undefined);
  if (fua && !w.can.fua) await w.flush();
  return simpleReply(req.cookie, 0);
}

export async function flush(dev: BlockDevice, req: Request): Promise<Buffer> {
  await dev.flush();
  return simpleReply(req.cookie, 0);
}

/** TRIM (discard) or WRITE_ZEROES (holes allowed unless NO_HOLE; FAST_ZERO passed on). */
export async function zero(exp: NbdExport, req: Request): Promise<Buffer> {
  const w = writable(exp);
  const { flags, offset, length } = req;
  if (req.command === Cmd.TRIM) await w.discard(offset, length);
  else await w.writeZeroes(offset, length, { mayDiscard: (flags & CFlag.NO_HOLE) === 0, fast: (flags & CFlag.FAST_ZERO) !== 0 });
  if ((flags & CFlag.FUA) !== 0) await w.flush();
  return simpleReply(req.cookie, 0);
}

/** Bytes a BLOCK_STATUS reply can come to on this connection. */
export function blockStatusBound(form: ReplyForm): number {
  return blockStatusChunkSize(form.maxExtents);
}

/**
 * BLOCK_STATUS: one chunk for base:allocation (flags by `extentStatus`), extents clamped to the
 * request; with REQ_ONE exactly one. A device without block status is all data.
 */
export async function blockStatus(dev: BlockDevice, req: Request, form: ReplyForm): Promise<Buffer> {
  const { offset, length } = req;
  if (form.context === null) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', 'no metadata context was selected');
  const extents: Extent[] = dev.can.extents ? await dev.blockStatus(offset, length) : [{ offset, length, type: 'data' }];
  const max = (req.flags & CFlag.REQ_ONE) !== 0 ? 1 : form.maxExtents;
  const pairs = statusPairs(extents, offset, length, max, form.unallocatedIsZero);
  const out = Buffer.allocUnsafe(blockStatusChunkSize(pairs.length / 2));
  putBlockStatusChunk(out, 0, req.cookie, form.context, pairs);
  return out;
}

/** The device to change. The decoder refuses changes on a read-only export before they get here. */
function writable(exp: NbdExport): WritableBlockDevice {
  if (!exp.writable) throw new VhdxError('EROFS', 'READ_ONLY', 'the export is read-only');
  return exp.writable;
}
