/** Metadata region (§2.6): the table at the region start and the system items. */
import { defineStruct, ascii, u16, u32, u64, guid, viewOf, type Decoded } from '../codec/struct.js';
import { isZero } from '../codec/bytes.js';
import { VhdxError } from '../errors.js';
import {
  ITEM_FILE_PARAMETERS,
  ITEM_LOGICAL_SECTOR_SIZE,
  ITEM_PARENT_LOCATOR,
  ITEM_PHYSICAL_SECTOR_SIZE,
  ITEM_VIRTUAL_DISK_ID,
  ITEM_VIRTUAL_DISK_SIZE,
  MAX_METADATA_ENTRIES,
  MAX_METADATA_ITEM_SIZE,
  METADATA_TABLE_SIZE,
} from './constants.js';
import { blockSizeRule, sectorSizeRule, virtualSizeRule } from './geometry.js';
import { parseParentLocator, type ParentLocator } from './parent-locator.js';
import { fatal, tryDecode, type Parsed, type Problem } from './problem.js';

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

/** What the system items are called in messages, by item GUID. */
export const SYSTEM_ITEM_NAMES: Readonly<Record<string, string>> = {
  [ITEM_FILE_PARAMETERS]: 'fileParameters',
  [ITEM_VIRTUAL_DISK_SIZE]: 'virtualDiskSize',
  [ITEM_VIRTUAL_DISK_ID]: 'virtualDiskId',
  [ITEM_LOGICAL_SECTOR_SIZE]: 'logicalSectorSize',
  [ITEM_PHYSICAL_SECTOR_SIZE]: 'physicalSectorSize',
  [ITEM_PARENT_LOCATOR]: 'parentLocator',
};

/**
 * The system items every image has, with their sizes and the flags a new image gives them, in
 * the order Hyper-V places them (and the open reads them).
 */
export const REQUIRED_SYSTEM_ITEMS: readonly { itemId: string; size: number; flags: number }[] = [
  { itemId: ITEM_FILE_PARAMETERS, size: FILE_PARAMETERS.size, flags: METADATA_FLAG_IS_REQUIRED },
  { itemId: ITEM_VIRTUAL_DISK_SIZE, size: VIRTUAL_DISK_SIZE.size, flags: METADATA_FLAG_IS_REQUIRED | METADATA_FLAG_IS_VIRTUAL_DISK },
  { itemId: ITEM_VIRTUAL_DISK_ID, size: VIRTUAL_DISK_ID.size, flags: METADATA_FLAG_IS_REQUIRED | METADATA_FLAG_IS_VIRTUAL_DISK },
  { itemId: ITEM_LOGICAL_SECTOR_SIZE, size: LOGICAL_SECTOR_SIZE.size, flags: METADATA_FLAG_IS_REQUIRED | METADATA_FLAG_IS_VIRTUAL_DISK },
  { itemId: ITEM_PHYSICAL_SECTOR_SIZE, size: PHYSICAL_SECTOR_SIZE.size, flags: METADATA_FLAG_IS_REQUIRED | METADATA_FLAG_IS_VIRTUAL_DISK },
];

/** A metadata table entry with what its flags say and the name messages use. */
export interface MetadataItem extends MetadataTableEntry {
  name: string;
  isUser: boolean;
  isVirtualDisk: boolean;
  isRequired: boolean;
}

/** Bytes of the table header that are reserved (besides the u16 at 8), and an entry's reserved u32. */
const TABLE_RESERVED = [12, 32] as const;
const ENTRY_RESERVED_AT = 28;
const KNOWN_FLAGS = METADATA_FLAG_IS_USER | METADATA_FLAG_IS_VIRTUAL_DISK | METADATA_FLAG_IS_REQUIRED;

/**
 * Parse the metadata table (`table`, 64 KiB at file offset `fileOffset`) of a metadata region of
 * `regionLength` bytes: the signature, at most 2047 entries, each item once, at most 1 MiB, in
 * the region after the table, known when required, and no two items overlapping. Reserved fields
 * set are warnings.
 */
