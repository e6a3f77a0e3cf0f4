/**
 * Compact: give a dynamic or differencing VHDX's unneeded space back, in place.
 *
 * 1. Analysis (reads only): the image's allocated blocks are walked against the disk's used map
 *    (src/inspect: usedRuns, reclaimableUnits), on the merged view of a differencing chain. A
 *    block is released when no filesystem uses any byte of it ('filesystem'), when every byte
 *    of it reads as zero ('zeroes'), or either ('full'). Space outside known partitions and
 *    filesystems, and in filesystems whose free space is not trusted, counts as used.
 * 2. Rounds of: release (blocks become ZERO with no place: never NOT_PRESENT, which would show a
 *    parent), commit, record the file's holes, move the blocks last in the file (payload and
 *    sector bitmap blocks) into the lowest holes (Writer.moveBlocks: copy, flush, then the BAT
 *    through the log, many moves per log entry), and cut the file after its last object, never
 *    below a region (Writer.trimEnd). A round releases what the writer's record of free space
 *    holds; the next takes the rest.
 *
 * Every step is one of the driver's crash-safe operations, so an interrupted compact leaves the
 * image consistent at its last commit, and running it again finishes the job: released blocks
 * read as zeros and are not found again, and space a crash left named by nothing is found by
 * `recordHoles`. The image must not be written by anyone else while it runs (the analysis would
 * be stale). Memory: one bit per payload block, one byte per MiB of the file, and the caches.
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import type { ProgressOptions } from '../device/block-device.js';
import { MiB } from '../format/constants.js';
import { BitmapState, PayloadState } from '../format/bat.js';
import type { VhdxImage } from '../driver/image.js';
import type { BlockMove } from '../driver/writer.js';
import { fixedObjects } from '../driver/free-space.js';
import { inspectDisk, readPartitions, usedRuns } from '../inspect/disk.js';
import { reclaimableUnits } from '../inspect/reclaim.js';
import type { Run } from '../inspect/filesystem.js';

/** What releases a block: `filesystem` no filesystem uses it, `zeroes` it reads as zeros, `full` either. */
export type CompactMode = 'full' | 'zeroes' | 'filesystem';
/** Every compact mode, the default (`full`) first. */
export const COMPACT_MODES: readonly CompactMode[] = ['full', 'zeroes', 'filesystem'];

/** Options of {@link compact}; `signal` stops it between crash-safe steps (ECANCELED / ABORTED). */
export interface CompactOptions extends ProgressOptions {
  /** What releases a block (default 'full': unused by every filesystem, or all zeros). */
  mode?: CompactMode;
  /** Analyse and report only: nothing is written (the image may be open read-only). */
  dryRun?: boolean;
}

/** A part of the disk whose free space was not used (everything in it counts as used). */
export interface SkippedArea {
  /** The partition's number (0: the whole disk of a disk without a partition table). */
  partition: number;
  /** Byte offset and length on the disk. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** The filesystem found, or null. */
  filesystem: string | null;
  /** Why its free space was not used. */
  reason: string;
}

/** What {@link compact} did (or, in a dry run, would do). */
export interface CompactReport {
  /** The mode it ran in. */
  mode: CompactMode;
  /** True when nothing was written. */
  dryRun: boolean;
  /** The image's block size in bytes: the unit released. */
  blockSize: number;
  /** The file's size before, in bytes. */
  fileSizeBefore: number;
  /** The file's size after (a dry run: the estimate, every kept block packed after the fixed structures). */
  fileSizeAfter: number;
  /** Payload blocks released, by reason ('unused': no filesystem uses them; 'zero': all zeros). */
  released: { unused: number; zero: number };
  /** Bytes of the disk those blocks covered. */
  releasedBytes: number;
  /** Blocks moved toward the start of the file (payload and sector bitmap blocks). */
  moved: number;
  /** Areas whose free space was not trusted, and why ('zeroes' mode reads no filesystem). */
  skipped: SkippedArea[];
  /** Wall time, seconds. */
  seconds: number;
}

/** Moves per moveBlocks call (one commit each), and bytes copied per call at most. */
const MOVES_PER_CALL = 256;
const BYTES_PER_CALL = 256 * MiB;
/** Blocks handed to releaseBlocks at a time. */
const RELEASE_BATCH = 4096;

