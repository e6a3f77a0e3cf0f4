/**
 * Laying out a new image: the first half of `vhdx create`. `planLayout` decides where every
 * structure goes (pure, no I/O, no randomness); `imageWrites` encodes the static structures of
 * the plan with the format encoders (pure); `writeNewImage` puts them into a source, the only
 * place that does I/O, and only through the RandomAccessSource it is given.
 *
 * The layout follows what Hyper-V makes: the 1 MiB header section, the log right after it, the
 * metadata region (1 MiB), the BAT (rounded up to 1 MiB), then payload blocks. With the default
 * 1 MiB log that puts the log at 1 MiB, the metadata at 2 MiB and the BAT at 3 MiB.
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import { NIL_GUID, normalizeGuid, randomGuid } from '../codec/guid.js';
import { viewOf } from '../codec/struct.js';
import { isWritableSource, type RandomAccessSource, type WritableSource } from '../io/source.js';
import {
  HEADER_OFFSETS,
  alignUp,
  HEADER_SECTION_SIZE,
  ITEM_FILE_PARAMETERS,
  ITEM_LOGICAL_SECTOR_SIZE,
  ITEM_PARENT_LOCATOR,
  ITEM_PHYSICAL_SECTOR_SIZE,
  ITEM_VIRTUAL_DISK_ID,
  ITEM_VIRTUAL_DISK_SIZE,
  MAX_METADATA_ITEM_SIZE,
  METADATA_TABLE_SIZE,
  MiB,
  OBJECT_ALIGNMENT,
  REGION_BAT,
  REGION_METADATA,
  REGION_TABLE_OFFSETS,
} from '../format/constants.js';
import { FILE_IDENTIFIER } from '../format/file-identifier.js';
import { blockSizeRule, logSizeRule, sectorSizeRule, virtualSizeRule } from '../format/geometry.js';
import { HEADER } from '../format/header.js';
import { REGION_FLAG_REQUIRED, encodeRegionTable, type RegionTableEntry } from '../format/region-table.js';
import {
  FILE_PARAMETERS,
  FILE_PARAMETERS_HAS_PARENT,
  FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED,
  LOGICAL_SECTOR_SIZE,
  METADATA_FLAG_IS_REQUIRED,
  REQUIRED_SYSTEM_ITEMS,
  PHYSICAL_SECTOR_SIZE,
  VIRTUAL_DISK_ID,
  VIRTUAL_DISK_SIZE,
  encodeMetadataTable,
  type MetadataTableEntry,
} from '../format/metadata.js';
import { encodeParentLocator, type ParentLocator } from '../format/parent-locator.js';
import {
  BAT_ENTRY_SIZE,
  PayloadState,
  batEntriesToWrite,
  batGeometry,
  encodeBatEntry,
  payloadBatIndex,
  type BatEntry,
  type BatGeometry,
} from '../format/bat.js';
import type { DiskType } from './open.js';
import type { ProgressOptions } from '../device/block-device.js';

/** What the caller asks for. Sizes are bytes. */
export interface LayoutOptions {
  /** Size of the virtual disk: a multiple of the logical sector size, at most 64 TiB. */
  virtualSize: number;
  /** Payload block size: a power of two from 1 MiB to 256 MiB (default 32 MiB, as Hyper-V). */
  blockSize?: number;
  logicalSectorSize?: 512 | 4096;
  physicalSectorSize?: 512 | 4096;
  /** Log length: a non-zero multiple of 1 MiB (default 1 MiB). */
  logSize?: number;
  /** Allocate every payload block up front (LeaveBlockAllocated) instead of on first write. */
  fixed?: boolean;
  /** Free text for the file identifier (diagnostic only; at most 256 UTF-16 code units kept). */
  creator?: string;
  /** For a differencing disk: the parent locator item to store. Sets HasParent. */
  parentLocator?: ParentLocator;
}

/** A placed object: a byte range of the file. */
export interface Placement {
  offset: number;
  length: number;
}

