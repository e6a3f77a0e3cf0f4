/**
 * vhdx: read, write, create, check and convert Microsoft VHDX (and VHD) virtual disks. This entry
 * point is browser-safe (no Node APIs); the Node entry (`./node.ts`, the package's `node`
 * condition) adds files by path and the NBD server, and `vhdx/testing` (`./testing.ts`) holds the
 * fault-injecting source for tests. Everything here is public API, recorded in api/index.api.md
 * (`npm run api-report`); the modules behind it are not.
 */

// Errors: the one error type, its errno-like codes and its stable reasons.
export { VhdxError, isVhdxError, type ErrorCode, type ErrorReason, type VhdxErrorDetails, type RequestKind } from './errors.js';

// Sources: the random-access bytes an image is read from (and written to).
export { MemorySource, BlobSource, type CopyHint, type RandomAccessSource, type WritableSource } from './io/source.js';
export { HttpSource, fetchTransport, type HttpSourceOptions, type HttpStats, type HttpValidator, type HttpTransport, type HttpAnswer, type HttpAnswerHead } from './io/http.js';

// Devices: the block-device interface every image implements, and opening any format.
export type { BlockDevice, WritableBlockDevice, DeviceCapabilities, Extent, ExtentType, ProgressOptions } from './device/block-device.js';
export { RawDevice, type RawDeviceOptions } from './device/raw.js';
export { openUrl, urlParentResolver, probeFormat, type OpenUrlOptions, type UrlOptions, type ImageFormat, type OpenedDevice, type DeviceOptions, type DriverOptions } from './device/open.js';
export type { ParentPaths } from './device/parents.js';

// VHDX images: open, describe, create, check and repair, commit.
export { VhdxImage, locatorValue, MAX_CHAIN_DEPTH, type OpenOptions, type AllocationStats, type ParentResolver, type ParentRequest } from './driver/image.js';
export type { ParentLocator } from './format/parent-locator.js';
export type { DiskType } from './driver/open.js';
export type { BatCacheOptions } from './driver/bat-cache.js';
export type { BitmapCacheOptions } from './driver/bitmap-cache.js';
export type { BlockMove, MovedBlock, WriteOptions, ZeroOptions, FreeSpaceOptions } from './driver/writer.js';
export type { PlacedBlock } from './driver/mapping.js';
export { describe, AUTO_SCAN_BAT_BYTES, type ImageInfo, type DescribeOptions, type AllocationScan } from './driver/info.js';
export { createImage, DEFAULT_BLOCK_SIZE, DEFAULT_LOG_SIZE, type CreateOptions, type CreateResult, type Subformat } from './driver/create.js';
export type { ImageIdentity } from './driver/layout.js';
export { checkImage, repairImage, MAX_FINDINGS, type CheckResult, type CheckOptions, type CheckError, type Finding, type FindingSeverity, type RepairMode, type RepairOptions, type RepairResult, type RepairAction, type RepairActionKind } from './driver/check.js';
export { commitChild, type CommitOptions, type CommitResult } from './device/commit.js';

// Convert: the block-status-driven copy engine.
export { copyDevice, fileSink, deviceSink, type CopyOptions, type CopyResult, type CopySink } from './device/copy.js';

// Whole-image operations.
export { compact, COMPACT_MODES, type CompactMode, type CompactOptions, type CompactReport, type SkippedArea } from './ops/compact.js';
export { resize, minimumSize, type ResizeOptions, type ResizeResult } from './ops/resize.js';
export type { GptMove } from './ops/gpt-move.js';

// Inspect: partitions, filesystems, used space.
export { readPartitions, inspectDisk, usedRuns, type DiskContents, type DiskPartition, type DiskFilesystem, type InspectOptions, type UsedRunsOptions } from './inspect/disk.js';
export { detectFilesystem, FILESYSTEM_DRIVERS } from './inspect/registry.js';
export { reclaimable, reclaimableUnits, type Reclaimable, type ReclaimOptions, type UnitVerdict } from './inspect/reclaim.js';
export { describeContents, type ContentsInfo, type ContentsOptions } from './inspect/contents.js';
export type { GptHeader } from './inspect/gpt.js';
export type { Partition, PartitionKind, PartitionFinding, PartitionScheme, PartitionTable } from './inspect/partition-table.js';
export type { FilesystemDriver, FilesystemInfo, FilesystemState, Region, Run, UsageSource, UsedMapOptions } from './inspect/filesystem.js';

// VHD (qemu's vpc): open, create, check and repair, Azure's rules.
export { VhdImage, type VhdOpenOptions, type VhdParentResolver, type VhdParentRequest } from './vhd/image.js';
export type { VhdDiskType } from './vhd/footer.js';
export type { VhdCacheOptions } from './vhd/tables.js';
export type { VhdLocator, LayoutOptions as VhdLayoutOptions } from './vhd/layout.js';
export { createVhd, planVhd, type VhdPlan, type CreateVhdOptions, type CreateVhdResult, type VhdSubformat, type VhdParentPath } from './vhd/create.js';
export type { SizeRule, Chs } from './vhd/geometry.js';
export { checkVhd, repairVhd, type VhdCheckResult, type VhdCheckOptions, type VhdRepairOptions, type VhdRepairResult, type VhdRepairAction, type VhdRepairActionKind } from './vhd/check.js';
export { azureProblems, azureSize, azureCreateOptions, AZURE_CREATOR, AZURE_MAX_SIZE, type AzureProblem, type AzureRule } from './vhd/azure.js';
