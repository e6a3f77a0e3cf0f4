/**
 * Checking and repairing an image (`vhdx check [-r leaks|all]`).
 *
 * `checkImage` reports what is wrong as data, never as an exception for damage it can describe:
 * every problem the format's parsers find as the open reads the image (`readLayout`: both headers
 * and both region table copies one by one, reserved fields, and where the open stops, if it
 * does), then its own cross-structure passes: the log's state, the parent, one streaming pass over the BAT
 * (states allowed for the disk type, blocks inside the file, after the header section, and
 * overlapping nothing), then the leaked space: whole MiB after the image's last object, and MiB
 * inside the file that nothing names. Named means a structure, a present block, or the place a
 * non-present entry kept (an UNMAPPED block's FileOffsetMB, which the writer keeps and reuses).
 *
 * Memory stays bounded whatever the image: the BAT is read in windows of about 1 MiB, and
 * overlaps are found with a bitmap of the file's 1 MiB units (every object is 1 MiB aligned), one
 * bit per MiB of file: 8 MiB of bitmap for a 64 TiB file, against 8 bytes per block for a sorted
 * array of offsets, and one pass instead of a sort. Only when a block collides with another block
 * is the BAT read a second time, to name the block it collides with.
 *
 * `repairImage` fixes what can be fixed without guessing or moving blocks: leaked space at the
 * end of the file ('leaks': cut off; space inside the file stays reported), and with 'all' also a dirty log (replayed into the file), a damaged header copy
 * (rewritten from the current one by a header update, which writes both slots) and a damaged or
 * stale region table copy (rewritten from the copy the open uses). When anything else is wrong
 * it changes nothing.
 */
import { VhdxError, formatOffset, throwIfAborted, type ErrorReason } from '../errors.js';
import { randomGuid } from '../codec/guid.js';
import { writableSource, type RandomAccessSource } from '../io/source.js';
import { HEADER_OFFSETS, alignUp, MiB, ITEM_PARENT_LOCATOR, REGION_TABLE_OFFSETS } from '../format/constants.js';
import { BAT_ENTRY_SIZE, BitmapState, PayloadState, entryFileOffsetMB, entryState, judgeBatEntry } from '../format/bat.js';
import { problemError, problemFromError } from '../format/problem.js';
import { scanBat as readBatWindows } from './bat-scan.js';
import type { ProgressOptions } from '../device/block-device.js';
import { updateHeaders, type CurrentHeader } from './headers.js';
import { readLayout, replayInPlace, type DiskType, type Layout } from './open.js';
import { PARENT_PATH_KEYS, checkParent, locatorLinkage, locatorValue, type ParentResolver, type VhdxImage } from './image.js';
import { MAX_OCCUPANCY_UNITS, claimUnits, fixedObjects, type FixedObject } from './free-space.js';

/**
 * How bad a finding is: `corruption` damage (exit 2 from `vhdx check`), `leak` file space nothing
 * uses (exit 3), `warning` something readers may take badly, `info` a remark.
 */
export type FindingSeverity = 'corruption' | 'leak' | 'warning' | 'info';
/** What {@link repairImage} may fix: `leaks` only the leaked space at the end of the file, `all` also the log, headers and region tables. */
export type RepairMode = 'leaks' | 'all';

/** One problem {@link checkImage} found. */
export interface Finding {
  /** How bad it is. */
  severity: FindingSeverity;
  /** Stable identifier of the problem (the `reason` an open would throw, or a check-only one). */
  reason: ErrorReason;
  /** For people: what is wrong, with the numbers involved. */
  message: string;
  /** The on-disk structure concerned ("header 1", "BAT entry 12", ...). */
  structure?: string;
  /** File offset of that structure, in bytes. */
  offset?: number;
  /** The `repairImage` mode that fixes it, or null when no repair does. */
  repairableBy: RepairMode | null;
}

/** Why a check stopped short (`canComplete: false`) or could not run (`supported: false`). */
export interface CheckError {
  /** Stable identifier of the problem (a VhdxError reason). */
  reason: ErrorReason;
  /** For people: what went wrong. */
  message: string;
  /** The on-disk structure concerned, when known. */
  structure?: string;
  /** File offset of that structure, in bytes, when known. */
  offset?: number;
}

