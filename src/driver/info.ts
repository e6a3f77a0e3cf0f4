/** The description `vhdx info` prints: stable camelCase keys, plain JSON values. */
import type { VhdxImage, AllocationStats } from './image.js';
import type { ProgressOptions } from '../device/block-device.js';
import { KNOWN_REGIONS } from '../format/region-table.js';

/**
 * What {@link describe} returns: the image's geometry, headers, log, regions, metadata, parents
 * and allocation, as `vhdx info --output=json` prints them (stable camelCase keys, plain JSON
 * values). Sizes and offsets are in bytes. The object is frozen, nested objects and arrays too.
 */
export interface ImageInfo {
  /** Always `vhdx`. */
  readonly format: 'vhdx';
  /** The disk type. */
  readonly type: 'dynamic' | 'fixed' | 'differencing';
  /** Size of the virtual disk in bytes. */
  readonly virtualSize: number;
  /** Size of the image file in bytes. */
  readonly fileSize: number;
  /** Payload block size in bytes. */
  readonly blockSize: number;
  /** Logical sector size of the virtual disk in bytes (512 or 4096). */
  readonly logicalSectorSize: number;
  /** Physical sector size of the virtual disk in bytes (512 or 4096). */
  readonly physicalSectorSize: number;
  /** The Page 83 Data (virtual disk id) GUID. */
  readonly diskId: string;
  /** The file type identifier's creator string (the program that made the file). */
  readonly creator: string;
  /**
   * The current header: its slot (1 or 2), its sequence number (a decimal string: it is 64-bit),
   * its FileWriteGuid, DataWriteGuid and LogGuid, and its version.
   */
  readonly header: { readonly slot: number; readonly sequenceNumber: string; readonly fileWriteGuid: string; readonly dataWriteGuid: string; readonly logGuid: string; readonly version: number };
  /**
   * The log: `dirty` when it holds entries to replay, its place in the file, its active entries,
   * and whether this open replayed them in memory (the file untouched).
   */
  readonly log: { readonly state: 'clean' | 'dirty'; readonly offset: number; readonly length: number; readonly entries: number; readonly replayedInMemory: boolean };
  /** Which region table copy was used (1 or 2), which copies are valid, and the regions it lists. */
  readonly regionTable: {
    readonly copyUsed: number;
    readonly copiesValid: readonly [boolean, boolean];
    readonly regions: readonly { readonly guid: string; readonly name: string; readonly fileOffset: number; readonly length: number; readonly required: boolean }[];
  };
  /** The metadata table's items: id, name (the system item's, else `item {GUID}`), offset and length in the region, and flags. */
  readonly metadata: readonly { readonly itemId: string; readonly name: string; readonly offset: number; readonly length: number; readonly isUser: boolean; readonly isVirtualDisk: boolean; readonly isRequired: boolean }[];
  /** A differencing image's parent locator (type GUID and key/value entries in file order); null for other images. */
  readonly parentLocator: { readonly locatorType: string; readonly entries: readonly { readonly key: string; readonly value: string }[] } | null;
  /**
   * A differencing image's opened parents, nearest first (empty for other images, or when the
   * image was opened without its parents): each one's name (its path, from openFile), type and
   * identity, and which key of its child's locator matched its DataWriteGuid.
   */
  readonly parents: readonly { readonly depth: number; readonly name: string | null; readonly type: 'dynamic' | 'fixed' | 'differencing'; readonly virtualSize: number; readonly dataWriteGuid: string; readonly linkedBy: string }[];
  /**
   * Bytes of the virtual disk per BAT state, and the payload and sector bitmap blocks stored
   * (see {@link AllocationStats}). Null when the BAT was not scanned (see {@link DescribeOptions.allocation}).
   */
  readonly allocation: { readonly bytesByState: Readonly<Record<string, number>>; readonly allocatedBlocks: number; readonly bitmapBlocks: number } | null;
  /** How scattered the allocated blocks are in the file (see {@link AllocationStats}); null when the BAT was not scanned. */
  readonly fragmentationPercentage: number | null;
}

