/**
 * Log entries (§2.3), pure codecs over the log's bytes: parsing and validating an entry of the
 * ring, finding the active sequence (§2.3.3), checking where a sequence may write, and encoding
 * an entry. The driver reads the ring and applies the result (to an overlay on read-only opens,
 * to the file otherwise), and places new entries in the ring (driver/log-writer.ts).
 */
import { crc32cWithZeroField } from '../codec/crc32c.js';
import { viewOf } from '../codec/struct.js';
import { VhdxError } from '../errors.js';
import { HEADER_OFFSETS, HEADER_SECTION_SIZE, LOG_SECTOR_SIZE, OBJECT_ALIGNMENT, REGION_TABLE_OFFSETS } from './constants.js';
import {
  DESCRIPTORS_IN_FIRST_SECTOR,
  DESCRIPTORS_PER_SECTOR,
  LOG_DATA_DESCRIPTOR,
  LOG_DATA_SECTOR,
  LOG_DESCRIPTOR_SIZE,
  LOG_ENTRY_HEADER,
  LOG_ZERO_DESCRIPTOR,
  descriptorSectors,
  type LogEntryHeader,
} from './log.js';
import { fatal, problemError, type Parsed, type Problem } from './problem.js';

/** Where the current header puts the log, and whether it must be replayed. */
export interface LogPlacement {
  logOffset: number;
  logLength: number;
  /** LogGuid is not nil: the log holds entries not yet applied. */
  dirty: boolean;
}

/**
 * Check the log's place (from the current header) in a file of `fileSize` bytes: 1 MiB aligned,
 * after the header section, inside the file; a dirty log is not empty.
 */
export function parseLogPlacement(placement: LogPlacement, fileSize: number): Parsed<LogPlacement> {
  const { logOffset, logLength, dirty } = placement;
  const stop = (reason: Problem['reason'], message: string): Parsed<LogPlacement> => ({ value: null, problems: [fatal(reason, message, 'log', logOffset)] });
  if (logLength % OBJECT_ALIGNMENT !== 0 || logOffset % OBJECT_ALIGNMENT !== 0) return stop('LOG_MISALIGNED', `log at ${logOffset} of ${logLength} bytes is not 1 MiB aligned`);
  if (logLength > 0 && logOffset < HEADER_SECTION_SIZE) return stop('LOG_OVERLAP', `log at ${logOffset} lies inside the header section`);
  if (logOffset + logLength > fileSize && (dirty || logLength > 0)) {
    return stop('LOG_OUT_OF_BOUNDS', `log at ${logOffset} of ${logLength} bytes ends beyond the file (${fileSize})`);
  }
  if (dirty && logLength === 0) return stop('LOG_NO_VALID_SEQUENCE', 'LogGuid is set but the log is empty');
  return { value: placement, problems: [] };
}

/** One change an entry makes to the file. */
export type LogWrite =
  | { kind: 'zero'; fileOffset: number; length: number }
  | { kind: 'data'; fileOffset: number; data: Uint8Array };

/**
 * A valid entry of the ring. Its writes are decoded from the ring each time they are walked:
 * nothing is kept per descriptor, so an entry of two million descriptors costs what its header
 * does until it is replayed.
 */
export class LogEntry {
  constructor(
    /** Offset of the entry inside the log. */
    readonly logOffset: number,
    readonly header: LogEntryHeader,
    private readonly log: Uint8Array,
  ) {}

  /** Call `fn` with each change the entry makes, in descriptor order. */
  forEachWrite(fn: (w: LogWrite) => void): void {
    walkDescriptors(this.log, this.logOffset, this.header, fn);
  }

  /** Data sectors the entry carries (one per data descriptor). */
  get dataSectors(): number {
    return this.header.entryLength / LOG_SECTOR_SIZE - descriptorSectors(this.header.descriptorCount);
  }
}

export interface LogSequence {
  entries: LogEntry[];
  head: LogEntry;
}

const descriptorSignature = LOG_ZERO_DESCRIPTOR.field('signature');
const ZERO_SIGNATURE = LOG_ZERO_DESCRIPTOR.fields.signature.expect;
const DATA_SIGNATURE = LOG_DATA_DESCRIPTOR.fields.signature.expect;
const zeroSequence = LOG_ZERO_DESCRIPTOR.field('sequenceNumber');
const zeroFileOffset = LOG_ZERO_DESCRIPTOR.field('fileOffset');
const zeroLength = LOG_ZERO_DESCRIPTOR.field('zeroLength');