export function parseMetadataTable(table: Uint8Array, fileOffset: number, regionLength: number): Parsed<MetadataItem[]> {
  const problems: Problem[] = [];
  const stop = (p: Problem): Parsed<MetadataItem[]> => {
    problems.push(p);
    return { value: null, problems };
  };
  const h = tryDecode(() => METADATA_TABLE_HEADER.decode(table, { fileOffset }), 'fatal');
  if ('problem' in h) return stop(h.problem);
  const tableName = 'metadata table';
  if (h.value.entryCount > MAX_METADATA_ENTRIES) {
    return stop(fatal('METADATA_ENTRY_COUNT', `${h.value.entryCount} entries, more than ${MAX_METADATA_ENTRIES}`, tableName, fileOffset));
  }
  if (h.value.reserved !== 0 || !isZero(table.subarray(...TABLE_RESERVED))) {
    problems.push({ severity: 'warning', reason: 'RESERVED_NONZERO', message: 'the metadata table header has non-zero reserved fields', structure: tableName, fileOffset });
  }
  const view = viewOf(table);
  const items: MetadataItem[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < h.value.entryCount; i++) {
    const at = METADATA_ENTRIES_AT + i * METADATA_ENTRY_SIZE;
    const where = [`metadata table entry ${i}`, fileOffset + at] as const;
    const e = METADATA_TABLE_ENTRY.decode(table.subarray(at), { fileOffset: where[1], name: where[0] });
    const isUser = (e.flags & METADATA_FLAG_IS_USER) !== 0;
    const key = `${e.itemId}/${isUser}`;
    if (seen.has(key)) return stop(fatal('METADATA_DUPLICATE_ITEM', `item {${e.itemId}} appears twice`, ...where));
    seen.add(key);
    const known = !isUser && SYSTEM_ITEM_NAMES[e.itemId] !== undefined;
    const name = known ? SYSTEM_ITEM_NAMES[e.itemId]! : `item {${e.itemId}}`;
    if (e.length > MAX_METADATA_ITEM_SIZE) {
      return stop(fatal('METADATA_ITEM_BOUNDS', `${name} is ${e.length} bytes, more than ${MAX_METADATA_ITEM_SIZE}`, ...where));
    }
    if (e.length > 0 && (e.offset < METADATA_TABLE_SIZE || e.offset + e.length > regionLength)) {
      return stop(fatal('METADATA_ITEM_BOUNDS', `${name} at region offset ${e.offset} of ${e.length} bytes lies outside the metadata region's items area`, ...where));
    }
    if (!known && e.flags & METADATA_FLAG_IS_REQUIRED) {
      return stop(fatal('UNKNOWN_REQUIRED_ITEM', `unknown ${isUser ? 'user' : 'system'} item {${e.itemId}} is marked required`, ...where));
    }
    if ((e.flags & ~KNOWN_FLAGS) !== 0 || view.getUint32(at + ENTRY_RESERVED_AT, true) !== 0) {
      problems.push({ severity: 'warning', reason: 'RESERVED_NONZERO', message: `metadata table entry ${i} (${name}) has reserved bits set`, structure: where[0], fileOffset: where[1] });
    }
    items.push({
      ...e,
      name,
      isUser,
      isVirtualDisk: (e.flags & METADATA_FLAG_IS_VIRTUAL_DISK) !== 0,
      isRequired: (e.flags & METADATA_FLAG_IS_REQUIRED) !== 0,
    });
  }
  const byOffset = items.filter((x) => x.length > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const a = byOffset[i - 1]!;
    const b = byOffset[i]!;
    if (b.offset < a.offset + a.length) {
      return stop(fatal('METADATA_ITEM_OVERLAP', `${b.name} at region offset ${b.offset} overlaps ${a.name} at ${a.offset}`, tableName, fileOffset));
    }
  }
  return { value: items, problems };
}

/** The system item `itemId` of a parsed table, if present. */
export function systemItem(items: readonly MetadataItem[], itemId: string): MetadataItem | undefined {
  return items.find((x) => !x.isUser && x.itemId === itemId);
}

/**
 * The system items an open reads, each with its size checked: the five every image has (missing
 * or of another size stops the open) and the parent locator when present.
 */
