/**
 * Opening an image: read and validate every structure the format notes list, in dependency
 * order (identifier, headers, log, region table, metadata, BAT size), before any number read from
 * the file sizes a buffer or a loop. Produces the image's layout; I/O only through the source.
 */
import { VhdxError, corrupt } from '../errors.js';
import { NIL_GUID, isNilGuid, randomGuid } from '../codec/guid.js';
import { updateHeaders } from './headers.js';
import { bytesEqual } from '../codec/bytes.js';
import { viewOf } from '../codec/struct.js';
import { readBytes, writableSource, zeroInPlace, type RandomAccessSource } from '../io/source.js';
import {
  HEADER_OFFSETS,
  HEADER_SECTION_SIZE,
  LOG_SECTOR_SIZE,
  ITEM_FILE_PARAMETERS,
  ITEM_LOGICAL_SECTOR_SIZE,
  ITEM_PARENT_LOCATOR,
  ITEM_PHYSICAL_SECTOR_SIZE,
  ITEM_VIRTUAL_DISK_ID,
  ITEM_VIRTUAL_DISK_SIZE,
  MAX_BLOCK_SIZE,
  MAX_METADATA_ENTRIES,
  MAX_METADATA_ITEM_SIZE,
  MAX_REGION_ENTRIES,
  MAX_VIRTUAL_SIZE,
  METADATA_TABLE_SIZE,
  MIN_BLOCK_SIZE,
  MiB,
  OBJECT_ALIGNMENT,
  REGION_BAT,
  REGION_METADATA,
  REGION_TABLE_OFFSETS,
  REGION_TABLE_SIZE,
} from '../format/constants.js';
import { FILE_IDENTIFIER } from '../format/file-identifier.js';
import { HEADER, type Header } from '../format/header.js';
import {
  REGION_ENTRIES_AT,
  REGION_ENTRY_SIZE,
  REGION_FLAG_REQUIRED,
  REGION_TABLE_ENTRY,
  REGION_TABLE_HEADER,
  type RegionTableEntry,
} from '../format/region-table.js';
import {
  FILE_PARAMETERS,
  FILE_PARAMETERS_HAS_PARENT,
  FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED,
  LOGICAL_SECTOR_SIZE,
  METADATA_ENTRIES_AT,
  METADATA_ENTRY_SIZE,
  METADATA_FLAG_IS_REQUIRED,
  METADATA_FLAG_IS_USER,
  METADATA_TABLE_ENTRY,
  METADATA_TABLE_HEADER,
  PHYSICAL_SECTOR_SIZE,
  VIRTUAL_DISK_ID,
  VIRTUAL_DISK_SIZE,
  type MetadataTableEntry,
} from '../format/metadata.js';
import { decodeParentLocator, type ParentLocator } from '../format/parent-locator.js';
import { BAT_ENTRY_SIZE, batEntriesToWrite, batGeometry, judgeBatEntry, type BatGeometry } from '../format/bat.js';
import { OverlaySource, RANGE_BYTES } from './overlay.js';
import { checkSequenceTargets, findActiveSequence, type LogEntry, type LogSequence } from './log.js';

export type DiskType = 'fixed' | 'dynamic' | 'differencing';

export interface HeaderInfo extends Header {
  /** Which slot (1 or 2) holds it. */
  slot: 1 | 2;
  valid: boolean;
}

export interface LogState {
  /** The current header's LogGuid is non-zero: the log must be replayed. */
  dirty: boolean;
  logOffset: number;
  logLength: number;
  /** Entries in the active sequence (0 when clean). */
  entries: number;
  /** Sequence number of the head entry, when dirty. */
  headSequenceNumber?: bigint;
  /**
   * The replay is held in memory over the file, which is untouched (`Layout.source`; a writable
   * open writes it to the file: replayInPlace).
   */
  replayedInMemory: boolean;
}

export interface MetadataItem extends MetadataTableEntry {
  name: string;
  isUser: boolean;
  isVirtualDisk: boolean;
  isRequired: boolean;
}

export interface Layout {
  creator: string;
  fileSize: number;
  headers: [HeaderInfo | null, HeaderInfo | null];
  current: HeaderInfo;
  /** Which region table copy was used (1 or 2), and whether the other is valid. */
  regionTableCopy: 1 | 2;
  regionTableCopiesValid: [boolean, boolean];
  regions: RegionTableEntry[];
  batRegion: RegionTableEntry;
  metadataRegion: RegionTableEntry;
  metadataItems: MetadataItem[];
  type: DiskType;
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  diskId: string;
  logicalSectorSize: number;
  physicalSectorSize: number;
  parentLocator: ParentLocator | null;
  geometry: BatGeometry;
  /** BAT entries we may index (those the geometry needs; the region holds at least these). */
  batEntries: number;
  log: LogState;
  /** The source reads go through: the file itself, or the file with a replayed log over it. */
  source: RandomAccessSource;
}

