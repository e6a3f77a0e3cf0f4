/**
 * Writing the log (§2.3): encode metadata changes as log entries and place them in the ring.
 * Every entry this writer makes is its own complete sequence (Tail = the entry itself): the
 * caller applies an entry's changes and flushes them before it writes the next entry, so older
 * entries never need replaying again. The highest sequence number wins at replay, and replaying
 * an entry that was already applied changes nothing.
 *
 * The newest entry must stay intact until the next one is durable: a crash while the next is
 * being written (torn, or only partly landed) leaves the newest as the one to replay. So an entry
 * may take at most half the ring; two consecutive entries then never overlap. (Overwriting it
 * would leave no valid entry, and the image would not open, or an older one, whose replay would
 * undo later BAT changes.)
 */
import { crc32cWithZeroField } from '../codec/crc32c.js';
import { viewOf } from '../codec/struct.js';
import { VhdxError } from '../errors.js';
import { LOG_SECTOR_SIZE } from '../format/constants.js';
import {
  DESCRIPTORS_IN_FIRST_SECTOR,
  DESCRIPTORS_PER_SECTOR,
  LOG_DATA_DESCRIPTOR,
  LOG_DATA_SECTOR,
  LOG_DESCRIPTOR_SIZE,
  LOG_ENTRY_HEADER,
  LOG_ZERO_DESCRIPTOR,
  descriptorSectors,
} from '../format/log.js';
import type { WritableSource } from '../io/source.js';
import type { LogWrite } from './log.js';

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

/** Places entries one after another in the ring, wrapping at its end. */
export class LogRing {
  private next = 0;
  private sequence: bigint;

  constructor(
    private readonly file: WritableSource,
    readonly logOffset: number,
    readonly logLength: number,
    readonly logGuid: string,
    firstSequence = 1n,
  ) {
    this.sequence = firstSequence;
  }

  /**
   * Write one entry carrying `writes` at the ring's next position (not flushed). Returns the
   * entry's sequence number.
   */
  async append(writes: readonly LogWrite[], flushedFileOffset: number, lastFileOffset: number): Promise<bigint> {
    const length = logEntryLength(writes);
    if (length > this.logLength / 2) {
      throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `log entry of ${length} bytes is larger than half the ${this.logLength}-byte log`);
    }
    const sequenceNumber = this.sequence++;
    const at = this.next;
    const entry = encodeLogEntry({ sequenceNumber, tail: at, logGuid: this.logGuid, flushedFileOffset, lastFileOffset, writes });
    const first = Math.min(length, this.logLength - at);
    await this.file.write(this.logOffset + at, entry.subarray(0, first));
    if (first < length) await this.file.write(this.logOffset, entry.subarray(first));
    this.next = (at + length) % this.logLength;
    return sequenceNumber;
  }
}
