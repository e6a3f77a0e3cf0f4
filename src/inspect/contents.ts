/**
 * The description of a disk's contents that `vhdx info` adds to an image's: partition table,
 * partitions with their filesystems and usage, and what a compact could give back. Stable
 * camelCase keys, plain JSON values.
 */
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import { inspectDisk, usedRuns, type DiskPartition } from './disk.js';
import type { PartitionFinding, PartitionScheme } from './partition-table.js';
import { reclaimable, type Reclaimable } from './reclaim.js';
import type { UsageSource } from './filesystem.js';

export interface ContentsInfo {
  partitionScheme: PartitionScheme;
  partitionTable: { sectorSize: number; diskId: string | null; findings: PartitionFinding[] };
  partitions: DiskPartition[];
  /** Bytes of the disk counted as used (everything but what trusted filesystems say is free). */
  usedBytes: number | null;
  /**
   * Bytes an image could give back: its allocated blocks that no filesystem uses, plus (when
   * scanned) its allocated blocks that are all zeros. Null when not computed.
   */
  reclaimableBytes: number | null;
  reclaimable: Reclaimable | null;
}

export interface ContentsOptions extends ProgressOptions {
  /** The image's allocation unit; without it, nothing reclaimable is computed. */
  blockSize?: number;
  /** Read the allocated blocks filesystems use, to count those that are all zeros. */
  scanZeros?: boolean;
  /**
   * Where the filesystems' usage and used map come from (see UsageSource; default 'maps'). With
   * 'counters', the reclaimable bytes may be fewer than a compact frees, never more.
   */
  usage?: UsageSource;
}

export async function describeContents(dev: BlockDevice, opts: ContentsOptions = {}): Promise<ContentsInfo> {
  const signal = opts.signal ? { signal: opts.signal } : {};
  const usage = opts.usage ?? 'maps';
  const disk = await inspectDisk(dev, { ...signal, usage });
  let r: Reclaimable | null = null;
  if (opts.blockSize !== undefined) {
    r = await reclaimable(dev, { ...opts, blockSize: opts.blockSize, scanZeros: opts.scanZeros ?? false, used: usedRuns(dev, { ...signal, usage }) });
  }
  return {
    partitionScheme: disk.partitionScheme,
    partitionTable: { sectorSize: disk.sectorSize, diskId: disk.diskId, findings: disk.findings },
    partitions: disk.partitions,
    usedBytes: disk.usedBytes,
    reclaimableBytes: r && r.unusedBytes + (r.zeroBytes ?? 0),
    reclaimable: r,
  };
}