export function systemItemsToRead(items: readonly MetadataItem[], tableOffset: number): Parsed<MetadataItem[]> {
  const out: MetadataItem[] = [];
  for (const { itemId: id, size } of REQUIRED_SYSTEM_ITEMS) {
    const it = systemItem(items, id);
    if (!it) return { value: null, problems: [fatal('MISSING_REQUIRED_ITEM', `the required ${SYSTEM_ITEM_NAMES[id]} item is missing`, 'metadata table', tableOffset)] };
    if (it.length !== size) {
      return { value: null, problems: [fatal('BAD_ITEM_LENGTH', `${it.name} is ${it.length} bytes, expected ${size}`, it.name, tableOffset + it.offset)] };
    }
    out.push(it);
  }
  const locator = systemItem(items, ITEM_PARENT_LOCATOR);
  if (locator) out.push(locator);
  return { value: out, problems: [] };
}

/** What the system items say about the disk. */
export interface DiskParameters {
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  diskId: string;
  logicalSectorSize: number;
  physicalSectorSize: number;
  parentLocator: ParentLocator | null;
}

/**
 * Decode the system items (`values`: the bytes of each item `systemItemsToRead` gave, by item
 * GUID; `tableOffset`: the metadata region's file offset) and apply the format's geometry rules;
 * a differencing disk needs its parent locator.
 */
export function parseDiskParameters(items: readonly MetadataItem[], values: ReadonlyMap<string, Uint8Array>, tableOffset: number): Parsed<DiskParameters> {
  const stop = (p: Problem): Parsed<DiskParameters> => ({ value: null, problems: [p] });
  const at = (id: string): number => tableOffset + (systemItem(items, id)?.offset ?? 0);
  const bytes = (id: string): Uint8Array => values.get(id) ?? new Uint8Array(0);
  const decoded = tryDecode(
    () => ({
      fp: FILE_PARAMETERS.decode(bytes(ITEM_FILE_PARAMETERS), { fileOffset: at(ITEM_FILE_PARAMETERS) }),
      virtualSize: VIRTUAL_DISK_SIZE.decode(bytes(ITEM_VIRTUAL_DISK_SIZE), { fileOffset: at(ITEM_VIRTUAL_DISK_SIZE) }).virtualDiskSize,
      diskId: VIRTUAL_DISK_ID.decode(bytes(ITEM_VIRTUAL_DISK_ID), { fileOffset: at(ITEM_VIRTUAL_DISK_ID) }).virtualDiskId,
      logicalSectorSize: LOGICAL_SECTOR_SIZE.decode(bytes(ITEM_LOGICAL_SECTOR_SIZE), { fileOffset: at(ITEM_LOGICAL_SECTOR_SIZE) }).logicalSectorSize,
      physicalSectorSize: PHYSICAL_SECTOR_SIZE.decode(bytes(ITEM_PHYSICAL_SECTOR_SIZE), { fileOffset: at(ITEM_PHYSICAL_SECTOR_SIZE) }).physicalSectorSize,
    }),
    'fatal',
  );
  if ('problem' in decoded) return stop(decoded.problem);
  const { fp, virtualSize, diskId, logicalSectorSize, physicalSectorSize } = decoded.value;
  const blockRule = blockSizeRule(fp.blockSize);
  if (blockRule) return stop(fatal('BAD_BLOCK_SIZE', `block size ${fp.blockSize} ${blockRule}`, 'fileParameters', at(ITEM_FILE_PARAMETERS)));
  for (const [id, subject, v] of [
    [ITEM_LOGICAL_SECTOR_SIZE, 'logical sector size', logicalSectorSize],
    [ITEM_PHYSICAL_SECTOR_SIZE, 'physical sector size', physicalSectorSize],
  ] as const) {
    const rule = sectorSizeRule(v);
    if (rule) return stop(fatal('BAD_SECTOR_SIZE', `${subject} ${v} ${rule}`, SYSTEM_ITEM_NAMES[id], at(id)));
  }
  const sizeRule = virtualSizeRule(virtualSize, logicalSectorSize);
  if (sizeRule) return stop(fatal('BAD_VIRTUAL_SIZE', `virtual size ${virtualSize} ${sizeRule}`, 'virtualDiskSize', at(ITEM_VIRTUAL_DISK_SIZE)));
  const hasParent = (fp.flags & FILE_PARAMETERS_HAS_PARENT) !== 0;
  let parentLocator: ParentLocator | null = null;
  if (hasParent) {
    const loc = values.get(ITEM_PARENT_LOCATOR);
    if (!loc) return stop(fatal('MISSING_REQUIRED_ITEM', 'a differencing disk needs a parent locator item', 'metadata table', tableOffset));
    const parsed = parseParentLocator(loc, at(ITEM_PARENT_LOCATOR));
    if (!parsed.value) return { value: null, problems: parsed.problems };
    parentLocator = parsed.value;
  }
  return {
    value: {
      blockSize: fp.blockSize,
      leaveBlocksAllocated: (fp.flags & FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED) !== 0,
      hasParent,
      virtualSize,
      diskId,
      logicalSectorSize,
      physicalSectorSize,
      parentLocator,
    },
    problems: [],
  };
}

