/**
 * The disk-level view: the partition table, the filesystem of each partition, and the used map
 * of the whole disk. Only what a trusted filesystem says is free counts as free: the gaps between
 * partitions (boot code in the MBR gap, EBRs, the GPT itself), partitions of unknown types,
 * filesystems without a used map (LVM, LUKS, BitLocker, XFS, ...), untrusted ones (journal to
 * replay, dirty, hibernated), the tail of a partition past its filesystem's end, and
 * partitions that overlap another, all count as used.
 */
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import { throwIfAborted } from '../errors.js';
import type { FilesystemInfo, Region, Run, UsageSource, UsedMapOptions } from './filesystem.js';
import { leafPartitions, readPartitionTable, type Partition, type PartitionFinding, type PartitionScheme, type PartitionTable } from './partition-table.js';
import { detectWithDriver, type Detected } from './registry.js';

/** The partition table of `dev` (a filesystem at sector 0 means no table). */
export function readPartitions(dev: BlockDevice): Promise<PartitionTable> {
  return readPartitionTable(dev, { filesystemAtStart: async (d) => (await detectWithDriver(d, { start: 0, length: d.size })) !== null });
}

/** A partition's filesystem as the disk-level view reports it. */
export interface DiskFilesystem {
  /** The filesystem's type, as FilesystemInfo's `type` names it. */
  type: string;
  /** Its volume label, or null. */
  label: string | null;
  /** Its UUID or volume serial number, or null. */
  uuid: string | null;
  /** Bytes the filesystem spans. */
  size: number;
  /** What the filesystem says of its state. */
  state: FilesystemInfo['state'];
  /** Bytes of the partition counted as used: all of it when the free space is not trusted. Null when usage was not asked for. */
  usedBytes: number | null;
  /** The partition's other bytes: free in a trusted filesystem. Null when usage was not asked for. */
  freeBytes: number | null;
  /** Whether its free space is trusted (counted as free). */
  trusted: boolean;
  /** Why not, when it is not trusted. */
  untrustedReason: string | null;
}

/** A partition with the filesystem found in it. */
export interface DiskPartition extends Partition {
  /** The filesystem recognised in the partition, or null. */
  filesystem: DiskFilesystem | null;
}

/** What {@link inspectDisk} returns: the partition table and each partition's filesystem and usage. */
export interface DiskContents {
  /** The partition table's kind. */
  partitionScheme: PartitionScheme;
  /** The sector size in bytes the table's LBAs count. */
  sectorSize: number;
  /** GPT disk GUID, or the MBR disk signature as "0x1234abcd"; null when there is none. */
  diskId: string | null;
  /** The partitions in table order. */
  partitions: DiskPartition[];
  /** What was wrong with the table (never thrown). */
  findings: PartitionFinding[];
  /** Bytes of the disk counted as used (see usedRuns); null when usage was not asked for. */
  usedBytes: number | null;
}

/** One partition (or the whole disk) as the used map sees it. */
interface Slot {
  partition: Partition;
  /** The partition clipped to the disk. */
  region: Region;
  detected: Detected | null;
  /** Why its free space is not trusted; null when its filesystem's used map is used. */
  untrusted: string | null;
}

/** The table, and for each partition that holds data, its filesystem and whether its free space counts. */
async function layoutOf(dev: BlockDevice, table: PartitionTable): Promise<Slot[]> {
  const leaves = leafPartitions(table)
    .map((p) => ({ p, region: { start: Math.min(p.start, dev.size), length: Math.max(0, Math.min(p.length, dev.size - p.start)) } }))
    .sort((a, b) => a.region.start - b.region.start);
  const overlapping = new Set<Partition>();
  let reach: { end: number; p: Partition } | null = null;
  for (const { p, region } of leaves) {
    if (reach && region.start < reach.end) {
      overlapping.add(p);
      overlapping.add(reach.p);
    }
    if (!reach || region.start + region.length > reach.end) reach = { end: region.start + region.length, p };
  }
  const slots: Slot[] = [];
  for (const { p, region } of leaves) {
    const detected = region.length > 0 ? await detectWithDriver(dev, region) : null;
    slots.push({ partition: p, region, detected, untrusted: untrustedReason(p, region, detected, overlapping.has(p)) });
  }
  return slots;
}