/**
 * `auto` scans the BAT for the allocation summary when it is at most AUTO_SCAN_BAT_BYTES (every
 * disk with blocks of 8 MiB or more, and any disk up to 8 TiB), `always` scans any BAT, `never`
 * skips the scan. A scan reads the whole BAT: 512 MiB for a 64 TiB disk with 1 MiB blocks.
 */
export type AllocationScan = 'auto' | 'always' | 'never';
/** Largest BAT, in bytes, that {@link describe} scans with `allocation: 'auto'` (64 MiB). */
export const AUTO_SCAN_BAT_BYTES = 64 * 1024 * 1024;

/** Options of {@link describe}; the progress callback and signal apply to the BAT scan. */
export interface DescribeOptions extends ProgressOptions {
  /** Whether to scan the BAT for the allocation summary (default `auto`). */
  allocation?: AllocationScan;
}

/**
 * Describe an open VHDX image: what `vhdx info` prints. Reads nothing but the BAT, and that only
 * when `opts.allocation` asks for the allocation summary. The result is a fresh, deeply frozen
 * object that shares nothing with the image. Throws VhdxError: CLOSED (EINVAL) for a closed
 * image, the reason of a damaged BAT entry met by the scan, ABORTED (ECANCELED) when `opts.signal` aborts it.
 */
export async function describe(img: VhdxImage, opts: DescribeOptions = {}): Promise<ImageInfo> {
  const l = img.layout;
  const mode = opts.allocation ?? 'auto';
  const scan = mode === 'always' || (mode === 'auto' && l.batEntries * 8 <= AUTO_SCAN_BAT_BYTES);
  const stats: AllocationStats | null = scan ? await img.allocationStats(opts) : null;
  return deepFreeze<ImageInfo>({
    format: 'vhdx',
    type: l.type,
    virtualSize: l.virtualSize,
    fileSize: l.fileSize,
    blockSize: l.blockSize,
    logicalSectorSize: l.logicalSectorSize,
    physicalSectorSize: l.physicalSectorSize,
    diskId: l.diskId,
    creator: l.creator,
    header: {
      slot: l.current.slot,
      sequenceNumber: l.current.sequenceNumber.toString(),
      fileWriteGuid: l.current.fileWriteGuid,
      dataWriteGuid: l.current.dataWriteGuid,
      logGuid: l.current.logGuid,
      version: l.current.version,
    },
    log: {
      state: l.log.dirty ? 'dirty' : 'clean',
      offset: l.log.logOffset,
      length: l.log.logLength,
      entries: l.log.entries,
      replayedInMemory: l.log.replayedInMemory,
    },
    regionTable: {
      copyUsed: l.regionTableCopy,
      copiesValid: [l.regionTableCopiesValid[0], l.regionTableCopiesValid[1]],
      regions: l.regions.map((r) => ({
        guid: r.guid,
        name: KNOWN_REGIONS[r.guid]?.toLowerCase() ?? 'unknown',
        fileOffset: r.fileOffset,
        length: r.length,
        required: (r.flags & 1) !== 0,
      })),
    },
    metadata: l.metadataItems.map((m) => ({
      itemId: m.itemId,
      name: m.name,
      offset: m.offset,
      length: m.length,
      isUser: m.isUser,
      isVirtualDisk: m.isVirtualDisk,
      isRequired: m.isRequired,
    })),
    parentLocator: l.parentLocator && { locatorType: l.parentLocator.locatorType, entries: l.parentLocator.entries.map(({ key, value }) => ({ key, value })) },
    parents: img.chain.slice(1).map((p, i) => ({
      depth: i + 1,
      name: p.name ?? null,
      type: p.type,
      virtualSize: p.size,
      dataWriteGuid: p.header.dataWriteGuid,
      linkedBy: img.chain[i]!.linkedBy ?? '',
    })),
    allocation: stats && { bytesByState: { ...stats.bytesByState }, allocatedBlocks: stats.allocatedBlocks, bitmapBlocks: stats.bitmapBlocks },
    fragmentationPercentage: stats && stats.fragmentationPercentage,
  });
}

/** Freeze `value` and every object and array inside it (a tree of plain JSON values). */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