/** Bytes of the ring from `offset`, wrapping at the end. */
function ringSlice(log: Uint8Array, offset: number, length: number): Uint8Array {
  if (offset + length <= log.length) return log.subarray(offset, offset + length);
  const out = new Uint8Array(length);
  const first = log.length - offset;
  out.set(log.subarray(offset), 0);
  out.set(log.subarray(0, length - first), first);
  return out;
}

/**
 * Parse and fully validate the entry at `offset` of the ring, or return null when it is not a
 * valid entry of log `logGuid`.
 */
export function parseLogEntry(log: Uint8Array, offset: number, logGuid: string): LogEntry | null {
  const L = log.length;
  const first = log.subarray(offset, offset + LOG_SECTOR_SIZE);
  if (first.length < LOG_SECTOR_SIZE || !LOG_ENTRY_HEADER.signatureOk(first)) return null;
  let h: LogEntryHeader;
  try {
    h = LOG_ENTRY_HEADER.decode(first);
  } catch {
    return null;
  }
  if (h.logGuid !== logGuid) return null;
  if (h.entryLength < LOG_SECTOR_SIZE || h.entryLength % LOG_SECTOR_SIZE !== 0 || h.entryLength > L) return null;
  if (h.tail % LOG_SECTOR_SIZE !== 0 || h.tail >= L) return null;
  if (h.sequenceNumber === 0n) return null;
  const sectors = h.entryLength / LOG_SECTOR_SIZE;
  // Each descriptor takes 32 bytes; at most one data sector per descriptor. Bound before looping.
  if (h.descriptorCount > sectors * (LOG_SECTOR_SIZE / LOG_DESCRIPTOR_SIZE)) return null;
  const descSectors = descriptorSectors(h.descriptorCount);
  if (descSectors > sectors) return null;

  // Check descriptors and data sectors in place, sector by sector, before the checksum: none of
  // an entry's later sectors can then begin another entry, so scanning a ring whose every sector
  // claims a ring-sized entry costs one pass over the ring instead of one pass per sector.
  // An entry is its descriptor sectors and one data sector per data descriptor, nothing more.
  if (walkDescriptors(log, offset, h) !== sectors) return null;
  const entry = ringSlice(log, offset, h.entryLength);
  if (viewOf(entry).getUint32(4, true) !== crc32cWithZeroField(entry, 4)) return null;
  return new LogEntry(offset, h, log);
}

/**
 * Walk the descriptors of the entry at `offset` of the ring (header `h`, already checked), each
 * checked with the data sector of each data descriptor; with `fn`, hand it every write in order.
 * Returns the number of sectors the descriptors and their data sectors take, or -1 at the first
 * thing that is not valid.
 */
function walkDescriptors(log: Uint8Array, offset: number, h: LogEntryHeader, fn?: (w: LogWrite) => void): number {
  const L = log.length;
  const view = viewOf(log);
  const sectors = h.entryLength / LOG_SECTOR_SIZE;
  /** Ring offset of byte `at` of the entry (sectors never straddle the ring's end: L is a multiple of 4 KiB). */
  const ringAt = (at: number): number => ((offset + at - (at % LOG_SECTOR_SIZE)) % L) + (at % LOG_SECTOR_SIZE);
  let dataSector = descriptorSectors(h.descriptorCount);
  for (let i = 0; i < h.descriptorCount; i++) {
    const d = ringAt(64 + i * LOG_DESCRIPTOR_SIZE);
    let w: LogWrite | null = null;
    try {
      const sig = descriptorSignature(view, log, d);
      if (sig === ZERO_SIGNATURE) {
        // Zero descriptors are the ones a log can hold millions of: read their fields alone.
        if (zeroSequence(view, log, d) !== h.sequenceNumber) return -1;
        const fileOffset = zeroFileOffset(view, log, d);
        const length = zeroLength(view, log, d);
        if (fileOffset % LOG_SECTOR_SIZE !== 0 || length % LOG_SECTOR_SIZE !== 0) return -1;
        if (fn) w = { kind: 'zero', fileOffset, length };
      } else if (sig === DATA_SIGNATURE) {
        const dd = LOG_DATA_DESCRIPTOR.decode(log.subarray(d, d + LOG_DESCRIPTOR_SIZE));
        if (dd.sequenceNumber !== h.sequenceNumber || dd.fileOffset % LOG_SECTOR_SIZE !== 0) return -1;
        if (dataSector >= sectors) return -1;
        const at = ringAt(dataSector * LOG_SECTOR_SIZE);
        const s = LOG_DATA_SECTOR.decode(log.subarray(at, at + LOG_SECTOR_SIZE));
        const seq = (BigInt(s.sequenceHigh) << 32n) | BigInt(s.sequenceLow);
        if (seq !== h.sequenceNumber) return -1;
        if (fn) {
          // The 4 KiB written: leading 8 bytes and trailing 4 from the descriptor, the middle from the sector.
          const data = new Uint8Array(LOG_SECTOR_SIZE);
          data.set(dd.leadingBytes, 0);
          data.set(s.data, 8);
          data.set(dd.trailingBytes, LOG_SECTOR_SIZE - 4);
          w = { kind: 'data', fileOffset: dd.fileOffset, data };
        }
        dataSector++;
      } else {
        return -1;
      }
    } catch {
      return -1;
    }
    // Outside the try: what `fn` throws is the caller's.
    if (w) fn!(w);
  }
  return dataSector;
}