/** Where everything of a new image goes. Plain data: tests and tools may read it freely. */
export interface ImagePlan {
  type: DiskType;
  virtualSize: number;
  blockSize: number;
  logicalSectorSize: 512 | 4096;
  physicalSectorSize: 512 | 4096;
  creator: string;
  parentLocator: ParentLocator | null;
  geometry: BatGeometry;
  log: Placement;
  metadata: Placement;
  /** The BAT region; `entries` is how many entries the writer fills (the rest is zero padding). */
  bat: Placement & { entries: number };
  /** Metadata items: region-relative offsets, as the metadata table records them. */
  items: MetadataTableEntry[];
  /** First byte after the static structures, where payload blocks start (1 MiB aligned). */
  payloadOffset: number;
  /** File size of the new image: `payloadOffset`, plus every block for a fixed disk. */
  fileSize: number;
}

/** The GUIDs that make an image unique. `writeNewImage` draws random ones when not given. */
export interface ImageIdentity {
  /** The header's FileWriteGuid (a new one the first time the file is written after each open). */
  fileWriteGuid: string;
  /** The header's DataWriteGuid (a new one the first time the disk's content changes after each open; children link to it). */
  dataWriteGuid: string;
  /** Virtual Disk ID (SCSI page 83). */
  diskId: string;
}

/** One write of encoded bytes to the new file. */
export interface ImageWrite {
  offset: number;
  bytes: Uint8Array;
  /** Structure name, for messages. */
  what: string;
}

const METADATA_REGION_SIZE = MiB;
/** Bytes of BAT encoded per write, so a large fixed disk's BAT never sits in memory whole. */
const BAT_WRITE_BYTES = MiB;

function badArgument(message: string): VhdxError {
  return new VhdxError('EINVAL', 'BAD_ARGUMENT', message);
}

/** Throw BAD_ARGUMENT when a geometry rule says `subject` is not allowed. */
function ruleHolds(subject: string, problem: string | null): void {
  if (problem !== null) throw badArgument(`${subject} ${problem}`);
}

/** A size in MiB when it is whole MiB, else in bytes. */
function sizeText(n: number): string {
  return n % MiB === 0 ? `${n / MiB} MiB` : `${n} bytes`;
}

/**
 * Decide where every structure of a new image goes. Pure: the same options give the same plan.
 * Throws BAD_ARGUMENT for options the format cannot represent.
 */