/** What {@link checkImage} found: `qemu-img check`'s fields and more. */
export interface CheckResult {
  /** Always `vhdx`. */
  format: 'vhdx';
  /** False when the file is not a VHDX image or uses something this check cannot handle (exit 63). */
  supported: boolean;
  /** False when the check could not read what it needed (exit 1). */
  canComplete: boolean;
  /** Why the check stopped short or could not run; null when it ran to the end. */
  error: CheckError | null;
  /** Findings, in the order found; at most MAX_FINDINGS are kept (the counts below cover all). */
  findings: Finding[];
  /** Findings counted but not kept, past MAX_FINDINGS. */
  omittedFindings: number;
  /** Findings of severity `corruption`. */
  corruptions: number;
  /** Leaked 1 MiB clusters: after the image's last object, and inside the file named by nothing. */
  leaks: number;
  /** Bytes those leaked clusters take. */
  leakedBytes: number;
  /** Findings of severity `warning`. */
  warnings: number;
  /** Problems that stopped the check (read errors): 0 or 1. */
  checkErrors: number;
  /** Size of the image file in bytes. */
  fileSize: number;
  /**
   * Where the image's used space ends: the end of its last object rounded up to 1 MiB (with the
   * reserves described at the leak check), at most the file's size. Null when not known.
   */
  imageEndOffset: number | null;
  /** The disk type, null when the open stopped before knowing it. */
  type: DiskType | null;
  /** The log: dirty when it holds entries to replay (their count); null when not read. */
  log: { state: 'clean' | 'dirty'; entries: number } | null;
  /** Payload blocks of the virtual disk, and those stored in the file (fully or partially present). */
  totalBlocks: number;
  /** Payload blocks stored in the file (fully or partially present). */
  allocatedBlocks: number;
  /** Allocated blocks that do not directly follow the previous one in the file (virtual-disk order). */
  fragmentedBlocks: number;
  /** Sector bitmap blocks stored in the file (differencing disks). */
  bitmapBlocks: number;
}

/** Options of {@link checkImage}; progress counts BAT entries scanned, `signal` stops the check (ECANCELED / ABORTED). */
export interface CheckOptions extends ProgressOptions {
  /**
   * For a differencing image: opens its parent, as `OpenOptions.parent` does for the readers
   * (`openImageSource` in device/open-node.ts gives the one `openDevice` uses). The parent is then opened and
   * checked against the locator, and a parent that cannot be opened or does not match is a
   * corruption. Without it, only the locator itself is checked.
   */
  parent?: ParentResolver;
}

/** Findings kept in a result; beyond that they are only counted. */
export const MAX_FINDINGS = 1000;
/** Block-to-block collisions named precisely (a second BAT pass finds the block collided with). */
const MAX_NAMED_COLLISIONS = 100;



/** A file offset given in MiB, printed exactly even past 2^53. */
function mibOffset(mb: number): string {
  return `0x${(BigInt(mb) * 1048576n).toString(16)}`;
}

class Report {
  readonly r: CheckResult;
  constructor(fileSize: number) {
    this.r = {
      format: 'vhdx',
      supported: true,
      canComplete: true,
      error: null,
      findings: [],
      omittedFindings: 0,
      corruptions: 0,
      leaks: 0,
      leakedBytes: 0,
      warnings: 0,
      checkErrors: 0,
      fileSize,
      imageEndOffset: null,
      type: null,
      log: null,
      totalBlocks: 0,
      allocatedBlocks: 0,
      fragmentedBlocks: 0,
      bitmapBlocks: 0,
    };
  }

  add(f: Omit<Finding, 'repairableBy'> & { repairableBy?: RepairMode | null }): Finding | null {
    const finding: Finding = { ...f, repairableBy: f.repairableBy ?? null };
    if (f.severity === 'corruption') this.r.corruptions++;
    else if (f.severity === 'warning') this.r.warnings++;
    if (this.r.findings.length >= MAX_FINDINGS) {
      this.r.omittedFindings++;
      return null;
    }
    this.r.findings.push(finding);
    return finding;
  }

  has(reason: ErrorReason, offset: number | undefined): boolean {
    return this.r.findings.some((f) => f.reason === reason && f.offset === offset);
  }
}

/** What a check learned that a repair needs. */
interface CheckState {
  result: CheckResult;
  layout: Layout | null;
  /** Header slots (1, 2) that are damaged and not current. */
  damagedHeaders: number[];
  /** Region table copies (1, 2) to rewrite from `goodRegionTable`. */
  badRegionTables: number[];
  goodRegionTable: Uint8Array | null;
  /** Size to truncate the file to, when it has leaked clusters. */
  truncateTo: number | null;
}

