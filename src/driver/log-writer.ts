/**
 * Writing the log (§2.3): place metadata changes, encoded as log entries (format/log-entry.ts),
 * in the ring.
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
import { VhdxError } from '../errors.js';
import { encodeLogEntry, logEntryLength, type LogWrite } from '../format/log-entry.js';
import type { WritableSource } from '../io/source.js';

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
