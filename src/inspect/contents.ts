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

/** What {@link describeContents} returns: the `vhdx info` fields about what is inside the disk. */
export interface ContentsInfo {
  /** The partition table's kind. */
  partitionScheme: PartitionScheme;
  /** The table's sector size in bytes, its disk id (GPT GUID or MBR signature) and what was wrong with it. */
  partitionTable: { sectorSize: number; diskId: string | null; findings: PartitionFinding[] };
  /** The partitions in table order, each with its filesystem. */
  partitions: DiskPartition[];
  /** Bytes of the disk counted as used (everything but what trusted filesystems say is free). */
  usedBytes: number | null;
  /**
   * Bytes an image could give back: its allocated blocks that no filesystem uses, plus (when
   * scanned) its allocated blocks that are all zeros. Null when not computed.
   */
  reclaimableBytes: number | null;
  /** The parts of that figure; null when not computed (no `blockSize`). */
  reclaimable: Reclaimable | null;
}

/** Options of {@link describeContents}; `signal` stops it (ECANCELED / ABORTED). */
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

/**
 * Read the partition table, the filesystems and their usage of `dev`, and with `blockSize` what a
 * compact could reclaim. Damage to the table or a filesystem is reported in the result; only I/O
 * errors of the device are thrown (as VhdxError).
 */
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
