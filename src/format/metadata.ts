/** Metadata region (§2.6): the table at the region start and the system items. */
import { defineStruct, ascii, u16, u32, u64, guid, type Decoded } from '../codec/struct.js';
import { METADATA_TABLE_SIZE } from './constants.js';

export const METADATA_TABLE_HEADER = defineStruct('metadata table', 32, {
  signature: { at: 0, type: ascii(8), expect: 'metadata' },
  reserved: { at: 8, type: u16 },
  entryCount: { at: 10, type: u16 },
});

export const METADATA_TABLE_ENTRY = defineStruct('metadata table entry', 32, {
  itemId: { at: 0, type: guid },
  offset: { at: 16, type: u32 },
  length: { at: 20, type: u32 },
  flags: { at: 24, type: u32 },
});
export type MetadataTableEntry = Decoded<typeof METADATA_TABLE_ENTRY.fields>;

export const METADATA_FLAG_IS_USER = 1;
export const METADATA_FLAG_IS_VIRTUAL_DISK = 2;
export const METADATA_FLAG_IS_REQUIRED = 4;
export const METADATA_ENTRIES_AT = 32;
export const METADATA_ENTRY_SIZE = 32;

export const FILE_PARAMETERS = defineStruct('file parameters', 8, {
  blockSize: { at: 0, type: u32 },
  flags: { at: 4, type: u32 },
});
export type FileParameters = Decoded<typeof FILE_PARAMETERS.fields>;
export const FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED = 1;
export const FILE_PARAMETERS_HAS_PARENT = 2;

export const VIRTUAL_DISK_SIZE = defineStruct('virtual disk size', 8, {
  virtualDiskSize: { at: 0, type: u64 },
});
export const VIRTUAL_DISK_ID = defineStruct('virtual disk id', 16, {
  virtualDiskId: { at: 0, type: guid },
});
export const LOGICAL_SECTOR_SIZE = defineStruct('logical sector size', 4, {
  logicalSectorSize: { at: 0, type: u32 },
});
export const PHYSICAL_SECTOR_SIZE = defineStruct('physical sector size', 4, {
  physicalSectorSize: { at: 0, type: u32 },
});

/** Build the 64 KiB metadata table. */
export function encodeMetadataTable(entries: readonly MetadataTableEntry[]): Uint8Array {
  const b = new Uint8Array(METADATA_TABLE_SIZE);
  METADATA_TABLE_HEADER.encode({ reserved: 0, entryCount: entries.length }, b, 0);
  entries.forEach((e, i) => METADATA_TABLE_ENTRY.encode(e, b, METADATA_ENTRIES_AT + i * METADATA_ENTRY_SIZE));
  return b;
}