export function planLayout(opts: LayoutOptions): ImagePlan {
  const {
    virtualSize,
    blockSize = 32 * MiB,
    logicalSectorSize = 512,
    physicalSectorSize = 4096,
    logSize = MiB,
    fixed = false,
    creator = 'vhdx (npm)',
    parentLocator,
  } = opts;
  // The format's geometry rules (format/geometry.ts), as option errors.
  ruleHolds(`logical sector size ${String(logicalSectorSize)}`, sectorSizeRule(logicalSectorSize));
  ruleHolds(`physical sector size ${String(physicalSectorSize)}`, sectorSizeRule(physicalSectorSize));
  if (physicalSectorSize < logicalSectorSize) {
    throw badArgument(`physical sector size ${physicalSectorSize} is smaller than the logical sector size ${logicalSectorSize}`);
  }
  ruleHolds(`size ${String(virtualSize)}`, virtualSizeRule(virtualSize, logicalSectorSize));
  ruleHolds(`block size ${sizeText(blockSize)}`, blockSizeRule(blockSize));
  ruleHolds(`log size ${sizeText(logSize)}`, logSizeRule(logSize));
  if (fixed && parentLocator) throw badArgument('a differencing disk cannot be fixed');
  const hasParent = parentLocator !== undefined;

  // Metadata items, packed from 64 KiB into the region in the order Hyper-V uses.
  const itemSpecs: [string, number, number][] = REQUIRED_SYSTEM_ITEMS.map((i) => [i.itemId, i.size, i.flags]);
  if (parentLocator) {
    const length = encodeParentLocator(parentLocator).length;
    if (length > MAX_METADATA_ITEM_SIZE) throw badArgument(`parent locator of ${length} bytes is larger than 1 MiB`);
    itemSpecs.push([ITEM_PARENT_LOCATOR, length, METADATA_FLAG_IS_REQUIRED]);
  }
  const items: MetadataTableEntry[] = [];
  let itemAt = METADATA_TABLE_SIZE;
  for (const [itemId, length, flags] of itemSpecs) {
    items.push({ itemId, offset: itemAt, length, flags });
    itemAt += length;
  }
  if (itemAt > METADATA_REGION_SIZE) throw badArgument('metadata items do not fit the 1 MiB metadata region');

  const geometry = batGeometry(virtualSize, blockSize, logicalSectorSize, hasParent);
  const batEntries = batEntriesToWrite(geometry, hasParent);
  const log = { offset: HEADER_SECTION_SIZE, length: logSize };
  const metadata = { offset: log.offset + log.length, length: METADATA_REGION_SIZE };
  const bat = { offset: metadata.offset + metadata.length, length: alignUp(batEntries * BAT_ENTRY_SIZE, OBJECT_ALIGNMENT), entries: batEntries };
  const payloadOffset = bat.offset + bat.length;
  const fileSize = fixed ? payloadOffset + geometry.payloadBlocks * blockSize : payloadOffset;

  return {
    type: hasParent ? 'differencing' : fixed ? 'fixed' : 'dynamic',
    virtualSize,
    blockSize,
    logicalSectorSize,
    physicalSectorSize,
    creator,
    parentLocator: parentLocator ?? null,
    geometry,
    log,
    metadata,
    bat,
    items,
    payloadOffset,
    fileSize,
  };
}

/** File offset of payload block `blockIndex` of a fixed disk planned by `planLayout`. */
export function fixedBlockOffset(plan: ImagePlan, blockIndex: number): number {
  return plan.payloadOffset + blockIndex * plan.blockSize;
}

/** Fresh random GUIDs for a new image. */
export function randomIdentity(): ImageIdentity {
  return { fileWriteGuid: randomGuid(), dataWriteGuid: randomGuid(), diskId: randomGuid() };
}

/**
 * Encode every static structure of the plan, for a file that reads as zeros everywhere else.
 * Pure. Yields the metadata region and the BAT first, then the region tables, the headers and
 * last the file identifier, so that a file cut short while being written is not taken for a VHDX.
 * A dynamic or differencing disk's BAT is all zeros (NOT_PRESENT) and is not yielded; a fixed
 * disk's BAT comes in pieces of at most 1 MiB.
 */
