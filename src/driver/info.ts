/** The description `vhdx info` prints: stable camelCase keys, plain JSON values. */
import type { VhdxImage, AllocationStats } from './image.js';
import type { ProgressOptions } from '../device/block-device.js';
import { KNOWN_REGIONS } from '../format/region-table.js';

export interface ImageInfo {
  format: 'vhdx';
  type: 'dynamic' | 'fixed' | 'differencing';
  virtualSize: number;
  fileSize: number;
  blockSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  diskId: string;
  creator: string;
  header: { slot: number; sequenceNumber: string; fileWriteGuid: string; dataWriteGuid: string; logGuid: string; version: number };
  log: { state: 'clean' | 'dirty'; offset: number; length: number; entries: number; replayedInMemory: boolean };
  regionTable: { copyUsed: number; copiesValid: [boolean, boolean]; regions: { guid: string; name: string; fileOffset: number; length: number; required: boolean }[] };
  metadata: { itemId: string; name: string; offset: number; length: number; isUser: boolean; isVirtualDisk: boolean; isRequired: boolean }[];
  parentLocator: { locatorType: string; entries: { key: string; value: string }[] } | null;
  /**
   * A differencing image's opened parents, nearest first (empty for other images, or when the
   * image was opened without its parents): each one's name (its path, from openFile), type and
   * identity, and which key of its child's locator matched its DataWriteGuid.
   */
  parents: { depth: number; name: string | null; type: 'dynamic' | 'fixed' | 'differencing'; virtualSize: number; dataWriteGuid: string; linkedBy: string }[];
  /** Null when the BAT was not scanned (see DescribeOptions.allocation). */
  allocation: { bytesByState: Record<string, number>; allocatedBlocks: number; bitmapBlocks: number } | null;
  fragmentationPercentage: number | null;
}

/**
 * `auto` scans the BAT for the allocation summary when it is at most AUTO_SCAN_BAT_BYTES (every
 * disk with blocks of 8 MiB or more, and any disk up to 8 TiB), `always` scans any BAT, `never`
 * skips the scan. A scan reads the whole BAT: 512 MiB for a 64 TiB disk with 1 MiB blocks.
 */
export type AllocationScan = 'auto' | 'always' | 'never';
export const AUTO_SCAN_BAT_BYTES = 64 * 1024 * 1024;

export interface DescribeOptions extends ProgressOptions {
  allocation?: AllocationScan;
}


export async function describe(img: VhdxImage, opts: DescribeOptions = {}): Promise<ImageInfo> {
  const l = img.layout;
  const mode = opts.allocation ?? 'auto';
  const scan = mode === 'always' || (mode === 'auto' && l.batEntries * 8 <= AUTO_SCAN_BAT_BYTES);
  const stats: AllocationStats | null = scan ? await img.allocationStats(opts) : null;
  return {
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
      copiesValid: l.regionTableCopiesValid,
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
    parentLocator: l.parentLocator,
    parents: img.chain.slice(1).map((p, i) => ({
      depth: i + 1,
      name: p.name ?? null,
      type: p.type,
      virtualSize: p.size,
      dataWriteGuid: p.header.dataWriteGuid,
      linkedBy: img.chain[i]!.linkedBy ?? '',
    })),
    allocation: stats && { bytesByState: stats.bytesByState, allocatedBlocks: stats.allocatedBlocks, bitmapBlocks: stats.bitmapBlocks },
    fragmentationPercentage: stats && stats.fragmentationPercentage,
  };
}
