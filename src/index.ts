/**
 * vhdx: read Microsoft VHDX virtual disks. This entry point is browser-safe (no Node APIs);
 * the Node entry (`./node.ts`) adds file access.
 */
export { VhdxError, isVhdxError, type ErrorCode, type ErrorReason } from './errors.js';
export { MemorySource, BlobSource, readExact, type RandomAccessSource } from './io/source.js';
export type { BlockDevice, DeviceCapabilities, Extent, ExtentType, ProgressOptions } from './device/block-device.js';
export { VhdxImage, type OpenOptions, type AllocationStats } from './driver/image.js';
export { probe, type Layout, type DiskType, type LogState, type HeaderInfo, type MetadataItem } from './driver/open.js';
export { describe, AUTO_SCAN_BAT_BYTES, type ImageInfo, type DescribeOptions, type AllocationScan } from './driver/info.js';
export { crc32c } from './codec/crc32c.js';
export type { WriteOptions, ZeroOptions } from './driver/writer.js';
export { replayInPlace } from './driver/open.js';
