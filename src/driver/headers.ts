/**
 * Header updates (§2.2.2.1). Headers never go through the log: the new header (sequence number
 * + 1, fresh checksum) is written over the non-current slot and flushed, which makes it current;
 * then the same is done once more so both slots hold the new state. A torn write of either slot
 * leaves the other, valid one current.
 */
import { HEADER_OFFSETS } from '../format/constants.js';
import { HEADER, type Header, type HeaderCopy } from '../format/header.js';
import type { WritableSource } from '../io/source.js';

/** The header a session writes from: the current one, with its slot. */
export type CurrentHeader = HeaderCopy;

export type HeaderChanges = Partial<Pick<Header, 'fileWriteGuid' | 'dataWriteGuid' | 'logGuid' | 'logOffset' | 'logLength'>>;

/** Write the updated header to both slots, flushing after each. Returns the new current header. */
export async function updateHeaders(file: WritableSource, current: CurrentHeader, changes: HeaderChanges): Promise<CurrentHeader> {
  let cur = current;
  for (let i = 0; i < 2; i++) {
    const slot: 1 | 2 = cur.slot === 1 ? 2 : 1;
    const next: Header = { ...cur, ...changes, sequenceNumber: cur.sequenceNumber + 1n, signature: 'head', checksum: 0 };
    await file.write(slot === 1 ? HEADER_OFFSETS[0] : HEADER_OFFSETS[1], HEADER.encode(next));
    await file.flush();
    cur = { ...next, slot };
  }
  return cur;
}