/**
 * Compact `image` (see the top of this file). A fixed disk has nothing to release: ENOTSUP. A
 * differencing disk needs its parent opened (the analysis reads the merged view).
 */
export async function compact(image: VhdxImage, opts: CompactOptions = {}): Promise<CompactReport> {
  const t0 = performance.now();
  const mode = opts.mode ?? 'full';
  if (!COMPACT_MODES.includes(mode)) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `unknown compact mode ${JSON.stringify(mode)} (full, zeroes or filesystem)`);
  const dryRun = opts.dryRun === true;
  const name = image.name ?? 'the image';
  if (image.type === 'fixed') {
    throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `${name} is a fixed disk: every block keeps its space, so there is nothing to release (convert it to a dynamic disk: vhdx convert -O vhdx -o subformat=dynamic)`);
  }
  if (!dryRun && image.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', `${name} is open read-only: compact needs a writable image (or dryRun)`);
  if (image.layout.hasParent && !image.parent) {
    throw new VhdxError('EINVAL', 'NO_PARENT', `${name} is a differencing image opened without its parent: compact reads the disk as the chain shows it`);
  }
  const signal = opts.signal ? { signal: opts.signal } : {};
  const size = image.size;
  const bs = image.blockSize;
  const report = (p: number): void => opts.onProgress?.(Math.min(p, 2 * size), 2 * size);

  // 1. Analysis: which blocks to release, and why.
  let used: AsyncIterable<Run>;
  const skipped: SkippedArea[] = [];
  if (mode === 'zeroes') used = wholeDisk(size);
  else {
    const table = await readPartitions(image);
    const disk = await inspectDisk(image, { ...signal, usage: false });
    for (const p of disk.partitions) {
      if (p.kind === 'extended') continue;
      const fs = p.filesystem;
      if (fs && fs.trusted) continue;
      skipped.push({ partition: p.index, start: p.start, length: p.length, filesystem: fs?.type ?? null, reason: fs?.untrustedReason ?? 'no filesystem recognised' });
    }
    used = usedRuns(image, { ...signal, table });
  }
  const release = new Uint8Array(Math.ceil(image.layout.geometry.payloadBlocks / 8));
  const zeroReason = new Uint8Array(release.length);
  const released = { unused: 0, zero: 0 };
  let releasedBytes = 0;
  let keptBlocks = 0;
  for await (const u of reclaimableUnits(image, { ...signal, blockSize: bs, used, scanZeros: mode !== 'filesystem', onProgress: (d) => report(d) })) {
    if (u.reclaim === null || (mode === 'filesystem' && u.reclaim !== 'unused')) {
      keptBlocks++;
      continue;
    }
    release[u.unit >> 3]! |= 1 << (u.unit & 7);
    if (u.reclaim === 'zero') zeroReason[u.unit >> 3]! |= 1 << (u.unit & 7);
    released[u.reclaim]++;
    releasedBytes += u.length;
  }
  report(size);
  const fileSizeBefore = image.fileSize;
  const done = (fileSizeAfter: number, moved: number): CompactReport => ({
    mode,
    dryRun,
    blockSize: bs,
    fileSizeBefore,
    fileSizeAfter,
    released,
    releasedBytes,
    moved,
    skipped,
    seconds: (performance.now() - t0) / 1000,
  });
  if (dryRun) return done(await estimateSize(image, keptBlocks), 0);

  // 2. Rounds of release, pack, cut.
  const toRelease = released.unused + released.zero;
  let cursor = 0; // blocks below it are dealt with
  let dealt = 0;
  let moved = 0;
  const nextBatch = (): number[] => {
    const out: number[] = [];
    for (let b = cursor; b < image.layout.geometry.payloadBlocks && out.length < RELEASE_BATCH; b++) if (release[b >> 3]! & (1 << (b & 7))) out.push(b);
    return out;
  };
  for (;;) {
    throwIfAborted(opts.signal, 'compact');
    const batch = nextBatch();
    const n = batch.length > 0 ? await image.releaseBlocks(batch, signal) : 0;
    if (n > 0) cursor = batch[n - 1]! + 1;
    dealt += n;
    await image.flush();
    const m = await pack(image, opts.signal, (k) => report(size + ((dealt + moved + k) / Math.max(1, toRelease + keptBlocks)) * size));
    moved += m;
    const sizeBefore = image.fileSize;
    const cut = (await image.trimEnd()) < sizeBefore;
    report(size + ((dealt + moved) / Math.max(1, toRelease + keptBlocks)) * size);
    // A round that released, moved or cut something may have made room in the record of free
    // space for holes it could not hold yet; one that did none of these leaves all as it was.
    // Each move takes a block lower in the file, so the rounds end.
    if (n === 0 && m === 0 && !cut) break;
  }
  // Blocks the writer had no room to release (a record of free space that no round could
  // empty): not released, so not counted.
  for (let b = cursor; b < image.layout.geometry.payloadBlocks; b++) {
    if (!(release[b >> 3]! & (1 << (b & 7)))) continue;
    released[zeroReason[b >> 3]! & (1 << (b & 7)) ? 'zero' : 'unused']--;
    releasedBytes -= Math.min(bs, size - b * bs);
  }
  report(2 * size);
  return done(image.fileSize, moved);
}