function untrustedReason(p: Partition, region: Region, d: Detected | null, overlaps: boolean): string | null {
  if (!d) return 'no filesystem recognised';
  if (overlaps) return `partition ${p.index} overlaps another partition`;
  if (region.length < p.length) return 'the partition ends past the end of the disk';
  if (d.info.untrusted !== null) return d.info.untrusted;
  if (!d.driver.usedRuns) return `no used map for ${d.info.type}`;
  if (d.info.size > region.length) return `the filesystem (${d.info.size} bytes) is larger than its partition (${region.length} bytes)`;
  return null;
}

/**
 * The used runs of one slot, inside its region, ascending and clipped: the filesystem's own
 * runs when trusted, and the region's bytes past the filesystem's end; otherwise the region.
 */
async function* slotUsedRuns(dev: BlockDevice, slot: Slot, opts: UsedMapOptions): AsyncGenerator<Run> {
  const { region, detected } = slot;
  const end = region.start + region.length;
  if (slot.untrusted !== null || !detected?.driver.usedRuns) {
    if (region.length > 0) yield { start: region.start, length: region.length };
    return;
  }
  const fsEnd = region.start + Math.min(detected.info.size, region.length);
  let at = region.start; // everything before `at` has been yielded or is past
  for await (const r of detected.driver.usedRuns(dev, region, detected.info, opts)) {
    const rs = Number.isFinite(r.start) ? Math.max(r.start, at) : at;
    const re = Number.isFinite(r.start + r.length) ? Math.min(r.start + r.length, fsEnd) : fsEnd;
    if (re > rs) {
      yield { start: rs, length: re - rs };
      at = re;
    }
  }
  if (end > fsEnd) yield { start: Math.max(at, fsEnd), length: end - Math.max(at, fsEnd) };
}

/** Joins touching runs. */
class RunJoiner {
  private pending: Run | null = null;
  /** Add a run at or after the previous ones; returns a finished run, if any. */
  add(r: Run): Run | null {
    if (r.length <= 0) return null;
    const p = this.pending;
    if (p && r.start <= p.start + p.length) {
      p.length = Math.max(p.length, r.start + r.length - p.start);
      return null;
    }
    this.pending = { start: r.start, length: r.length };
    return p;
  }
  finish(): Run | null {
    const p = this.pending;
    this.pending = null;
    return p;
  }
}

/** Options of {@link usedRuns}. */
export interface UsedRunsOptions extends UsedMapOptions {
  /** The table from readPartitions, when the caller already has it. */
  table?: PartitionTable;
}

/**
 * The used runs of the whole disk, ascending, non-overlapping and joined: everything except what
 * trusted filesystems say is free. Streamed: memory does not grow with the disk or the number of
 * runs. Progress is in bytes of the disk; an aborted signal rejects with ECANCELED / ABORTED.
 */