/**
 * Where an item of `length` bytes goes in a metadata region of `regionLength` bytes, replacing
 * item `itemId` (a system item; it may be absent): its present place when the new size fits
 * there, else after the last item. Null when it fits nowhere. Pure: the caller writes.
 */
export function placeMetadataItem(entries: readonly MetadataTableEntry[], itemId: string, length: number, regionLength: number): number | null {
  const old = entries.find((e) => e.itemId === itemId && (e.flags & METADATA_FLAG_IS_USER) === 0);
  const others = entries.filter((e) => e !== old && e.length > 0);
  const fits = (at: number): boolean =>
    at >= METADATA_TABLE_SIZE && at + length <= regionLength && others.every((o) => at + length <= o.offset || o.offset + o.length <= at);
  if (old && fits(old.offset)) return old.offset;
  const after = Math.max(METADATA_TABLE_SIZE, ...others.map((o) => o.offset + o.length));
  return fits(after) ? after : null;
}

/** The entries of a metadata table, as stored (no checks: for editing a table the open validated). */
export function metadataEntries(table: Uint8Array): MetadataTableEntry[] {
  const count = METADATA_TABLE_HEADER.decode(table, { lenient: true }).entryCount;
  return Array.from({ length: Math.min(count, MAX_METADATA_ENTRIES) }, (_, i) =>
    METADATA_TABLE_ENTRY.decode(table.subarray(METADATA_ENTRIES_AT + i * METADATA_ENTRY_SIZE)),
  );
}

/**
 * Set where system item `itemId` lies (`offset`, `length`, region-relative) in a copy of the
 * 64 KiB metadata table `table`, keeping its flags; an item the table lacks is appended with
 * `flags`. Returns the new table. Pure: placing the value and writing (through the log) are the
 * caller's.
 */
export function setMetadataItem(table: Uint8Array, itemId: string, place: { offset: number; length: number }, flags = METADATA_FLAG_IS_REQUIRED): Uint8Array {
  const entries = metadataEntries(table);
  const k = entries.findIndex((e) => e.itemId === itemId && (e.flags & METADATA_FLAG_IS_USER) === 0);
  const out = table.slice();
  if (k < 0) {
    if (entries.length >= MAX_METADATA_ENTRIES) throw new VhdxError('ENOSPC', 'METADATA_ENTRY_COUNT', `the metadata table holds ${MAX_METADATA_ENTRIES} entries already`);
    METADATA_TABLE_HEADER.encode({ reserved: 0, entryCount: entries.length + 1 }, out, 0);
    METADATA_TABLE_ENTRY.encode({ itemId, ...place, flags }, out, METADATA_ENTRIES_AT + entries.length * METADATA_ENTRY_SIZE);
    return out;
  }
  const entryAt = METADATA_ENTRIES_AT + k * METADATA_ENTRY_SIZE;
  // Only the offset and length change: flags and the reserved bytes stay as they were.
  const view = viewOf(out);
  view.setUint32(entryAt + METADATA_TABLE_ENTRY.fields.offset.at, place.offset, true);
  view.setUint32(entryAt + METADATA_TABLE_ENTRY.fields.length.at, place.length, true);
  return out;
}