const ITEM_NAMES: Record<string, string> = {
  [ITEM_FILE_PARAMETERS]: 'fileParameters',
  [ITEM_VIRTUAL_DISK_SIZE]: 'virtualDiskSize',
  [ITEM_VIRTUAL_DISK_ID]: 'virtualDiskId',
  [ITEM_LOGICAL_SECTOR_SIZE]: 'logicalSectorSize',
  [ITEM_PHYSICAL_SECTOR_SIZE]: 'physicalSectorSize',
  [ITEM_PARENT_LOCATOR]: 'parentLocator',
};
const ITEM_LENGTHS: Record<string, number> = {
  [ITEM_FILE_PARAMETERS]: 8,
  [ITEM_VIRTUAL_DISK_SIZE]: 8,
  [ITEM_VIRTUAL_DISK_ID]: 16,
  [ITEM_LOGICAL_SECTOR_SIZE]: 4,
  [ITEM_PHYSICAL_SECTOR_SIZE]: 4,
};
const KNOWN_REGIONS: Record<string, string> = { [REGION_BAT]: 'BAT', [REGION_METADATA]: 'metadata' };

/** Largest log we replay in memory. Hyper-V and qemu make 1 MiB logs. */
export const MAX_LOG_REPLAY_BYTES = 64 * MiB;

/**
 * Most ranges a read-only open's in-memory replay holds (24 bytes each: 6 MiB), besides the
 * log's data sectors. A log that Hyper-V, qemu or this library writes needs one range per data
 * sector at most (256 for a 1 MiB log, 8,192 for the largest we replay); only a crafted log of
 * many scattered zero descriptors needs more, and is refused read-only. A writable open, and
 * check, resolve any log this size allows (at most two million descriptors: 96 MiB of ranges).
 */
export const MAX_OVERLAY_RANGES = 1 << 18;

export interface OpenLayoutOptions {
  /** Most ranges the in-memory replay of a dirty log may hold (default MAX_OVERLAY_RANGES). */
  maxOverlayRanges?: number;
}

/** Score a file by its first bytes: 100 when it carries the VHDX identifier, else 0. */
export function probe(firstBytes: Uint8Array): number {
  const sig = 'vhdxfile';
  if (firstBytes.length < sig.length) return 0;
  for (let i = 0; i < sig.length; i++) if (firstBytes[i] !== sig.charCodeAt(i)) return 0;
  return 100;
}

/** The bytes `recognize` looks at: the header section up to the end of region table copy 2. */
export const RECOGNIZE_BYTES = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE;

/** A region table copy with its signature and a matching checksum. */
function regionTableValid(c: Uint8Array): boolean {
  return c[0] === 0x72 && c[1] === 0x65 && c[2] === 0x67 && c[3] === 0x69 && REGION_TABLE_HEADER.checksumOk(c);
}

/**
 * What a file's first bytes (up to RECOGNIZE_BYTES of them) show: `vhdx` when they carry the
 * VHDX identifier; `damaged-vhdx` when they do not, but a header (signature and checksum) or a
 * region table copy is valid at its place, as in a VHDX whose first bytes were overwritten; null
 * when nothing of a VHDX is there. Taking a damaged VHDX for a raw disk would let a write destroy
 * what is left of its metadata, so probing callers refuse it.
 */
export function recognize(head: Uint8Array): 'vhdx' | 'damaged-vhdx' | null {
  if (probe(head) > 0) return 'vhdx';
  for (const off of HEADER_OFFSETS) {
    const h = head.subarray(off, off + HEADER.size);
    if (h.length === HEADER.size && h[0] === 0x68 && h[1] === 0x65 && h[2] === 0x61 && h[3] === 0x64 && HEADER.checksumOk(h)) return 'damaged-vhdx';
  }
  for (const off of REGION_TABLE_OFFSETS) {
    const t = head.subarray(off, off + REGION_TABLE_SIZE);
    if (t.length === REGION_TABLE_SIZE && regionTableValid(t)) return 'damaged-vhdx';
  }
  return null;
}

/**
 * Read and validate the image's structures. Writes nothing: a dirty log is replayed into an
 * overlay (`layout.source`), and a writer that wants it in the file calls `replayInPlace`.
 */