export function* imageWrites(plan: ImagePlan, id: ImageIdentity): Generator<ImageWrite> {
  // Metadata region: the table, then the item values at their offsets.
  const md = new Uint8Array(METADATA_REGION_SIZE);
  md.set(encodeMetadataTable(plan.items), 0);
  const fileParamFlags =
    (plan.type === 'fixed' ? FILE_PARAMETERS_LEAVE_BLOCKS_ALLOCATED : 0) | (plan.parentLocator ? FILE_PARAMETERS_HAS_PARENT : 0);
  for (const item of plan.items) {
    const at = item.offset;
    switch (item.itemId) {
      case ITEM_FILE_PARAMETERS:
        FILE_PARAMETERS.encode({ blockSize: plan.blockSize, flags: fileParamFlags }, md, at);
        break;
      case ITEM_VIRTUAL_DISK_SIZE:
        VIRTUAL_DISK_SIZE.encode({ virtualDiskSize: plan.virtualSize }, md, at);
        break;
      case ITEM_VIRTUAL_DISK_ID:
        VIRTUAL_DISK_ID.encode({ virtualDiskId: normalizeGuid(id.diskId) }, md, at);
        break;
      case ITEM_LOGICAL_SECTOR_SIZE:
        LOGICAL_SECTOR_SIZE.encode({ logicalSectorSize: plan.logicalSectorSize }, md, at);
        break;
      case ITEM_PHYSICAL_SECTOR_SIZE:
        PHYSICAL_SECTOR_SIZE.encode({ physicalSectorSize: plan.physicalSectorSize }, md, at);
        break;
      case ITEM_PARENT_LOCATOR:
        if (plan.parentLocator) md.set(encodeParentLocator(plan.parentLocator), at);
        break;
    }
  }
  // Only the used part of the region: the rest of the fresh file is already zero.
  const mdUsed = plan.items.reduce((end, it) => Math.max(end, it.offset + it.length), METADATA_TABLE_SIZE);
  yield { offset: plan.metadata.offset, bytes: md.subarray(0, mdUsed), what: 'metadata region' };

  // BAT: fixed disks get every payload block FULLY_PRESENT, laid out in order after the BAT.
  if (plan.type === 'fixed') {
    const g = plan.geometry;
    const perWrite = BAT_WRITE_BYTES / BAT_ENTRY_SIZE;
    for (let first = 0; first < plan.bat.entries; first += perWrite) {
      const count = Math.min(perWrite, plan.bat.entries - first);
      const bytes = new Uint8Array(count * BAT_ENTRY_SIZE);
      const view = viewOf(bytes);
      const firstBlock = first - Math.floor(first / (g.chunkRatio + 1));
      for (let block = firstBlock; block < g.payloadBlocks; block++) {
        const index = payloadBatIndex(g, block);
        if (index >= first + count) break;
        encodeBatEntry(view, (index - first) * BAT_ENTRY_SIZE, {
          state: PayloadState.FULLY_PRESENT,
          fileOffsetMB: fixedBlockOffset(plan, block) / MiB,
        });
      }
      yield { offset: plan.bat.offset + first * BAT_ENTRY_SIZE, bytes, what: 'BAT' };
    }
  }

  // Region tables: two identical copies, both regions required.
  const regions: RegionTableEntry[] = [
    { guid: REGION_BAT, fileOffset: plan.bat.offset, length: plan.bat.length, flags: REGION_FLAG_REQUIRED },
    { guid: REGION_METADATA, fileOffset: plan.metadata.offset, length: plan.metadata.length, flags: REGION_FLAG_REQUIRED },
  ];
  const rt = encodeRegionTable(regions);
  yield { offset: REGION_TABLE_OFFSETS[0], bytes: rt, what: 'region table 1' };
  yield { offset: REGION_TABLE_OFFSETS[1], bytes: rt, what: 'region table 2' };

  // Headers: the same content with sequence numbers 0 and 1 (header 2 is current), empty log.
  for (let i = 0; i < 2; i++) {
    const bytes = HEADER.encode({
      sequenceNumber: BigInt(i),
      fileWriteGuid: normalizeGuid(id.fileWriteGuid),
      dataWriteGuid: normalizeGuid(id.dataWriteGuid),
      logGuid: NIL_GUID,
      logVersion: 0,
      version: 1,
      logLength: plan.log.length,
      logOffset: plan.log.offset,
    });
    yield { offset: HEADER_OFFSETS[i]!, bytes, what: `header ${i + 1}` };
  }

  yield { offset: 0, bytes: FILE_IDENTIFIER.encode({ creator: plan.creator }), what: 'file identifier' };
}

/** How `writeNewImage` writes. */
export interface WriteImageOptions extends ProgressOptions {
  /**
   * For a fixed disk, write zeros over the whole file before the structures, so that it is
   * allocated on disk rather than sparse (what a fixed disk promises: writes never need new
   * space, and `du` shows the file's size). Progress counts the bytes of zeros written. Ignored
   * for other disk types.
   */
  allocate?: boolean;
}

/** Bytes of zeros per write when allocating a fixed disk, and how many writes are in flight. */
const FILL_CHUNK = 8 * MiB;
const FILL_IN_FLIGHT = 2;