/**
 * Find the active sequence: the valid sequence whose head has the highest sequence number.
 * Returns null when the log holds no valid sequence.
 */
export function findActiveSequence(log: Uint8Array, logGuid: string): LogSequence | null {
  const L = log.length;
  const memo = new Map<number, LogEntry | null>();
  const entryAt = (o: number): LogEntry | null => {
    let e = memo.get(o);
    if (e === undefined) {
      e = parseLogEntry(log, o, logGuid);
      memo.set(o, e);
    }
    return e;
  };
  let best: LogSequence | null = null;
  // An entry reached inside an earlier chain that ended on an invalid successor starts only a
  // suffix of that chain, with the same head: skipping it keeps the search linear.
  const covered = new Set<number>();
  for (let start = 0; start < L; start += LOG_SECTOR_SIZE) {
    if (covered.has(start)) continue;
    const first = entryAt(start);
    if (!first) continue;
    const chain: LogEntry[] = [first];
    let used = first.header.entryLength;
    let endedOnInvalid = true;
    for (;;) {
      const last = chain[chain.length - 1]!;
      const nextOffset = (last.logOffset + last.header.entryLength) % L;
      const next = entryAt(nextOffset);
      if (!next || next.header.sequenceNumber !== last.header.sequenceNumber + 1n) break;
      if (used + next.header.entryLength > L) {
        endedOnInvalid = false;
        break;
      }
      used += next.header.entryLength;
      chain.push(next);
    }
    if (endedOnInvalid) for (let i = 1; i < chain.length; i++) covered.add(chain[i]!.logOffset);
    const head = chain[chain.length - 1]!;
    const tailIndex = chain.findIndex((e) => e.logOffset === head.header.tail);
    if (tailIndex < 0) continue;
    if (!best || head.header.sequenceNumber > best.head.header.sequenceNumber) {
      best = { entries: chain.slice(tailIndex), head };
    }
  }
  return best;
}

/**
 * The largest file a VHDX can need: 64 TiB of payload plus every other structure (a 512 MiB BAT,
 * sector bitmaps of a 64 TiB differencing disk, the log, metadata) with room to spare.
 */
export const MAX_IMAGE_FILE_SIZE = 64 * 2 ** 40 + 64 * 2 ** 30;

/**
 * Where a sequence writes that the log may not, before any of it is applied: the file
 * identifier or the headers (region tables, at 192 KiB and 256 KiB, and everything after 1 MiB
 * are allowed), anything past the head's LastFileOffset, the size that holds every structure;
 * or a LastFileOffset larger than any VHDX can be. Null when the sequence keeps to its place.
 * The open then bounds both by what the replayed image's structures need (open.ts, `replayLimit`).
 */
export function sequenceTargetProblem(seq: LogSequence, logOffset: number): Problem | null {
  const forbiddenEnd = REGION_TABLE_OFFSETS[0];
  const last = seq.head.header.lastFileOffset;
  if (last > MAX_IMAGE_FILE_SIZE) {
    return fatal('LOG_REPLAY_FAILED', `log entry ${seq.head.header.sequenceNumber} has LastFileOffset ${last}, larger than any VHDX file (${MAX_IMAGE_FILE_SIZE})`, 'log', logOffset + seq.head.logOffset);
  }
  for (const e of seq.entries) {
    let found: Problem | null = null;
    e.forEachWrite((w) => {
      if (found) return;
      const len = w.kind === 'zero' ? w.length : w.data.length;
      const at = logOffset + e.logOffset;
      if (w.fileOffset < forbiddenEnd) {
        found = fatal(
          'LOG_REPLAY_FAILED',
          `log entry ${e.header.sequenceNumber} writes to file offset ${w.fileOffset}, inside the identifier or headers (${HEADER_OFFSETS.join(', ')})`,
          'log',
          at,
        );
      } else if (w.fileOffset + len > last) {
        found = fatal('LOG_REPLAY_FAILED', `log entry ${e.header.sequenceNumber} writes ${len} bytes at ${w.fileOffset}, past LastFileOffset ${last}`, 'log', at);
      }
    });
    if (found) return found;
  }
  return null;
}