/**
 * Check the image in `source` (read-only; nothing is written). Damage is reported as findings;
 * only a cancelled check (`signal`) and programming errors throw.
 */
export async function checkImage(source: RandomAccessSource, opts: CheckOptions = {}): Promise<CheckResult> {
  return (await runCheck(source, opts)).result;
}

async function runCheck(file: RandomAccessSource, opts: CheckOptions): Promise<CheckState> {
  const rep = new Report(file.size);
  const state: CheckState = { result: rep.r, layout: null, damagedHeaders: [], badRegionTables: [], goodRegionTable: null, truncateTo: null };
  const stop = (kind: 'unsupported' | 'incomplete', e: VhdxError): CheckState => {
    if (kind === 'unsupported') rep.r.supported = false;
    else {
      rep.r.canComplete = false;
      rep.r.checkErrors = 1;
    }
    rep.r.error = { reason: e.reason, message: e.message };
    if (e.structure !== undefined) rep.r.error.structure = e.structure;
    if (e.offset !== undefined) rep.r.error.offset = e.offset;
    return state;
  };
  const aborted = (): void => throwIfAborted(opts.signal, 'check');
  aborted();

  // Everything the open validates, as the parsers' problems. A dirty log is replayed in memory
  // however many ranges that takes (it lasts as long as the check): repair 'all' is what writes
  // such a log to the file.
  const read = await readLayout(file, { maxOverlayRanges: Infinity });
  const e = read.error;
  if (e?.code === 'ECANCELED') throw e;
  const problems = e && e.reason !== 'IO_ERROR' ? [...read.problems, problemFromError(e, 'fatal')] : read.problems;
  for (const p of problems) {
    if (p.severity === 'fatal' && (p.reason === 'NOT_VHDX' || p.code === 'ENOTSUP')) return stop('unsupported', e ?? problemError(p));
    // Where the open stops may repeat what a copy's own problem said already.
    if (p.severity === 'fatal' && rep.has(p.reason, p.fileOffset)) continue;
    const f: Omit<Finding, 'repairableBy'> = { severity: p.severity === 'fatal' ? 'corruption' : p.severity, reason: p.reason, message: p.message };
    if (p.structure !== undefined) f.structure = p.structure;
    if (p.fileOffset !== undefined) f.offset = p.fileOffset;
    rep.add(f);
  }
  if (e?.reason === 'IO_ERROR') return stop('incomplete', e);
  const layout = read.layout;
  state.layout = layout;
  const src = layout?.source ?? file;

  try {
    if (!layout) {
      // The findings so far stand; nothing after them can be read safely.
      return state;
    }
    // A damaged copy can be rewritten from the good one only when the image opens.
    for (const f of rep.r.findings) {
      if (f.structure?.startsWith('header') || f.structure?.startsWith('region table')) {
        if (f.severity === 'corruption' && f.reason !== 'NO_VALID_HEADER') f.repairableBy = 'all';
      }
    }
    state.damagedHeaders = read.damagedHeaders;
    state.badRegionTables = read.badRegionTables;
    state.goodRegionTable = read.goodRegionTable;

    rep.r.type = layout.type;
    rep.r.log = { state: layout.log.dirty ? 'dirty' : 'clean', entries: layout.log.entries };
    rep.r.totalBlocks = layout.geometry.payloadBlocks;
    if (layout.log.dirty) {
      rep.add({
        severity: 'warning',
        reason: 'LOG_DIRTY',
        message: `the log holds ${layout.log.entries} entr${layout.log.entries === 1 ? 'y' : 'ies'} (head sequence number ${layout.log.headSequenceNumber}) not yet applied to the file; reads replay them in memory, and repair 'all' writes them to the file. This check describes the image as replayed`,
        structure: 'log',
        offset: layout.log.logOffset,
        repairableBy: 'all',
      });
    }
    await checkParentLocator(layout, rep, opts);
    aborted();
    await scanBat(src, layout, rep, state, opts);
  } catch (e) {
    if (e instanceof VhdxError && e.reason !== 'ABORTED') return stop('incomplete', e);
    throw e;
  }
  return state;
}

/**
 * A differencing image's parent locator, as the readers use it: the VHDX locator type, a
 * parent_linkage GUID, a path to the parent; with `opts.parent`, the parent itself, opened as the
 * readers open it and matched against the locator (linkage, sector size, virtual size). What
 * makes the readers refuse the chain is a corruption here; no repair rewrites a locator (`vhdx
 * rebase` does, given the right parent).
 */