/** One used run over the whole disk: every allocated block is read, none is judged by a filesystem. */
async function* wholeDisk(size: number): AsyncGenerator<Run> {
  if (size > 0) yield { start: 0, length: size };
}

/**
 * Move the blocks last in the file into the lowest free places below them, and return how many
 * moved. Payload blocks take any free place; sector bitmap blocks only places no entry names.
 */
async function pack(image: VhdxImage, signal: AbortSignal | undefined, progress: (moved: number) => void): Promise<number> {
  await image.recordHoles();
  const free = await image.freePlaces();
  if (free.length === 0) return 0;
  // What holds each MiB of the file: 1 + a payload block, -(1 + a chunk) for a bitmap block.
  const units = Math.ceil(image.fileSize / MiB);
  const owner = new Int32Array(units);
  const claims = new Set<number>();
  for await (const p of image.placedBlocks(signal ? { signal } : {})) {
    const u = p.fileOffset / MiB;
    if (u >= units) continue;
    if (p.kind === 'bitmap') {
      if (p.state === BitmapState.PRESENT) owner[u] = -(1 + p.index);
    } else if (p.state === PayloadState.FULLY_PRESENT || p.state === PayloadState.PARTIALLY_PRESENT) owner[u] = 1 + p.index;
    else claims.add(p.fileOffset);
  }
  const moves: BlockMove[] = [];
  const taken = new Set<number>();
  // The lowest free places not taken yet: for payload blocks any, for bitmap blocks no claim.
  let anyAt = 0;
  let unnamedAt = 0;
  const lowest = (below: number, bitmap: boolean): number | undefined => {
    if (bitmap) {
      while (unnamedAt < free.length && (taken.has(free[unnamedAt]!) || claims.has(free[unnamedAt]!))) unnamedAt++;
      const f = free[unnamedAt];
      return f !== undefined && f < below ? f : undefined;
    }
    while (anyAt < free.length && taken.has(free[anyAt]!)) anyAt++;
    const f = free[anyAt];
    return f !== undefined && f < below ? f : undefined;
  };
  for (let u = units - 1; u >= 0 && u * MiB > free[0]!; u--) {
    const o = owner[u]!;
    if (o === 0) continue;
    const bitmap = o < 0;
    const to = lowest(u * MiB, bitmap);
    if (to === undefined) {
      if (bitmap) continue;
      break;
    }
    taken.add(to);
    moves.push({ kind: bitmap ? 'bitmap' : 'payload', index: Math.abs(o) - 1, to });
  }
  let moved = 0;
  for (let i = 0; i < moves.length; ) {
    let bytes = 0;
    let j = i;
    while (j < moves.length && j - i < MOVES_PER_CALL && (j === i || bytes < BYTES_PER_CALL)) bytes += moves[j++]!.kind === 'payload' ? image.blockSize : MiB;
    const r = await image.moveBlocks(moves.slice(i, j), signal ? { signal } : {});
    moved += r.length;
    progress(moved);
    i = j;
  }
  return moved;
}

/**
 * The file's size after a compact, estimated: the fixed structures, then every kept payload
 * block and sector bitmap block packed after them.
 */
async function estimateSize(image: VhdxImage, keptBlocks: number): Promise<number> {
  let bitmaps = 0;
  for await (const p of image.placedBlocks()) if (p.kind === 'bitmap' && p.state === BitmapState.PRESENT) bitmaps++;
  const fixed = fixedObjects(image.layout);
  return fixed.end + keptBlocks * image.blockSize + bitmaps * MiB;
}
