/** Region table (§2.2.3): 64 KiB, two copies at 192 KiB and 256 KiB. */
import { defineStruct, ascii, u32, u64, guid, type Decoded } from '../codec/struct.js';
import { REGION_TABLE_SIZE } from './constants.js';

/** The table's header; its checksum covers the whole 64 KiB table. */
export const REGION_TABLE_HEADER = defineStruct('region table', REGION_TABLE_SIZE, {
  signature: { at: 0, type: ascii(4), expect: 'regi' },
  checksum: { at: 4, type: u32, crc32c: true },
  entryCount: { at: 8, type: u32 },
});

export const REGION_TABLE_ENTRY = defineStruct('region table entry', 32, {
  guid: { at: 0, type: guid },
  fileOffset: { at: 16, type: u64 },
  length: { at: 24, type: u32 },
  flags: { at: 28, type: u32 },
});
export type RegionTableEntry = Decoded<typeof REGION_TABLE_ENTRY.fields>;

export const REGION_FLAG_REQUIRED = 1;
export const REGION_ENTRIES_AT = 16;
export const REGION_ENTRY_SIZE = 32;

/** Build a complete 64 KiB region table with a valid checksum. */
export function encodeRegionTable(entries: readonly RegionTableEntry[]): Uint8Array {
  const b = REGION_TABLE_HEADER.encode({ entryCount: entries.length });
  entries.forEach((e, i) => REGION_TABLE_ENTRY.encode(e, b, REGION_ENTRIES_AT + i * REGION_ENTRY_SIZE));
  REGION_TABLE_HEADER.seal(b);
  return b;
}