/** `sequenceTargetProblem`, thrown. */
export function checkSequenceTargets(seq: LogSequence, logOffset: number): void {
  const p = sequenceTargetProblem(seq, logOffset);
  if (p) throw problemError(p);
}

export interface LogEntryFields {
  sequenceNumber: bigint;
  /** Log offset of the oldest entry of the sequence (this writer: the entry's own offset). */
  tail: number;
  logGuid: string;
  flushedFileOffset: number;
  lastFileOffset: number;
  writes: readonly LogWrite[];
}

/** Bytes an entry holding these writes takes in the ring. */
export function logEntryLength(writes: readonly LogWrite[]): number {
  const data = writes.filter((w) => w.kind === 'data').length;
  return (descriptorSectors(writes.length) + data) * LOG_SECTOR_SIZE;
}

/** The most writes of 4 KiB data sectors one entry can carry in a ring of `logLength` bytes. */
export function maxDataWritesPerEntry(logLength: number): number {
  const sectors = logLength / LOG_SECTOR_SIZE;
  // n data sectors need descriptorSectors(n) + n <= sectors.
  let n = Math.max(0, sectors - 1);
  while (n > 0 && descriptorSectors(n) + n > sectors) n--;
  return n;
}

/** Encode one complete entry: header and descriptors, then one data sector per data write. */
export function encodeLogEntry(f: LogEntryFields): Uint8Array {
  for (const w of f.writes) {
    const len = w.kind === 'data' ? w.data.length : w.length;
    if (w.fileOffset % LOG_SECTOR_SIZE !== 0 || len % LOG_SECTOR_SIZE !== 0 || (w.kind === 'data' && len !== LOG_SECTOR_SIZE)) {
      throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `log write at ${w.fileOffset} of ${len} bytes is not one aligned 4 KiB sector (or an aligned zero range)`);
    }
  }
  const length = logEntryLength(f.writes);
  const entry = new Uint8Array(length);
  LOG_ENTRY_HEADER.encode(
    {
      checksum: 0,
      entryLength: length,
      tail: f.tail,
      sequenceNumber: f.sequenceNumber,
      descriptorCount: f.writes.length,
      reserved: 0,
      logGuid: f.logGuid,
      flushedFileOffset: f.flushedFileOffset,
      lastFileOffset: f.lastFileOffset,
    },
    entry,
    0,
  );
  let dataSector = descriptorSectors(f.writes.length);
  f.writes.forEach((w, i) => {
    // Descriptor i: after the 64-byte header in sector 0, then 128 per later sector.
    const at =
      i < DESCRIPTORS_IN_FIRST_SECTOR
        ? 64 + i * LOG_DESCRIPTOR_SIZE
        : LOG_SECTOR_SIZE * (1 + Math.floor((i - DESCRIPTORS_IN_FIRST_SECTOR) / DESCRIPTORS_PER_SECTOR)) +
          ((i - DESCRIPTORS_IN_FIRST_SECTOR) % DESCRIPTORS_PER_SECTOR) * LOG_DESCRIPTOR_SIZE;
    if (w.kind === 'zero') {
      LOG_ZERO_DESCRIPTOR.encode({ reserved: 0, zeroLength: w.length, fileOffset: w.fileOffset, sequenceNumber: f.sequenceNumber }, entry, at);
    } else {
      LOG_DATA_DESCRIPTOR.encode(
        {
          trailingBytes: w.data.subarray(LOG_SECTOR_SIZE - 4),
          leadingBytes: w.data.subarray(0, 8),
          fileOffset: w.fileOffset,
          sequenceNumber: f.sequenceNumber,
        },
        entry,
        at,
      );
      LOG_DATA_SECTOR.encode(
        {
          sequenceHigh: Number(f.sequenceNumber >> 32n),
          data: w.data.subarray(8, LOG_SECTOR_SIZE - 4),
          sequenceLow: Number(f.sequenceNumber & 0xffffffffn),
        },
        entry,
        dataSector * LOG_SECTOR_SIZE,
      );
      dataSector++;
    }
  });
  viewOf(entry).setUint32(4, crc32cWithZeroField(entry, 4), true);
  return entry;
}