export async function openLayout(file: RandomAccessSource, opts: OpenLayoutOptions = {}): Promise<Layout> {
  const fileSize = file.size;
  if (fileSize < 8) throw corrupt('NOT_VHDX', `file of ${fileSize} bytes is too small to be a VHDX`, { offset: 0 });
  // The header section holds everything up to the end of region table 2; read it at once.
  const headEnd = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE;
  const head = new Uint8Array(headEnd);
  let got = 0;
  while (got < headEnd) {
    const n = await file.read(got, head.subarray(got));
    if (n <= 0) break;
    got += n;
  }
  if (probe(head.subarray(0, got)) === 0) {
    throw corrupt('NOT_VHDX', 'no "vhdxfile" signature: not a VHDX image', { structure: 'file identifier', offset: 0 });
  }
  if (fileSize < HEADER_SECTION_SIZE) {
    throw corrupt('TRUNCATED_FILE', `file of ${fileSize} bytes ends inside the 1 MiB header section`, { offset: fileSize });
  }
  const ident = FILE_IDENTIFIER.decode(head, { fileOffset: 0 });

  // Headers: valid = signature and checksum; current = greater sequence number.
  const headerErrors: VhdxError[] = [];
  const headers = HEADER_OFFSETS.map((off, i): HeaderInfo | null => {
    const bytes = head.subarray(off, off + HEADER.size);
    try {
      return { ...HEADER.decode(bytes, { fileOffset: off, name: `header ${i + 1}` }), slot: (i + 1) as 1 | 2, valid: true };
    } catch (e) {
      if (e instanceof VhdxError) {
        headerErrors.push(e);
        return null;
      }
      throw e;
    }
  }) as [HeaderInfo | null, HeaderInfo | null];
  const [h1, h2] = headers;
  let current: HeaderInfo;
  if (h1 && h2) {
    if (h1.sequenceNumber === h2.sequenceNumber) {
      const a = head.subarray(HEADER_OFFSETS[0], HEADER_OFFSETS[0] + HEADER.size);
      const b = head.subarray(HEADER_OFFSETS[1], HEADER_OFFSETS[1] + HEADER.size);
      if (!a.every((x, i) => x === b[i])) {
        throw corrupt('NO_VALID_HEADER', `both headers have sequence number ${h1.sequenceNumber} but differ`, {
          structure: 'header 1',
          offset: HEADER_OFFSETS[0],
        });
      }
      current = h1;
    } else current = h1.sequenceNumber > h2.sequenceNumber ? h1 : h2;
  } else if (h1 || h2) current = (h1 ?? h2)!;
  else {
    // A header that has its signature but fails later (checksum, a number beyond 2^53) is the
    // precise finding; when neither even has the signature, there is no header at all.
    const precise = headerErrors.find((e) => e.reason !== 'BAD_SIGNATURE');
    if (precise) {
      const what = precise.reason === 'BAD_CHECKSUM' ? 'its checksum does not match' : `it fails with ${precise.reason}`;
      throw new VhdxError(precise.code, precise.reason, `neither header is valid; ${precise.structure} has its signature but ${what}`, {
        structure: precise.structure,
        offset: precise.offset,
        cause: precise,
      });
    }
    throw corrupt('NO_VALID_HEADER', 'neither header has the "head" signature', { structure: 'header 1', offset: HEADER_OFFSETS[0] });
  }
  const hdrWhere = { structure: `header ${current.slot}`, offset: HEADER_OFFSETS[current.slot - 1] };
  if (current.version !== 1) throw corrupt('BAD_VERSION', `header version ${current.version}, expected 1`, hdrWhere);
  if (current.logVersion !== 0) throw corrupt('BAD_VERSION', `log version ${current.logVersion}, expected 0`, hdrWhere);

  // Log placement.
  const logOffset = current.logOffset;
  const logLength = current.logLength;
  const logWhere = { structure: 'log', offset: logOffset };
  if (logLength % OBJECT_ALIGNMENT !== 0 || logOffset % OBJECT_ALIGNMENT !== 0) {
    throw corrupt('LOG_MISALIGNED', `log at ${logOffset} of ${logLength} bytes is not 1 MiB aligned`, logWhere);
  }
  if (logLength > 0 && logOffset < HEADER_SECTION_SIZE) {
    throw corrupt('LOG_OVERLAP', `log at ${logOffset} lies inside the header section`, logWhere);
  }
  const dirty = !isNilGuid(current.logGuid);
  if (logOffset + logLength > fileSize && (dirty || logLength > 0)) {
    throw corrupt('LOG_OUT_OF_BOUNDS', `log at ${logOffset} of ${logLength} bytes ends beyond the file (${fileSize})`, logWhere);
  }

  // Replay a dirty log in memory.
  let source: RandomAccessSource = file;
  let replay: Replay | null = null;
  const log: LogState = { dirty, logOffset, logLength, entries: 0, replayedInMemory: false };
  if (dirty) {
    if (logLength === 0) throw corrupt('LOG_NO_VALID_SEQUENCE', 'LogGuid is set but the log is empty', logWhere);
    if (logLength > MAX_LOG_REPLAY_BYTES) {
      throw new VhdxError('ENOTSUP', 'LOG_REPLAY_FAILED', `log of ${logLength} bytes is larger than the ${MAX_LOG_REPLAY_BYTES} bytes replayed in memory`, logWhere);
    }
    const ring = await readBytes(file, logOffset, logLength, 'log');
    const seq = findActiveSequence(ring, current.logGuid);
    if (!seq) throw corrupt('LOG_NO_VALID_SEQUENCE', `the log holds no valid sequence for LogGuid {${current.logGuid}}`, logWhere);
    checkSequenceTargets(seq, logOffset);
    replay = replayInto(seq, file, logOffset, opts.maxOverlayRanges ?? MAX_OVERLAY_RANGES);
    source = replay.overlay;
    log.entries = seq.entries.length;
    log.headSequenceNumber = seq.head.header.sequenceNumber;
    log.replayedInMemory = true;
  }
  const size = source.size;

  // Region table: copy 1, else copy 2.
  const copies: Uint8Array[] = [];
  for (let i = 0; i < 2; i++) {
    const off = REGION_TABLE_OFFSETS[i]!;
    copies.push(source === file ? head.subarray(off, off + REGION_TABLE_SIZE) : await readBytes(source, off, REGION_TABLE_SIZE, `region table ${i + 1}`));
  }
  const valid1 = regionTableValid(copies[0]!);
  // Identical copies (the usual case) share their verdict: one native compare instead of a
  // second 64 KiB checksum.
  const rtValid: [boolean, boolean] = [valid1, bytesEqual(copies[0]!, copies[1]!) ? valid1 : regionTableValid(copies[1]!)];
  const copyIndex = rtValid[0] ? 0 : rtValid[1] ? 1 : -1;
  if (copyIndex < 0) {
    // A copy that has its signature but a wrong checksum is the precise finding, as for headers.
    const signed = copies.findIndex((c) => c[0] === 0x72 && c[1] === 0x65 && c[2] === 0x67 && c[3] === 0x69);
    if (signed >= 0) {
      throw corrupt('BAD_CHECKSUM', `neither region table copy is valid; region table ${signed + 1} has its signature but its checksum does not match`, {
        structure: `region table ${signed + 1}`,
        offset: REGION_TABLE_OFFSETS[signed],
      });
    }
    throw corrupt('NO_VALID_REGION_TABLE', 'neither region table copy has the "regi" signature', { structure: 'region table 1', offset: REGION_TABLE_OFFSETS[0] });
  }
  const rt = copies[copyIndex]!;
  const rtName = `region table ${copyIndex + 1}`;
  const rtOffset: number = copyIndex === 0 ? REGION_TABLE_OFFSETS[0] : REGION_TABLE_OFFSETS[1];
  const rtHeader = REGION_TABLE_HEADER.decode(rt, { fileOffset: rtOffset, name: rtName });
  if (rtHeader.entryCount > MAX_REGION_ENTRIES) {
    throw corrupt('REGION_ENTRY_COUNT', `${rtHeader.entryCount} entries, more than ${MAX_REGION_ENTRIES}`, { structure: rtName, offset: rtOffset });
  }
  const regions: RegionTableEntry[] = [];
  const seenRegions = new Set<string>();
  for (let i = 0; i < rtHeader.entryCount; i++) {
    const at = REGION_ENTRIES_AT + i * REGION_ENTRY_SIZE;
    const where = { structure: `${rtName} entry ${i}`, offset: rtOffset + at };
    const e = REGION_TABLE_ENTRY.decode(rt.subarray(at), { fileOffset: where.offset, name: where.structure });
    const known = KNOWN_REGIONS[e.guid];
    const name = known ?? `region {${e.guid}}`;
    if (seenRegions.has(e.guid)) throw corrupt('REGION_DUPLICATE', `${name} appears twice`, where);
    seenRegions.add(e.guid);
    if (!known && e.flags & REGION_FLAG_REQUIRED) {
      throw corrupt('UNKNOWN_REQUIRED_REGION', `unknown region {${e.guid}} is marked required`, where);
    }
    if (e.fileOffset % OBJECT_ALIGNMENT !== 0 || e.length % OBJECT_ALIGNMENT !== 0 || e.length === 0) {
      throw corrupt('REGION_MISALIGNED', `${name} at ${e.fileOffset} of ${e.length} bytes is not 1 MiB aligned`, where);
    }
    if (e.fileOffset < HEADER_SECTION_SIZE) {
      throw corrupt('REGION_OVERLAP', `${name} at ${e.fileOffset} overlaps the header section`, where);
    }
    if (e.fileOffset + e.length > size) {
      throw corrupt('REGION_OUT_OF_BOUNDS', `${name} at ${e.fileOffset} of ${e.length} bytes ends beyond the file (${size})`, where);
    }
    if (logLength > 0 && e.fileOffset < logOffset + logLength && logOffset < e.fileOffset + e.length) {
      throw corrupt('LOG_OVERLAP', `the log at ${logOffset} overlaps ${name} at ${e.fileOffset}`, where);
    }
    regions.push(e);
  }
  const sorted = [...regions].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.fileOffset < a.fileOffset + a.length) {
      throw corrupt('REGION_OVERLAP', `region {${b.guid}} at ${b.fileOffset} overlaps region {${a.guid}} at ${a.fileOffset}`, {
        structure: rtName,
        offset: rtOffset,
      });
    }
  }
  const batRegion = regions.find((r) => r.guid === REGION_BAT);
  const metadataRegion = regions.find((r) => r.guid === REGION_METADATA);
  if (!batRegion) throw corrupt('MISSING_REQUIRED_REGION', 'no BAT region', { structure: rtName, offset: rtOffset });
  if (!metadataRegion) throw corrupt('MISSING_REQUIRED_REGION', 'no metadata region', { structure: rtName, offset: rtOffset });

  // Metadata table and system items.
  const mdOffset = metadataRegion.fileOffset;
  const mdTable = await readBytes(source, mdOffset, METADATA_TABLE_SIZE, 'metadata table');
  const mdHeader = METADATA_TABLE_HEADER.decode(mdTable, { fileOffset: mdOffset });
  const mdWhere = { structure: 'metadata table', offset: mdOffset };
  if (mdHeader.entryCount > MAX_METADATA_ENTRIES) {
    throw corrupt('METADATA_ENTRY_COUNT', `${mdHeader.entryCount} entries, more than ${MAX_METADATA_ENTRIES}`, mdWhere);
  }
  const items: MetadataItem[] = [];
  const seenItems = new Set<string>();
  for (let i = 0; i < mdHeader.entryCount; i++) {
    const at = METADATA_ENTRIES_AT + i * METADATA_ENTRY_SIZE;
    const where = { structure: `metadata table entry ${i}`, offset: mdOffset + at };
    const e = METADATA_TABLE_ENTRY.decode(mdTable.subarray(at), { fileOffset: where.offset, name: where.structure });
    const isUser = (e.flags & METADATA_FLAG_IS_USER) !== 0;
    const key = `${e.itemId}/${isUser}`;
    if (seenItems.has(key)) throw corrupt('METADATA_DUPLICATE_ITEM', `item {${e.itemId}} appears twice`, where);
    seenItems.add(key);
    const name = (!isUser && ITEM_NAMES[e.itemId]) || `item {${e.itemId}}`;
    if (e.length > MAX_METADATA_ITEM_SIZE) {
      throw corrupt('METADATA_ITEM_BOUNDS', `${name} is ${e.length} bytes, more than ${MAX_METADATA_ITEM_SIZE}`, where);
    }
    if (e.length > 0 && (e.offset < METADATA_TABLE_SIZE || e.offset + e.length > metadataRegion.length)) {
      throw corrupt('METADATA_ITEM_BOUNDS', `${name} at region offset ${e.offset} of ${e.length} bytes lies outside the metadata region's items area`, where);
    }
    const known = !isUser && ITEM_NAMES[e.itemId] !== undefined;
    if (!known && e.flags & METADATA_FLAG_IS_REQUIRED) {
      throw corrupt('UNKNOWN_REQUIRED_ITEM', `unknown ${isUser ? 'user' : 'system'} item {${e.itemId}} is marked required`, where);
    }
    items.push({
      ...e,
      name,
      isUser,
      isVirtualDisk: (e.flags & 2) !== 0,
      isRequired: (e.flags & METADATA_FLAG_IS_REQUIRED) !== 0,
    });
  }
  const byOffset = items.filter((x) => x.length > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const a = byOffset[i - 1]!;
    const b = byOffset[i]!;
    if (b.offset < a.offset + a.length) {
      throw corrupt('METADATA_ITEM_OVERLAP', `${b.name} at region offset ${b.offset} overlaps ${a.name} at ${a.offset}`, mdWhere);
    }
  }
  const itemBytes = async (id: string): Promise<Uint8Array | null> => {
    const it = items.find((x) => !x.isUser && x.itemId === id);
    if (!it) return null;
    const where = { structure: it.name, offset: mdOffset + it.offset };
    const want = ITEM_LENGTHS[id];
    if (want !== undefined && it.length !== want) {
      throw corrupt('BAD_ITEM_LENGTH', `${it.name} is ${it.length} bytes, expected ${want}`, where);
    }
    return readBytes(source, mdOffset + it.offset, it.length, it.name);
  };
  const need = async (id: string): Promise<Uint8Array> => {
    const b = await itemBytes(id);
    if (!b) throw corrupt('MISSING_REQUIRED_ITEM', `the required ${ITEM_NAMES[id]} item is missing`, mdWhere);
    return b;
  };
  const itemOffset = (id: string): number => mdOffset + (items.find((x) => !x.isUser && x.itemId === id)?.offset ?? 0);

  const fp = FILE_PARAMETERS.decode(await need(ITEM_FILE_PARAMETERS), { fileOffset: itemOffset(ITEM_FILE_PARAMETERS) });
  const virtualSize = VIRTUAL_DISK_SIZE.decode(await need(ITEM_VIRTUAL_DISK_SIZE), { fileOffset: itemOffset(ITEM_VIRTUAL_DISK_SIZE) }).virtualDiskSize;
  const diskId = VIRTUAL_DISK_ID.decode(await need(ITEM_VIRTUAL_DISK_ID)).virtualDiskId;
  const logicalSectorSize = LOGICAL_SECTOR_SIZE.decode(await need(ITEM_LOGICAL_SECTOR_SIZE)).logicalSectorSize;
  const physicalSectorSize = PHYSICAL_SECTOR_SIZE.decode(await need(ITEM_PHYSICAL_SECTOR_SIZE)).physicalSectorSize;

  const bs = fp.blockSize;
  if (bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw corrupt('BAD_BLOCK_SIZE', `block size ${bs} is not a power of two from 1 MiB to 256 MiB`, {
      structure: 'fileParameters',
      offset: itemOffset(ITEM_FILE_PARAMETERS),
    });
  }
  for (const [name, v] of [
    ['logicalSectorSize', logicalSectorSize],
    ['physicalSectorSize', physicalSectorSize],
  ] as const) {
    if (v !== 512 && v !== 4096) {
      throw corrupt('BAD_SECTOR_SIZE', `${name} is ${v}, expected 512 or 4096`, {
        structure: name,
        offset: itemOffset(name === 'logicalSectorSize' ? ITEM_LOGICAL_SECTOR_SIZE : ITEM_PHYSICAL_SECTOR_SIZE),
      });
    }
  }
  if (virtualSize === 0 || virtualSize > MAX_VIRTUAL_SIZE || virtualSize % logicalSectorSize !== 0) {
    throw corrupt('BAD_VIRTUAL_SIZE', `virtual size ${virtualSize} is zero, above 64 TiB or not a multiple of the ${logicalSectorSize}-byte sector`, {
      structure: 'virtualDiskSize',
      offset: itemOffset(ITEM_VIRTUAL_DISK_SIZE),
    });
  }
  const hasParent = (fp.flags & FILE_PARAMETERS_HAS_PARENT) !== 0;
  const leaveBlocksAllocated = (fp.flags & FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED) !== 0;
  let parentLocator: ParentLocator | null = null;
  const plBytes = await itemBytes(ITEM_PARENT_LOCATOR);
  if (hasParent) {
    if (!plBytes) throw corrupt('MISSING_REQUIRED_ITEM', 'a differencing disk needs a parent locator item', mdWhere);
    parentLocator = decodeParentLocator(plBytes, itemOffset(ITEM_PARENT_LOCATOR));
  }

  // BAT size: large enough for the entries we index, and not absurdly larger.
  const geometry = batGeometry(virtualSize, bs, logicalSectorSize, hasParent);
  const batWhere = { structure: 'BAT region', offset: batRegion.fileOffset };
  if (batRegion.length < geometry.entriesNeeded * BAT_ENTRY_SIZE) {
    throw corrupt('BAT_TOO_SMALL', `BAT of ${batRegion.length} bytes cannot hold the ${geometry.entriesNeeded} entries the disk needs`, batWhere);
  }
  const wholeChunks = geometry.bitmapBlocks * (geometry.chunkRatio + 1);
  const maxBatBytes = Math.ceil((Math.max(wholeChunks, batEntriesToWrite(geometry, hasParent)) * BAT_ENTRY_SIZE) / MiB) * MiB;
  if (batRegion.length > maxBatBytes) {
    throw corrupt('BAT_TOO_LARGE', `BAT of ${batRegion.length} bytes is larger than the ${maxBatBytes} bytes its entries need`, batWhere);
  }
  const batEntries = Math.min(Math.floor(batRegion.length / BAT_ENTRY_SIZE), wholeChunks);

  if (replay) {
    // Everything the replayed structures name is known: bound the replay by it.
    const limit = replayLimit(replay.overlay, fileSize, logOffset + logLength, regions, batRegion, batEntries, geometry, hasParent, bs);
    const far = replay.furthest;
    if (far && far.end > limit) {
      throw corrupt(
        'LOG_REPLAY_FAILED',
        `log entry ${far.entry.header.sequenceNumber} writes ${far.length} bytes at ${far.fileOffset}, past the ${limit} bytes the image's structures need (the file is ${fileSize} bytes)`,
        { structure: 'log', offset: logOffset + far.entry.logOffset },
      );
    }
    replay.overlay.capSize(limit);
  }

  return {
    creator: ident.creator,
    fileSize,
    headers,
    current,
    regionTableCopy: (copyIndex + 1) as 1 | 2,
    regionTableCopiesValid: rtValid,
    regions,
    batRegion,
    metadataRegion,
    metadataItems: items,
    type: hasParent ? 'differencing' : leaveBlocksAllocated ? 'fixed' : 'dynamic',
    blockSize: bs,
    leaveBlocksAllocated,
    hasParent,
    virtualSize,
    diskId,
    logicalSectorSize,
    physicalSectorSize,
    parentLocator,
    geometry,
    batEntries,
    log,
    source,
  };
}