/**
 * Write a new image as planned into `source`, which must be writable and truncatable: its
 * previous content is discarded (it is emptied, then sized to `plan.fileSize`, so every byte not
 * written reads as zero, sparsely on file systems that can). With `allocate`, a fixed disk's
 * file is written with zeros first. The static structures follow, the file
 * identifier last, so a file cut short is not taken for a VHDX. Flushes at the end. Returns the
 * identity written (random unless given).
 */
export async function writeNewImage(
  source: RandomAccessSource,
  plan: ImagePlan,
  id: ImageIdentity = randomIdentity(),
  opts: WriteImageOptions = {},
): Promise<ImageIdentity> {
  if (!isWritableSource(source)) {
    if (source.readOnly || !source.write) throw new VhdxError('EROFS', 'READ_ONLY', 'cannot create an image on a read-only source');
    throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', 'creating an image needs a source that can be flushed and truncated');
  }
  throwIfAborted(opts.signal, 'image creation');
  await source.truncate(0);
  await source.truncate(plan.fileSize);
  if (opts.allocate === true && plan.type === 'fixed') await fillZeroes(source, 0, plan.fileSize, opts);
  for (const w of imageWrites(plan, id)) {
    throwIfAborted(opts.signal, 'image creation');
    await source.write(w.offset, w.bytes);
  }
  await source.flush();
  return id;
}

/** Write zeros over [offset, offset + length) in large pieces, a few in flight, with progress. */
async function fillZeroes(source: WritableSource, offset: number, length: number, opts: ProgressOptions): Promise<void> {
  const write = source.write.bind(source);
  const zeros = new Uint8Array(Math.min(FILL_CHUNK, length));
  let next = 0;
  let done = 0;
  opts.onProgress?.(0, length);
  let failed = false;
  const worker = async (): Promise<void> => {
    try {
      while (next < length && !failed) {
        throwIfAborted(opts.signal, 'image creation');
        const at = next;
        const n = Math.min(zeros.length, length - at);
        next += n;
        await write(offset + at, zeros.subarray(0, n));
        done += n;
        opts.onProgress?.(done, length);
      }
    } catch (e) {
      failed = true;
      throw e;
    }
  };
  // Every worker stops at the first error and is waited for before the error is passed on, so no
  // write is still in flight when the caller cleans up (removes the file).
  const results = await Promise.allSettled(Array.from({ length: FILL_IN_FLIGHT }, worker));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** The 8 bytes of one BAT entry. */
export function batEntryBytes(entry: BatEntry): Uint8Array {
  if (!Number.isInteger(entry.state) || entry.state < 0 || entry.state > 7) throw badArgument(`BAT entry state ${entry.state} is not 0..7`);
  if (!Number.isSafeInteger(entry.fileOffsetMB) || entry.fileOffsetMB < 0 || entry.fileOffsetMB >= 2 ** 44) {
    throw badArgument(`BAT entry offset ${entry.fileOffsetMB} MiB does not fit 44 bits`);
  }
  const b = new Uint8Array(BAT_ENTRY_SIZE);
  encodeBatEntry(viewOf(b), 0, entry);
  return b;
}

/**
 * Set BAT entry `batIndex` (an index into the BAT, interleaved bitmap entries included: use
 * `payloadBatIndex` for a payload block) of an image laid out by `plan`. Writes only those
 * 8 bytes: no log, no header update. For building images, not for changing a live one.
 */
export async function setBatEntry(source: RandomAccessSource, plan: ImagePlan, batIndex: number, entry: BatEntry): Promise<void> {
  if (!Number.isSafeInteger(batIndex) || batIndex < 0 || batIndex >= plan.bat.length / BAT_ENTRY_SIZE) {
    throw badArgument(`BAT index ${batIndex} is outside the ${plan.bat.length / BAT_ENTRY_SIZE}-entry BAT`);
  }
  if (source.readOnly || !source.write) throw new VhdxError('EROFS', 'READ_ONLY', 'cannot write a BAT entry to a read-only source');
  await source.write(plan.bat.offset + batIndex * BAT_ENTRY_SIZE, batEntryBytes(entry));
}