async function checkParentLocator(layout: Layout, rep: Report, opts: CheckOptions): Promise<void> {
  const loc = layout.parentLocator;
  if (!loc) return;
  const item = layout.metadataItems.find((m) => !m.isUser && m.itemId === ITEM_PARENT_LOCATOR);
  const where = { structure: 'parent locator', offset: layout.metadataRegion.fileOffset + (item?.offset ?? 0) };
  /** A VhdxError the readers would throw (not a cancellation) becomes a corruption. */
  const corruption = (e: unknown): void => {
    if (!(e instanceof VhdxError) || e.reason === 'ABORTED') throw e;
    rep.add({ severity: 'corruption', reason: e.reason, message: e.summary, ...where });
  };
  try {
    locatorLinkage(loc);
  } catch (e) {
    return corruption(e);
  }
  if (PARENT_PATH_KEYS.every((k) => locatorValue(loc, k) === undefined)) {
    rep.add({ severity: 'corruption', reason: 'BAD_PARENT_LOCATOR', message: `the parent locator names no path to the parent (${PARENT_PATH_KEYS.join(', ')})`, ...where });
    return;
  }
  if (!opts.parent) return;
  let parent: VhdxImage;
  const verified = new WeakSet<VhdxImage>(); // parents the resolver checked already
  const verify = (p: VhdxImage): void => {
    checkParent(layout, p);
    verified.add(p);
  };
  try {
    parent = await opts.parent({ locator: loc, child: layout, depth: 1, verify });
  } catch (e) {
    return corruption(e);
  }
  try {
    if (!verified.has(parent)) checkParent(layout, parent);
  } catch (e) {
    corruption(e);
  } finally {
    await parent.close();
  }
}

/** What a BAT entry is, for the scan and for the collision pass (which must agree). */
const enum Kind {
  /** Nothing in the file. */
  None,
  /** A block stored in the file that reads use: bounds and overlaps apply. */
  Present,
  /** Not used by reads, but its offset field names file space, which is then not counted as leaked. */
  Claim,
}

