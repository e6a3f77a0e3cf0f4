/**
 * Checking and repairing a VHD, with findings as data in the shape of VHDX's (driver/check.ts).
 *
 * `checkVhd` reports everything the open validates (both footer copies, the dynamic header, the
 * BAT's place, the parent locators, the size rules), then one streaming pass over the BAT (every
 * block inside the file and clear of the structures, no two blocks overlapping), the space
 * nothing names (leaked blocks), and for a differencing disk with a resolver, its parent.
 *
 * `repairVhd` fixes what an interrupted write leaves, and nothing that needs a guess:
 * - 'leaks': space after the image's last block (blocks written whose BAT entries never were):
 *   the footer is written where the last block ends and the file cut after it.
 * - 'all': that, and a footer missing or damaged at the end (written back from the copy at
 *   offset 0, at the end of the last block), and a damaged or different copy at offset 0
 *   (rewritten from the footer at the end).
 * Each step leaves an image at least as readable as before if it is interrupted: the footer goes
 * to its new place before the file is cut, and the copy at 0 is rewritten only from a good end.
 * Leaked blocks inside the file are reported, not moved.
 */
import { VhdxError, throwIfAborted, type ErrorReason } from '../errors.js';
import type { RandomAccessSource } from '../io/source.js';
import type { ProgressOptions } from '../device/block-device.js';
import { MAX_FINDINGS, type CheckResult, type Finding, type RepairMode } from '../driver/check.js';
import { FOOTER_SIZE, type VhdDiskType } from './footer.js';
import { readVhdLayout, type LayoutOptions, type VhdLayout } from './layout.js';
import { scanVhdBat } from './bat-scan.js';
import { VhdImage, checkVhdParent, type VhdParentResolver } from './image.js';

/** A check's result, in the shape of VHDX's CheckResult (`leaks` counts blocks' worth of space here, not MiB). */
export interface VhdCheckResult extends Omit<CheckResult, 'format' | 'type' | 'log' | 'bitmapBlocks'> {
  /** Always `vpc` (qemu's name for VHD). */
  format: 'vpc';
  /** The disk type, null when the footer could not be read. */
  type: VhdDiskType | null;
  /** The disk's size in bytes, by the size rule in use. */
  size: number | null;
}

/** Options of {@link checkVhd}: the size rule, the parent, progress and cancellation. */
export interface VhdCheckOptions extends ProgressOptions, LayoutOptions {
  /** For a differencing disk: opens its parent, which is then checked against the child (as VhdImage.open does). */
  parent?: VhdParentResolver;
  /** Accept a parent whose time stamp does not match the child's record of it (see VhdOpenOptions). */
  ignoreParentTimestamp?: boolean;
}

/** What a check learned that a repair needs. */
interface CheckState {
  result: VhdCheckResult;
  layout: VhdLayout | null;
  /** Where the footer belongs: the end of the last structure or block. */
  imageEnd: number | null;
  /** Leaked space after the last block: bytes and blocks' worth. */
  tail: { bytes: number; blocks: number } | null;
}

class Report {
  readonly r: VhdCheckResult;
  constructor(fileSize: number) {
    this.r = {
      format: 'vpc',
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
      size: null,
      totalBlocks: 0,
      allocatedBlocks: 0,
      fragmentedBlocks: 0,
    };
  }

  add(f: Omit<Finding, 'repairableBy'> & { repairableBy?: RepairMode | null }): void {
    if (f.severity === 'corruption') this.r.corruptions++;
    else if (f.severity === 'warning') this.r.warnings++;
    if (this.r.findings.length >= MAX_FINDINGS) {
      this.r.omittedFindings++;
      return;
    }
    this.r.findings.push({ ...f, repairableBy: f.repairableBy ?? null });
  }

  leak(bytes: number, blocks: number, message: string, structure: string, offset: number, repairableBy: RepairMode | null): void {
    this.r.leaks += blocks;
    this.r.leakedBytes += bytes;
    this.add({ severity: 'leak', reason: 'LEAKED_SPACE', message, structure, offset, repairableBy });
  }
}

/** Check the VHD in `source` (nothing is written). Only a cancelled check and programming errors throw. */
export async function checkVhd(source: RandomAccessSource, opts: VhdCheckOptions = {}): Promise<VhdCheckResult> {
  return (await runCheck(source, opts)).result;
}