function checkNotTruncated(seq: LogSequence, file: RandomAccessSource, logOffset: number): void {
  const head = seq.head.header;
  if (file.size < head.flushedFileOffset) {
    throw corrupt('LOG_FILE_TRUNCATED', `file of ${file.size} bytes is shorter than the log's FlushedFileOffset ${head.flushedFileOffset}: it was truncated`, {
      structure: 'log',
      offset: logOffset + seq.head.logOffset,
    });
  }
}

interface Replay {
  overlay: OverlaySource;
  /** The write that reaches furthest into the file (null when the sequence writes nothing). */
  furthest: { entry: LogEntry; fileOffset: number; length: number; end: number } | null;
}

/**
 * Lay the sequence's writes over the file, in order, and extend to the head's LastFileOffset
 * (openLayout then caps that at what the replayed structures need). The overlay holds at most
 * `maxRanges` ranges; past that the replay is refused, with what to do instead.
 */
function replayInto(seq: LogSequence, file: RandomAccessSource, logOffset: number, maxRanges: number): Replay {
  checkNotTruncated(seq, file, logOffset);
  const head = seq.head.header;
  let dataBytes = 0;
  for (const e of seq.entries) dataBytes += e.dataSectors * LOG_SECTOR_SIZE;
  let furthest: Replay['furthest'] = null;
  try {
    const overlay = new OverlaySource(file, { maxRanges, dataBytes });
    for (const e of seq.entries) {
      e.forEachWrite((w) => {
        const length = w.kind === 'zero' ? w.length : w.data.length;
        overlay.put(w.fileOffset, length, w.kind === 'zero' ? null : w.data);
        if (length > 0 && (!furthest || w.fileOffset + length > furthest.end)) furthest = { entry: e, fileOffset: w.fileOffset, length, end: w.fileOffset + length };
      });
    }
    overlay.extendTo(head.lastFileOffset);
    return { overlay, furthest };
  } catch (e) {
    if (e instanceof VhdxError && e.reason === 'LOG_REPLAY_FAILED') {
      throw new VhdxError(
        e.code,
        e.reason,
        `${e.message}, more than a read-only open holds (${maxRanges} ranges, ${maxRanges * RANGE_BYTES} bytes): replay the log into the file instead, with a writable open or \`vhdx check -r all\``,
        { structure: 'log', offset: logOffset + seq.head.logOffset, cause: e },
      );
    }
    throw e;
  }
}