async function scanBat(src: RandomAccessSource, layout: Layout, rep: Report, state: CheckState, opts: CheckOptions): Promise<void> {
  const g = layout.geometry;
  const C = g.chunkRatio;
  const period = C + 1;
  const P = g.payloadBlocks;
  const bs = layout.blockSize;
  const hasParent = layout.hasParent;
  const fixed = layout.leaveBlocksAllocated && !hasParent;
  const fileSize = src.size;
  const total = layout.batEntries;
  const batOffset = layout.batRegion.fileOffset;

  // Fixed objects, and the end of everything so far (with the room qemu-img leaves after its
  // metadata region: a fresh qemu-made image ends there, and that space is not leaked).
  const { objects, end: fixedEnd, reserve } = fixedObjects(layout);
  let objEnd = fixedEnd;

  // Occupancy bitmap: one bit per MiB of the file.
  const units = Math.ceil(fileSize / MiB);
  const occ = units <= MAX_OCCUPANCY_UNITS ? new Uint8Array(Math.ceil(units / 8)) : null;
  if (!occ) {
    rep.add({
      severity: 'warning',
      reason: 'LIMIT_EXCEEDED',
      message: `the file is ${fileSize} bytes: blocks were not checked for overlaps with each other (that needs one bit per MiB of file, up to ${MAX_OCCUPANCY_UNITS} MiB)`,
    });
  } else {
    for (const o of objects) {
      for (let u = o.start / MiB; u < Math.ceil(o.end / MiB) && u < units; u++) occ[u >>> 3]! |= 1 << (u & 7);
    }
  }
  // Space named by something that reads do not use (claims of non-present entries, the rest of
  // a short last block's place, qemu-img's room after its metadata): not leaked, never an overlap.
  const named = occ ? new Uint8Array(occ.length) : null;
  const markNamed = (from: number, to: number): void => {
    if (!named) return;
    for (let u = Math.floor(from / MiB); u < Math.ceil(to / MiB) && u < units; u++) named[u >>> 3]! |= 1 << (u & 7);
  };
  if (reserve) markNamed(reserve.start, reserve.end);
  const fixedAt = (u: number): FixedObject | undefined => objects.find((o) => u * MiB >= o.start && u * MiB < o.end);
  /** Block-to-block collisions: the MiB unit, and the finding to complete with the other block. */
  const collisions: { unit: number; finding: Finding; index: number; fileOffsetMB: number }[] = [];

  const entryWhere = (index: number): { structure: string; offset: number } => ({ structure: `BAT entry ${index}`, offset: batOffset + index * BAT_ENTRY_SIZE });
  const blockName = (index: number): string => {
    if (index % period === C) return `sector bitmap block of chunk ${Math.floor(index / period)}`;
    return `payload block ${index - Math.floor(index / period)}`;
  };

  /** Classify entry `index` (raw words lo, hi), reporting problems when `report`. Returns the kind and extent. */
  const classify = (index: number, lo: number, hi: number, report: boolean): [Kind, number] => {
    const isBitmap = index % period === C;
    const blockIndex = index - Math.floor(index / period);
    const fileOffsetMB = entryFileOffsetMB(lo, hi);
    const fileOffset = fileOffsetMB * MiB;
    const claim: [Kind, number] = [fileOffsetMB > 0 && fileOffset < fileSize ? Kind.Claim : Kind.None, isBitmap ? MiB : bs];
    // The rules are the reader's (format/bat.ts); check reports instead of throwing.
    const v = judgeBatEntry(g, hasParent, fileSize, index, lo, hi);
    if (v.kind === 'unused') {
      if (report) {
        beyondDisk++;
        if (beyondDisk === 1) firstBeyond = index;
      }
      return claim;
    }
    if (v.kind === 'present') return [Kind.Present, v.extent];
    if (v.kind === 'absent') {
      if (report && fixed && !isBitmap) countNotAllocated(blockIndex);
      return claim;
    }
    if (report) {
      const why = v.reason === 'BAT_ENTRY_OUT_OF_BOUNDS' ? ': the file was truncated or the entry is wrong' : '';
      const what = v.reason === 'BAD_BAT_ENTRY' ? `the entry of ${blockName(index)}` : blockName(index);
      rep.add({ severity: 'corruption', reason: v.reason, message: `${what} ${v.message}${why}`, ...entryWhere(index) });
    }
    return v.reason === 'BAT_ENTRY_IN_HEADER' ? [Kind.None, isBitmap ? MiB : bs] : claim;
  };

  let beyondDisk = 0;
  let firstBeyond = -1;
  let notAllocated = 0;
  let firstNotAllocated = -1;
  let notAllocatedBytes = 0;
  function countNotAllocated(blockIndex: number): void {
    notAllocated++;
    if (notAllocated === 1) firstNotAllocated = blockIndex;
    notAllocatedBytes += alignUp(Math.min(bs, g.virtualSize - blockIndex * bs), MiB);
  }
  let prevEnd = -1;
  let chunkHasPartial = false;

  await readBatWindows(src, batOffset, total, period, opts, (view, _bytes, first, count) => {
    for (let i = 0; i < count; i++) {
      const index = first + i;
      const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
      const hi = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
      const isBitmap = index % period === C;
      if (isBitmap) {
        if (chunkHasPartial && entryState(lo) !== BitmapState.PRESENT) {
          rep.add({
            severity: 'corruption',
            reason: 'BAD_BLOCK_STATE',
            message: `chunk ${Math.floor(index / period)} has PARTIALLY_PRESENT blocks but its sector bitmap block is not present`,
            ...entryWhere(index),
          });
        }
        chunkHasPartial = false;
      }
      if (lo === 0 && hi === 0) {
        if (fixed && !isBitmap) {
          const blockIndex = index - Math.floor(index / period);
          if (blockIndex < P) countNotAllocated(blockIndex);
        }
        continue;
      }
      const [kind, extent] = classify(index, lo, hi, true);
      const fileOffsetMB = entryFileOffsetMB(lo, hi);
      if (kind === Kind.Claim) {
        objEnd = Math.max(objEnd, fileOffsetMB * MiB + extent);
        markNamed(fileOffsetMB * MiB, fileOffsetMB * MiB + extent);
        continue;
      }
      if (kind !== Kind.Present) continue;
      const fileOffset = fileOffsetMB * MiB;
      objEnd = Math.max(objEnd, fileOffset + (isBitmap ? MiB : bs));
      if (!isBitmap && extent < bs) markNamed(fileOffset + extent, fileOffset + bs);
      if (isBitmap) rep.r.bitmapBlocks++;
      else {
        if (entryState(lo) === PayloadState.PARTIALLY_PRESENT) chunkHasPartial = true;
        if (rep.r.allocatedBlocks > 0 && fileOffset !== prevEnd) rep.r.fragmentedBlocks++;
        prevEnd = fileOffset + bs;
        rep.r.allocatedBlocks++;
      }
      if (!occ) continue;
      const hit = claimUnits(occ, fileOffsetMB, fileOffsetMB + Math.ceil(extent / MiB));
      if (hit >= 0) {
        const obj = fixedAt(hit);
        const f = rep.add({
          severity: 'corruption',
          reason: 'BLOCK_OVERLAP',
          message: obj
            ? `${blockName(index)} at file offset ${formatOffset(fileOffset)} (+${extent}) overlaps ${obj.name} (${formatOffset(obj.start)} to ${formatOffset(obj.end)})`
            : `${blockName(index)} at file offset ${formatOffset(fileOffset)} (+${extent}) overlaps another block at ${formatOffset(hit * MiB)}`,
          ...entryWhere(index),
        });
        if (!obj && f && collisions.length < MAX_NAMED_COLLISIONS) collisions.push({ unit: hit, finding: f, index, fileOffsetMB });
      }
    }
  });

  if (beyondDisk > 0) {
    rep.add({
      severity: 'warning',
      reason: 'BAD_BAT_ENTRY',
      message: `${beyondDisk} BAT entr${beyondDisk === 1 ? 'y' : 'ies'} past the disk's last payload block ${beyondDisk === 1 ? 'is' : 'are'} not zero (readers ignore them); the first is entry ${firstBeyond}`,
      ...entryWhere(firstBeyond),
    });
  }
  if (notAllocated > 0) {
    rep.add({
      severity: 'warning',
      reason: 'FIXED_BLOCK_NOT_ALLOCATED',
      message: `${notAllocated} payload block${notAllocated === 1 ? '' : 's'} of this fixed disk ${notAllocated === 1 ? 'is' : 'are'} not FULLY_PRESENT (the first is block ${firstNotAllocated}); writes to ${notAllocated === 1 ? 'it' : 'them'} allocate space at the end of the file`,
      ...entryWhere(firstNotAllocated + Math.floor(firstNotAllocated / C)),
    });
    // Space a fixed disk may have preallocated for them (qemu-img does, with ZERO blocks) is not leaked.
    objEnd += notAllocatedBytes;
  }

  // Name the blocks that collisions hit: the first entry, in BAT order, covering the unit.
  if (collisions.length > 0) {
    // The collided units, sorted, and the first present block covering each (found in BAT order).
    const hitUnits = [...new Set(collisions.map((c) => c.unit))].sort((a, b) => a - b);
    const owners = new Map<number, number>();
    await readBatWindows(src, batOffset, total, period, {}, (view, _bytes, first, count) => {
      for (let i = 0; i < count && owners.size < hitUnits.length; i++) {
        const index = first + i;
        const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
        const hi = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
        if (lo === 0 && hi === 0) continue;
        const [kind, extent] = classify(index, lo, hi, false);
        if (kind !== Kind.Present) continue;
        const mb = entryFileOffsetMB(lo, hi);
        const endUnit = mb + Math.ceil(extent / MiB);
        // First collided unit at or after mb (binary search), then those inside the block.
        let a = 0;
        let b = hitUnits.length;
        while (a < b) {
          const mid = (a + b) >>> 1;
          if (hitUnits[mid]! < mb) a = mid + 1;
          else b = mid;
        }
        for (let k = a; k < hitUnits.length && hitUnits[k]! < endUnit; k++) {
          if (!owners.has(hitUnits[k]!)) owners.set(hitUnits[k]!, index);
        }
      }
      return owners.size < hitUnits.length;
    });
    for (const c of collisions) {
      const owner = owners.get(c.unit) ?? -1;
      if (owner >= 0 && owner !== c.index) {
        c.finding.message = `${blockName(c.index)} at file offset ${mibOffset(c.fileOffsetMB)} overlaps ${blockName(owner)} (BAT entry ${owner}) at file offset ${mibOffset(c.unit)}`;
      }
    }
  }

  // Leaked space: whole MiB after the end of the last object, and inside the file, MiB that
  // nothing names (the header section, the log and the regions included). A fixed disk may have
  // space preallocated for its blocks that are not allocated (qemu-img does, with ZERO blocks):
  // that much of it is not leaked.
  const end = alignUp(objEnd, MiB);
  if (occ && named) {
    let inside = 0;
    let runs = 0;
    let first = -1;
    let prevFree = false;
    for (let u = 0; u < Math.min(units, end / MiB); u++) {
      const free = ((occ[u >>> 3]! | named[u >>> 3]!) & (1 << (u & 7))) === 0;
      if (free) {
        inside++;
        if (!prevFree) runs++;
        if (first < 0) first = u;
      }
      prevFree = free;
    }
    const leaked = Math.max(0, inside - Math.ceil(notAllocatedBytes / MiB));
    if (leaked > 0) {
      rep.r.leaks += leaked;
      rep.r.leakedBytes += leaked * MiB;
      rep.add({
        severity: 'leak',
        reason: 'LEAKED_SPACE',
        message:
          `${leaked} MiB inside the file (${runs} run${runs === 1 ? '' : 's'}, the first at ${formatOffset(first * MiB)}) ${leaked === 1 ? 'is' : 'are'} named by no BAT entry and no structure; ` +
          `it is reclaimed only by moving blocks ('vhdx convert' writes a compact copy)`,
        offset: first * MiB,
      });
    }
  }
  rep.r.imageEndOffset = Math.min(fileSize, end);
  const tail = fileSize - end;
  if (tail > 0) {
    const clusters = Math.floor(tail / MiB);
    if (clusters > 0) {
      rep.r.leaks += clusters;
      rep.r.leakedBytes += clusters * MiB;
      state.truncateTo = fileSize - clusters * MiB;
      rep.add({
        severity: 'leak',
        reason: 'LEAKED_SPACE',
        message: `${clusters} MiB (${clusters} cluster${clusters === 1 ? '' : 's'}) after the image's last object ${clusters === 1 ? 'is' : 'are'} used by nothing`,
        offset: end,
        repairableBy: layout.log.dirty ? 'all' : 'leaks',
      });
    }
    if (tail % MiB !== 0) {
      rep.add({
        severity: 'info',
        reason: 'LEAKED_SPACE',
        message: `the file ends ${tail % MiB} bytes past a 1 MiB boundary after the last object (Disk2VHD leaves 512); less than a cluster, not counted as leaked`,
        offset: fileSize - (tail % MiB),
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Repair

/** Options of {@link repairImage}: those of the checks it runs, and what it may fix. */
export interface RepairOptions extends CheckOptions {
  /** What the repair may fix (no default). */
  mode: RepairMode;
}

/** A change {@link repairImage} makes: replay the log, rewrite a header or region table copy, cut leaked space off the end. */
export type RepairActionKind = 'replayLog' | 'rewriteHeaders' | 'rewriteRegionTable' | 'truncateLeaks';

/** One change a repair made. */
export interface RepairAction {
  /** What kind of change. */
  action: RepairActionKind;
  /** For people: what was changed, with the numbers involved. */
  message: string;
  /** The structure changed, when one. */
  structure?: string;
  /** File offset of the change, in bytes (for `truncateLeaks`: the new file size). */
  offset?: number;
}

/** What {@link repairImage} did, with the check before and after. */
export interface RepairResult {
  /** The mode it ran in. */
  mode: RepairMode;
  /** The check before any change. */
  before: CheckResult;
  /** The check after the repair (the same as `before` when nothing was changed). */
  after: CheckResult;
  /** What was changed, in order. Empty when nothing needed repair or the repair was refused. */
  actions: RepairAction[];
  /** The findings that made the repair refuse to change anything (empty when it ran). */
  refused: Finding[];
  /** Why the repair was refused, when it was. */
  refusal: string | null;
  /** Leaked MiB cut off the end of the file. */
  leaksFixed: number;
  /** Damaged header and region table copies rewritten. */
  corruptionsFixed: number;
  /** Log entries written into the file (0 when the log was clean or not replayed). */
  logEntriesReplayed: number;
}

/**
 * Repair the image in `source` (which must be writable) as far as `mode` allows, then check it
 * again. Changes nothing when the image has damage no repair can fix safely (`refused` says
 * which), when the check cannot complete, or when nothing needs repair.
 */
export async function repairImage(file: RandomAccessSource, opts: RepairOptions): Promise<RepairResult> {
  const mode = opts.mode;
  if (mode !== 'leaks' && mode !== 'all') throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `repair mode must be 'leaks' or 'all', not ${String(mode)}`);
  const source = writableSource(file, 'repairing an image needs it open for writing');
  const checkOpts: CheckOptions = {};
  if (opts.signal) checkOpts.signal = opts.signal;
  if (opts.onProgress) checkOpts.onProgress = opts.onProgress;
  if (opts.parent) checkOpts.parent = opts.parent;

  const first = await runCheck(source, checkOpts);
  const before = first.result;
  const out: RepairResult = {
    mode,
    before,
    after: before,
    actions: [],
    refused: [],
    refusal: null,
    leaksFixed: 0,
    corruptionsFixed: 0,
    logEntriesReplayed: 0,
  };
  const refuse = (why: string, findings: Finding[] = []): RepairResult => {
    out.refusal = why;
    out.refused = findings;
    return out;
  };
  if (!before.supported) return refuse(`the image cannot be checked: ${before.error?.message ?? 'not supported'}`);
  if (!before.canComplete) return refuse(`the check could not complete: ${before.error?.message ?? 'read error'}`);
  const blocking = before.findings.filter((f) => f.severity === 'corruption' && f.repairableBy === null);
  const repairable = before.findings.filter((f) => f.severity === 'corruption' && f.repairableBy !== null).length;
  if (blocking.length > 0 || before.corruptions > repairable) {
    return refuse('the image has damage that no repair can fix safely; nothing was changed', blocking);
  }
  const layout = first.layout!;
  const wantsAll = before.findings.some((f) => f.repairableBy === 'all');
  const leakFix = before.leaks > 0 && first.truncateTo !== null;
  if (mode === 'leaks' && leakFix && layout.log.dirty) {
    return refuse("the log is dirty: leaked space is freed only after the log is replayed (repair 'all')");
  }
  if (!(mode === 'all' && wantsAll) && !leakFix) return out; // nothing to do in this mode

  let state = first;
  let cur: CurrentHeader = layout.current;
  if (mode === 'all' && layout.log.dirty) {
    // Replay updates both headers (a new FileWriteGuid, then LogGuid cleared): that also
    // rewrites a damaged header copy.
    out.logEntriesReplayed = await replayInPlace(source);
    out.actions.push({
      action: 'replayLog',
      message: `replayed ${out.logEntriesReplayed} log entr${out.logEntriesReplayed === 1 ? 'y' : 'ies'} into the file`,
      structure: 'log',
      offset: layout.log.logOffset,
    });
    state = await runCheck(source, checkOpts);
    const stillBlocking = state.result.findings.filter((f) => f.severity === 'corruption' && f.repairableBy === null);
    if (!state.layout || stillBlocking.length > 0 || !state.result.canComplete) {
      out.after = state.result;
      out.refused = stillBlocking;
      out.refusal = 'after the log was replayed the image has damage that no repair can fix safely; nothing more was changed';
      return out;
    }
    cur = state.layout.current;
  } else {
    // The first change of this session: a new FileWriteGuid in both header slots. Writing the
    // non-current slot first, then the other, rewrites a damaged copy from the current one.
    cur = await updateHeaders(source, cur, { fileWriteGuid: randomGuid() });
  }
  const damagedHeaders = first.damagedHeaders;
  if (damagedHeaders.length > 0) {
    out.actions.push({
      action: 'rewriteHeaders',
      message: `rewrote header ${damagedHeaders.join(' and ')} from the current header (both slots updated, sequence number now ${cur.sequenceNumber})`,
      structure: `header ${damagedHeaders[0]}`,
      offset: HEADER_OFFSETS[damagedHeaders[0]! - 1],
    });
    out.corruptionsFixed += damagedHeaders.length;
  }

  if (mode === 'all' && state.goodRegionTable && state.badRegionTables.length > 0) {
    // Only the bad copy is written; the good one stays as it is, so a torn write here leaves the
    // image as readable as before.
    for (const copy of state.badRegionTables) {
      const off = REGION_TABLE_OFFSETS[copy - 1]!;
      await source.write(off, state.goodRegionTable);
      await source.flush();
      out.actions.push({
        action: 'rewriteRegionTable',
        message: `rewrote region table ${copy} from region table ${copy === 1 ? 2 : 1}`,
        structure: `region table ${copy}`,
        offset: off,
      });
      out.corruptionsFixed++;
    }
  }

  if (state.result.leaks > 0 && state.truncateTo !== null) {
    const to = state.truncateTo;
    const freed = (state.result.fileSize - to) / MiB;
    await source.truncate(to);
    await source.flush();
    out.actions.push({
      action: 'truncateLeaks',
      message: `truncated the file from ${state.result.fileSize} to ${to} bytes, freeing ${freed} leaked MiB`,
      offset: to,
    });
    out.leaksFixed = freed;
  }
  out.after = (await runCheck(source, checkOpts)).result;
  return out;
}
