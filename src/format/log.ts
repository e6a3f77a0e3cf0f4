/** Log structures (§2.3): entry header, zero and data descriptors, data sector. */
import { defineStruct, ascii, u32, u64, u64big, guid, bytes, type Decoded } from '../codec/struct.js';

export const LOG_ENTRY_HEADER = defineStruct('log entry header', 64, {
  signature: { at: 0, type: ascii(4), expect: 'loge' },
  /** CRC-32C over EntryLength bytes, computed by the log code (it spans more than this header). */
  checksum: { at: 4, type: u32 },
  entryLength: { at: 8, type: u32 },
  tail: { at: 12, type: u32 },
  sequenceNumber: { at: 16, type: u64big },
  descriptorCount: { at: 24, type: u32 },
  reserved: { at: 28, type: u32 },
  logGuid: { at: 32, type: guid },
  flushedFileOffset: { at: 48, type: u64 },
  lastFileOffset: { at: 56, type: u64 },
});
export type LogEntryHeader = Decoded<typeof LOG_ENTRY_HEADER.fields>;

export const LOG_ZERO_DESCRIPTOR = defineStruct('log zero descriptor', 32, {
  signature: { at: 0, type: ascii(4), expect: 'zero' },
  reserved: { at: 4, type: u32 },
  zeroLength: { at: 8, type: u64 },
  fileOffset: { at: 16, type: u64 },
  sequenceNumber: { at: 24, type: u64big },
});
export type LogZeroDescriptor = Decoded<typeof LOG_ZERO_DESCRIPTOR.fields>;

export const LOG_DATA_DESCRIPTOR = defineStruct('log data descriptor', 32, {
  signature: { at: 0, type: ascii(4), expect: 'desc' },
  trailingBytes: { at: 4, type: bytes(4) },
  leadingBytes: { at: 8, type: bytes(8) },
  fileOffset: { at: 16, type: u64 },
  sequenceNumber: { at: 24, type: u64big },
});
export type LogDataDescriptor = Decoded<typeof LOG_DATA_DESCRIPTOR.fields>;

export const LOG_DATA_SECTOR = defineStruct('log data sector', 4096, {
  signature: { at: 0, type: ascii(4), expect: 'data' },
  sequenceHigh: { at: 4, type: u32 },
  data: { at: 8, type: bytes(4084) },
  sequenceLow: { at: 4092, type: u32 },
});
export type LogDataSector = Decoded<typeof LOG_DATA_SECTOR.fields>;

export const LOG_DESCRIPTOR_SIZE = 32;
/** Descriptors in the first descriptor sector (after the 64-byte entry header) and in each later one. */
export const DESCRIPTORS_IN_FIRST_SECTOR = 126;
export const DESCRIPTORS_PER_SECTOR = 128;

/** 4 KiB sectors the descriptors of an entry occupy. */
export function descriptorSectors(descriptorCount: number): number {
  if (descriptorCount <= DESCRIPTORS_IN_FIRST_SECTOR) return 1;
  return 1 + Math.ceil((descriptorCount - DESCRIPTORS_IN_FIRST_SECTOR) / DESCRIPTORS_PER_SECTOR);
}