export async function* usedRuns(dev: BlockDevice, opts: UsedRunsOptions = {}): AsyncGenerator<Run> {
  const table = opts.table ?? (await readPartitions(dev));
  const slots = await layoutOf(dev, table);
  const join = new RunJoiner();
  let cursor = 0;
  for (const slot of slots) {
    throwIfAborted(opts.signal, 'used map');
    const { region } = slot;
    if (region.start > cursor) {
      const done = join.add({ start: cursor, length: region.start - cursor });
      if (done) yield done;
    }
    const progress: UsedMapOptions = {
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.usage ? { usage: opts.usage } : {}),
      onProgress: (done, total) => opts.onProgress?.(region.start + (total > 0 ? Math.floor((done / total) * region.length) : 0), dev.size),
    };
    for await (const r of slotUsedRuns(dev, slot, progress)) {
      // Overlapping partitions: what an earlier one already covered stays covered.
      const s = Math.max(r.start, cursor);
      const done = join.add({ start: s, length: r.start + r.length - s });
      if (done) yield done;
    }
    cursor = Math.max(cursor, region.start + region.length);
    opts.onProgress?.(cursor, dev.size);
  }
  if (dev.size > cursor) {
    const done = join.add({ start: cursor, length: dev.size - cursor });
    if (done) yield done;
  }
  const last = join.finish();
  if (last) yield last;
  opts.onProgress?.(dev.size, dev.size);
}

/** Options of {@link inspectDisk}; progress is in bytes of the disk, `signal` stops it (ECANCELED / ABORTED). */
export interface InspectOptions extends ProgressOptions {
  /**
   * Count used and free bytes: from the allocation maps (true or 'maps', the default), or from
   * the free counters of filesystems that keep them ('counters', see UsageSource); false: not.
   */
  usage?: boolean | UsageSource;
}

/**
 * Bytes of a slot's region counted as used: with 'counters', the region less what the
 * filesystem's counters say is free, where it keeps them and its free space is trusted;
 * otherwise the length of its used runs.
 */
async function slotUsedBytes(dev: BlockDevice, slot: Slot, usage: UsageSource, signal: AbortSignal | undefined): Promise<number> {
  const d = slot.detected;
  if (usage === 'counters' && slot.untrusted === null && d?.driver.counterFreeBytes) {
    const free = await d.driver.counterFreeBytes(dev, slot.region, d.info);
    if (free !== null) return slot.region.length - Math.min(free, d.info.size, slot.region.length);
  }
  let used = 0;
  for await (const r of slotUsedRuns(dev, slot, { ...(signal ? { signal } : {}), usage })) used += r.length;
  return used;
}

/**
 * The partition table and each partition's filesystem, with used and free bytes. Damage in the
 * table is in `findings`; a partition whose filesystem is not recognised has `filesystem: null`.
 */
export async function inspectDisk(dev: BlockDevice, opts: InspectOptions = {}): Promise<DiskContents> {
  const table = await readPartitions(dev);
  const slots = await layoutOf(dev, table);
  const usage = opts.usage === false ? null : opts.usage === 'counters' ? 'counters' : 'maps';
  const bySlot = new Map(slots.map((s) => [s.partition, s]));
  const partitions: DiskPartition[] = [];
  for (const p of table.partitions) {
    const slot = bySlot.get(p);
    const d = slot?.detected ?? null;
    let usedBytes: number | null = null;
    if (slot && d && usage) {
      throwIfAborted(opts.signal, 'used map');
      usedBytes = await slotUsedBytes(dev, slot, usage, opts.signal);
      opts.onProgress?.(slot.region.start + slot.region.length, dev.size);
    }
    partitions.push({
      ...p,
      filesystem:
        slot && d
          ? {
              type: d.info.type,
              label: d.info.label,
              uuid: d.info.uuid,
              size: d.info.size,
              state: d.info.state,
              usedBytes,
              freeBytes: usedBytes === null ? null : slot.region.length - usedBytes,
              trusted: slot.untrusted === null,
              untrustedReason: slot.untrusted,
            }
          : null,
    });
  }
  if (usage) opts.onProgress?.(dev.size, dev.size);
  let used: number | null = null;
  if (usage) {
    // Outside the leaves: all used. Inside: what each leaf counted.
    used = dev.size;
    for (const p of partitions) if (p.filesystem?.freeBytes) used -= p.filesystem.freeBytes;
  }
  return { partitionScheme: table.scheme, sectorSize: table.sectorSize, diskId: table.diskId, partitions, findings: table.findings, usedBytes: used };
}