/**
 * The largest file a replay may leave: what the replayed image's own structures can need, so a
 * crafted log can neither grow the file without bound nor write where no structure lies.
 *
 * The file as it is stays: replay writes zeros only inside it. Past its end, a log can need room
 * only for what was allocated in the transactions it carries, and it carries the metadata that
 * names it (§2.3: every BAT, region table and metadata change goes through the log): a region
 * the replayed region table places there (a BAT moved to grow, say), or a payload or sector
 * bitmap block named by a BAT entry that the log itself writes (a writer appends a block, then
 * logs its BAT entry; Hyper-V's LastFileOffset covers such a block). BAT entries the log does not
 * write were in the file before its first entry, and so was the size holding their blocks (it was
 * flushed: FlushedFileOffset, checked against the file's size), so those blocks lie inside the
 * file, or the image is damaged whatever its log says. The region table and the BAT are read as
 * replayed, since the log may be what moves them.
 *
 * Hence the bound: the largest of the file's size, the header section, the log, every region of
 * the replayed table, and every block (taken whole: a writer allocates whole blocks, and a sector
 * bitmap block is no larger) named by a BAT entry in the ranges the log writes; rounded up to
 * 1 MiB, the unit files grow by.
 */
function replayLimit(
  overlay: OverlaySource,
  fileSize: number,
  logEnd: number,
  regions: readonly RegionTableEntry[],
  bat: RegionTableEntry,
  batEntries: number,
  geometry: BatGeometry,
  hasParent: boolean,
  blockSize: number,
): number {
  let end = Math.max(fileSize, HEADER_SECTION_SIZE, logEnd);
  for (const r of regions) end = Math.max(end, r.fileOffset + r.length);
  const batEnd = bat.fileOffset + batEntries * BAT_ENTRY_SIZE;
  for (const r of overlay.ranges()) {
    if (!r.data || r.end <= bat.fileOffset || r.start >= batEnd) continue;
    const view = viewOf(r.data);
    const first = Math.ceil((Math.max(r.start, bat.fileOffset) - bat.fileOffset) / BAT_ENTRY_SIZE);
    const last = Math.floor((Math.min(r.end, batEnd) - bat.fileOffset) / BAT_ENTRY_SIZE);
    for (let i = first; i < last; i++) {
      const at = bat.fileOffset + i * BAT_ENTRY_SIZE - r.start;
      const v = judgeBatEntry(geometry, hasParent, Infinity, i, view.getUint32(at, true), view.getUint32(at + 4, true));
      if (v.kind === 'present') end = Math.max(end, v.fileOffset + blockSize);
    }
  }
  return Math.ceil(end / MiB) * MiB;
}

