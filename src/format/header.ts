/** Header (§2.2.2): a 4 KiB structure in each of the slots at 64 KiB and 128 KiB. */
import { defineStruct, ascii, u16, u32, u64, u64big, guid, type Decoded } from '../codec/struct.js';

export const HEADER = defineStruct('header', 4096, {
  signature: { at: 0, type: ascii(4), expect: 'head' },
  checksum: { at: 4, type: u32, crc32c: true },
  sequenceNumber: { at: 8, type: u64big },
  fileWriteGuid: { at: 16, type: guid },
  dataWriteGuid: { at: 32, type: guid },
  logGuid: { at: 48, type: guid },
  logVersion: { at: 64, type: u16 },
  version: { at: 66, type: u16 },
  logLength: { at: 68, type: u32 },
  logOffset: { at: 72, type: u64 },
});
export type Header = Decoded<typeof HEADER.fields>;
