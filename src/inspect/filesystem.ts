/** The filesystem layer's contract: each filesystem module exports one FilesystemDriver. */
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';

/** A byte range of the device: a partition, or the whole disk. */
export interface Region {
  /** Byte offset on the device. */
  start: number;
  /** Length in bytes. */
  length: number;
}

/** What the format says about the filesystem's state. */
export type FilesystemState = 'clean' | 'needs-recovery' | 'dirty' | 'hibernated' | 'unknown';

/** What a filesystem driver recognised at a region. */
export interface FilesystemInfo {
  /** 'ext2' | 'ext3' | 'ext4' | 'ntfs' | 'fat12' | 'fat16' | 'fat32' | 'exfat' | 'xfs' | 'btrfs' | 'swap' | 'lvm2' | 'luks' | 'bitlocker' | 'refs' | 'iso9660' */
  type: string;
  /** The volume label, or null when it has none. */
  label: string | null;
  /** UUID or volume serial number, in the form the format's own tools print it. */
  uuid: string | null;
  /** Bytes the filesystem says it spans (may be less than the region). */
  size: number;
  /** What the format says about its state. */
  state: FilesystemState;
  /** Null when its free space can be trusted; otherwise why not (journal needs replay, dirty, hibernated, unknown incompatible feature, bigalloc, ...). */
  untrusted: string | null;
}

/**
 * Where usage figures come from. 'maps' (the default): the allocation maps (ext block bitmaps,
 * the NTFS $Bitmap, the FAT), exact, and what anything that drops data (compact) must use.
 * 'counters': the free counts a filesystem keeps beside its maps where it has them (ext: the
 * group descriptors'), read without the maps: the free bytes are the counters' (equal to the
 * maps' on a consistent filesystem), and the used map may count more as used (an ext block
 * group holding data counts whole), never less than the counters prove. Drivers without
 * counters read their maps either way.
 */
export type UsageSource = 'maps' | 'counters';

/** Options of a used-map walk: where usage comes from, progress and cancellation. */
export interface UsedMapOptions extends ProgressOptions {
  /** Where usage comes from (default 'maps'). */
  usage?: UsageSource;
}

/** A run of bytes on the device (absolute device offsets). */
export interface Run {
  /** Byte offset on the device. */
  start: number;
  /** Length in bytes. */
  length: number;
}

/** A filesystem module: recognises its filesystem and reads which bytes it uses. */
export interface FilesystemDriver {
  /** The types this driver reports (for the registry and messages). */
  readonly types: readonly string[];
  /**
   * Recognise the filesystem at `region`, or null when it is not this one. Reads only the few
   * sectors it needs. A merely unknown or foreign filesystem is null, never an error; a
   * VhdxError only for I/O errors of the device.
   */
  detect(dev: BlockDevice, region: Region): Promise<FilesystemInfo | null>;
  /**
   * The USED runs of the filesystem, ascending, non-overlapping, inside region, streamed with
   * memory bounded (no array sized by the filesystem's size). Only called when `info.untrusted`
   * is null. Metadata counts as used. Damage found while reading (a bitmap pointing outside the
   * filesystem, a bad checksum on one group's bitmap) never makes space look free: that part
   * is yielded as used. Honour opts.signal, report opts.onProgress(done, total).
   */
  usedRuns?(dev: BlockDevice, region: Region, info: FilesystemInfo, opts?: UsedMapOptions): AsyncIterable<Run>;
  /**
   * Bytes the filesystem's own free counters say are free, read without the allocation maps
   * (see UsageSource), or null when it keeps none that can be believed. Only called when
   * `info.untrusted` is null; at most `info.size`.
   */
  counterFreeBytes?(dev: BlockDevice, region: Region, info: FilesystemInfo): Promise<number | null>;
}