async function runCheck(src: RandomAccessSource, opts: VhdCheckOptions): Promise<CheckState> {
  const rep = new Report(src.size);
  const state: CheckState = { result: rep.r, layout: null, imageEnd: null, tail: null };
  const stop = (kind: 'unsupported' | 'incomplete', e: { reason: ErrorReason; message: string; structure?: string | undefined; offset?: number | undefined }): CheckState => {
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
  throwIfAborted(opts.signal, 'check');
  try {
    const { layout, problems } = await readVhdLayout(src, opts);
    if (!layout && problems.some((p) => p.reason === 'NOT_VHD' || p.reason === 'EMPTY_FILE')) return stop('unsupported', problems[0]!);
    for (const p of problems) {
      rep.add({ severity: p.severity, reason: p.reason, message: p.message, structure: p.structure, offset: p.offset, repairableBy: p.repairable ? 'all' : null });
    }
    if (!layout) return state;
    state.layout = layout;
    rep.r.type = layout.type;
    rep.r.size = layout.size;
    if (!layout.dynamic) {
      rep.r.imageEndOffset = layout.size;
      state.imageEnd = layout.size;
      return state;
    }
    const d = layout.dynamic;
    rep.r.totalBlocks = d.blocks;
    throwIfAborted(opts.signal, 'check');
    const scan = await scanVhdBat(src, layout, { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
    rep.r.allocatedBlocks = scan.allocatedBlocks;
    rep.r.fragmentedBlocks = scan.fragmentedBlocks;
    for (const p of scan.problems) rep.add({ severity: p.severity, reason: p.reason, message: p.message, structure: p.structure, offset: p.offset });
    rep.r.omittedFindings += Math.max(0, scan.badEntries - scan.problems.filter((p) => p.severity === 'corruption').length);
    rep.r.corruptions += Math.max(0, scan.badEntries - scan.problems.filter((p) => p.severity === 'corruption').length);
    const whole = d.bitmapBytes + d.blockSize;
    if (scan.leakedInside > 0) {
      rep.leak(scan.leakedInside * whole, scan.leakedInside, `${scan.leakedInside} block${scan.leakedInside === 1 ? '' : 's'}' worth of space inside the file belong${scan.leakedInside === 1 ? 's' : ''} to nothing (left by an interrupted write; only moving blocks would free it)`, 'file', d.objectsEnd, null);
    }
    state.imageEnd = scan.imageEnd;
    rep.r.imageEndOffset = scan.imageEnd;
    // Space after the last block: where an interrupted allocation leaves its block.
    const tail = (layout.endFooterOk ? layout.endFooterOffset : layout.fileSize) - scan.imageEnd;
    if (tail > 0 && scan.badEntries === 0) {
      state.tail = { bytes: tail, blocks: Math.ceil(tail / whole) };
      rep.leak(
        tail,
        state.tail.blocks,
        `${tail} bytes after the last block belong to nothing (a block written whose BAT entry never was)`,
        'file',
        scan.imageEnd,
        layout.endFooterOk ? 'leaks' : 'all',
      );
    }
    if (layout.type === 'differencing') await checkParent(layout, rep, opts);
  } catch (e) {
    if (e instanceof VhdxError && e.reason !== 'ABORTED') return stop('incomplete', e);
    throw e;
  }
  return state;
}

/** A differencing disk's parent: named by a path, and (with a resolver) the disk it names. */
async function checkParent(layout: VhdLayout, rep: Report, opts: VhdCheckOptions): Promise<void> {
  const d = layout.dynamic!;
  if (!d.locators.some((l) => l.path !== null && l.path.length > 0)) {
    rep.add({ severity: 'warning', reason: 'BAD_PARENT_LOCATOR', message: 'no parent locator names a path: the parent can only be found by hand', structure: 'VHD dynamic header', offset: d.headerOffset });
  }
  if (!opts.parent) return;
  let parent: VhdImage | null = null;
  const verified = new WeakSet<VhdImage>(); // parents the resolver checked already
  try {
    const h = d.header;
    parent = await opts.parent({
      locators: d.locators,
      parentName: h.parentUnicodeName,
      parentUniqueId: h.parentUniqueId,
      parentTimestamp: h.parentTimestamp,
      child: layout,
      depth: 1,
      chain: [layout.footer.uniqueId],
      verify: (p) => {
        checkVhdParent(layout, p, opts);
        verified.add(p);
      },
    });
    if (!verified.has(parent)) checkVhdParent(layout, parent, opts);
  } catch (e) {
    if (!(e instanceof VhdxError) || e.reason === 'ABORTED') throw e;
    rep.add({ severity: 'corruption', reason: e.reason, message: `the parent: ${e.summary}`, structure: 'VHD dynamic header', offset: d.headerOffset });
  } finally {
    await parent?.close();
  }
}

/** Options of {@link repairVhd}: those of the checks it runs, and what it may fix. */
export interface VhdRepairOptions extends VhdCheckOptions {
  /** `leaks`: cut leaked space off the end; `all`: also rewrite a missing or damaged footer or footer copy. */
  mode: RepairMode;
}

/** A change {@link repairVhd} makes: the footer at the end, its copy at offset 0, or leaked space cut off. */
export type VhdRepairActionKind = 'rewriteFooter' | 'rewriteFooterCopy' | 'truncateLeaks';

/** One change a VHD repair made. */
export interface VhdRepairAction {
  /** What kind of change. */
  action: VhdRepairActionKind;
  /** For people: what was changed, with the numbers involved. */
  message: string;
  /** File offset of the change, in bytes. */
  offset: number;
}

/** What {@link repairVhd} did, with the check before and after. */
export interface VhdRepairResult {
  /** The mode it ran in. */
  mode: RepairMode;
  /** The check before any change. */
  before: VhdCheckResult;
  /** The check after the repair (the same as `before` when nothing was changed). */
  after: VhdCheckResult;
  /** What was changed, in order. */
  actions: VhdRepairAction[];
  /** The findings that made the repair refuse (empty when it ran). */
  refused: Finding[];
  /** Why the repair was refused, when it was. */
  refusal: string | null;
  /** Blocks' worth of leaked space cut off the end. */
  leaksFixed: number;
  /** Footers rewritten. */
  corruptionsFixed: number;
}

/**
 * Repair the VHD in `source` (writable) as far as `mode` allows, then check it again. Changes
 * nothing when it has damage no repair fixes safely, when the check cannot complete, or when
 * nothing needs repair.
 */
export async function repairVhd(source: RandomAccessSource, opts: VhdRepairOptions): Promise<VhdRepairResult> {
  const mode = opts.mode;
  if (mode !== 'leaks' && mode !== 'all') throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `repair mode must be 'leaks' or 'all', not ${String(mode)}`);
  if (source.readOnly || !source.write || !source.flush || !source.truncate) throw new VhdxError('EROFS', 'READ_ONLY', 'repairing a VHD needs it open for writing');
  const first = await runCheck(source, opts);
  const before = first.result;
  const out: VhdRepairResult = { mode, before, after: before, actions: [], refused: [], refusal: null, leaksFixed: 0, corruptionsFixed: 0 };
  const refuse = (why: string, findings: Finding[] = []): VhdRepairResult => {
    out.refusal = why;
    out.refused = findings;
    return out;
  };
  if (!before.supported) return refuse(`the file cannot be checked: ${before.error?.message ?? 'not a VHD'}`);
  if (!before.canComplete) return refuse(`the check could not complete: ${before.error?.message ?? 'read error'}`);
  const blocking = before.findings.filter((f) => f.severity === 'corruption' && f.repairableBy === null);
  const repairable = before.findings.filter((f) => f.severity === 'corruption' && f.repairableBy !== null).length;
  if (blocking.length > 0 || before.corruptions > repairable) return refuse('the image has damage that no repair can fix safely; nothing was changed', blocking);
  const layout = first.layout!;
  const imageEnd = first.imageEnd!;
  const endLeak = first.tail;
  const needsAll = before.findings.some((f) => f.severity === 'corruption' && f.repairableBy === 'all');
  if (mode === 'leaks' && endLeak && !layout.endFooterOk) return refuse("the footer at the end is missing: leaked space is freed with the footer's repair (mode 'all')");
  const footerBytes = layout.footerBytes;

  if (layout.dynamic && (endLeak || (mode === 'all' && !layout.endFooterOk))) {
    // The footer where the last block ends, then the file cut after it.
    await source.write(imageEnd, footerBytes);
    await source.flush();
    const cutFrom = source.size;
    if (cutFrom > imageEnd + FOOTER_SIZE) {
      await source.truncate(imageEnd + FOOTER_SIZE);
      await source.flush();
    }
    if (!layout.endFooterOk) {
      out.actions.push({ action: 'rewriteFooter', message: `wrote the footer (from the copy at offset 0) at ${imageEnd}, where the last block ends`, offset: imageEnd });
      out.corruptionsFixed++;
    }
    if (endLeak) {
      out.actions.push({ action: 'truncateLeaks', message: `cut the file from ${layout.fileSize} to ${imageEnd + FOOTER_SIZE} bytes, freeing ${endLeak.bytes} leaked bytes`, offset: imageEnd });
      out.leaksFixed = endLeak.blocks;
    }
  }
  if (mode === 'all' && needsAll && layout.dynamic && !layout.headFooterOk) {
    await source.write(0, footerBytes);
    await source.flush();
    out.actions.push({ action: 'rewriteFooterCopy', message: 'rewrote the footer copy at offset 0 from the footer at the end', offset: 0 });
    out.corruptionsFixed++;
  }
  if (out.actions.length > 0) out.after = (await runCheck(source, opts)).result;
  return out;
}