/**
 * Apply a dirty log to the file itself (§2.3.3): a header update with a new FileWriteGuid (replay
 * is a change to the file), the replayed ranges written once each, a flush, then a header update
 * clearing LogGuid. Returns the entries applied (0 when the log was clean). Replaying twice is
 * harmless: the result is the same.
 *
 * Nothing is written that need not be: the ranges are the sequence's writes resolved (a sector
 * written by many descriptors is written once, with its last value); the file is extended first,
 * to the size the replay leaves (openLayout bounds it by what the image's structures need), so
 * zeros past its old end cost nothing; and zeros inside it are written only over bytes that are
 * not zero already.
 */
export async function replayInPlace(file: RandomAccessSource): Promise<number> {
  const layout = await openLayout(file, { maxOverlayRanges: Infinity });
  if (!layout.log.dirty) return 0;
  const out = writableSource(file, 'replaying the log needs the file open for writing');
  const overlay = layout.source;
  if (!(overlay instanceof OverlaySource)) throw new Error('a dirty log opens with its replay over the file');
  let header = await updateHeaders(out, layout.current, { fileWriteGuid: randomGuid() });
  const oldEnd = out.size;
  if (overlay.size > oldEnd) await out.truncate(overlay.size);
  for (const r of overlay.ranges()) {
    if (r.data) await out.write(r.start, r.data);
    else if (r.start < oldEnd) await zeroInPlace(out, r.start, Math.min(r.end, oldEnd) - r.start);
  }
  await out.flush();
  header = await updateHeaders(out, header, { logGuid: NIL_GUID });
  return layout.log.entries;
}
