/**
 * vhdx: read Microsoft VHDX virtual disks. This entry point is browser-safe (no Node APIs);
 * the Node entry (`./node.ts`) adds file access.
 */
export { VhdxError, isVhdxError, type ErrorCode, type ErrorReason } from './errors.js';
export { MemorySource, BlobSource, readExact, type RandomAccessSource } from './io/source.js';
export { HttpSource, type HttpSourceOptions, type HttpStats, type HttpValidator } from './io/http.js';
export { openUrl, urlParentResolver, probeFormat, type OpenUrlOptions, type ImageFormat, type OpenedDevice, type DeviceOptions } from './device/open.js';
export { relativeParentUrl, type ParentPaths } from './device/parents.js';
export { FaultySource, type FaultyOptions, type FaultyOp, type CrashImageOptions } from './io/faulty.js';
export type { BlockDevice, WritableBlockDevice, DeviceCapabilities, Extent, ExtentType, ProgressOptions } from './device/block-device.js';
export { VhdxImage, checkParent, locatorValue, MAX_CHAIN_DEPTH, type OpenOptions, type AllocationStats, type ParentResolver, type ParentRequest } from './driver/image.js';
export { decodeParentLocator, encodeParentLocator, type ParentLocator } from './format/parent-locator.js';
export { probe, recognize, RECOGNIZE_BYTES, type Layout, type DiskType, type LogState, type HeaderInfo, type MetadataItem } from './driver/open.js';
export { describe, AUTO_SCAN_BAT_BYTES, type ImageInfo, type DescribeOptions, type AllocationScan } from './driver/info.js';
export { crc32c } from './codec/crc32c.js';
export type { BlockMove, MovedBlock, WriteOptions, ZeroOptions } from './driver/writer.js';
export { replayInPlace } from './driver/open.js';
export { createImage, planCreate, DEFAULT_BLOCK_SIZE, DEFAULT_LOG_SIZE, type CreateOptions, type CreateResult, type Subformat } from './driver/create.js';
export type { ImagePlan, ImageIdentity } from './driver/layout.js';
export { RawDevice } from './device/raw.js';
export { copyDevice, fileSink, deviceSink, type CopyOptions, type CopyResult, type CopySink } from './device/copy.js';
export { checkImage, repairImage, MAX_FINDINGS, type CheckResult, type CheckOptions, type CheckError, type Finding, type FindingSeverity, type RepairMode, type RepairOptions, type RepairResult, type RepairAction } from './driver/check.js';
export { commitChild, type CommitOptions, type CommitResult } from './device/commit.js';
export { readPartitions, inspectDisk, usedRuns, type DiskContents, type DiskPartition, type DiskFilesystem, type InspectOptions, type UsedRunsOptions } from './inspect/disk.js';
export { detectFilesystem, FILESYSTEM_DRIVERS } from './inspect/registry.js';
export { reclaimable, reclaimableUnits, type Reclaimable, type ReclaimOptions, type UnitVerdict } from './inspect/reclaim.js';
export { describeContents, type ContentsInfo, type ContentsOptions } from './inspect/contents.js';
export type { Partition, PartitionKind, PartitionFinding, PartitionScheme, PartitionTable } from './inspect/partition-table.js';
export type { FilesystemDriver, FilesystemInfo, FilesystemState, Region, Run, UsageSource, UsedMapOptions } from './inspect/filesystem.js';
export { VhdImage, checkVhdParent, type VhdOpenOptions, type VhdParentResolver, type VhdParentRequest } from './vhd/image.js';
export { createVhd, planVhd, geometryFor, type VhdPlan, type CreateVhdOptions, type CreateVhdResult, type VhdSubformat, type VhdParentPath } from './vhd/create.js';
export { readVhdLayout, type VhdLayout, type VhdLocator, type LayoutProblem } from './vhd/layout.js';
export { diskSizeOf, chsForSectors, isChsExact, chsRoundUp, type SizeRule, type Chs, type DiskSize } from './vhd/geometry.js';
export { checkVhd, repairVhd, type VhdCheckResult, type VhdCheckOptions, type VhdRepairOptions, type VhdRepairResult, type VhdRepairAction } from './vhd/check.js';
export { azureProblems, azureSize, azureCreateOptions, AZURE_CREATOR, AZURE_MAX_SIZE, type AzureProblem, type AzureRule } from './vhd/azure.js';
export { compact, COMPACT_MODES, type CompactMode, type CompactOptions, type CompactReport, type SkippedArea } from './ops/compact.js';
export type { PlacedBlock } from './driver/mapping.js';
export { resize, minimumSize, type ResizeOptions, type ResizeResult } from './ops/resize.js';
