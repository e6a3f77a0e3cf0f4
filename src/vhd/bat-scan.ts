/**
 * One streaming pass over a dynamic VHD's BAT: every entry judged (inside the file, clear of the
 * structures), then the allocated blocks sorted by place to find blocks that overlap, space that
 * nothing names (leaked blocks), and where the image's last object ends. A writable open runs it
 * to refuse a damaged table before anything is written; check runs it to report.
 *
 * Memory: the BAT is read in 64 KiB windows; the sort needs 4 bytes per allocated block (a
 * 2040 GiB disk of 2 MiB blocks: 4 MiB), and is skipped past MAX_SORTED_BLOCKS.
 */
import { throwIfAborted, formatOffset } from '../errors.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import type { ProgressOptions } from '../device/block-device.js';
import { BAT_ENTRY_SIZE, SECTOR } from './bat.js';
import { judgeBlock, type LayoutProblem, type VhdLayout } from './layout.js';

/** Allocated blocks sorted at most (64 MiB of offsets); past it overlaps and inner leaks are not looked for. */
export const MAX_SORTED_BLOCKS = 2 ** 24;
const WINDOW_ENTRIES = 16384;

export interface BatScan {
  /** Entries of the disk's blocks that are allocated (valid or not). */
  allocatedBlocks: number;
  /** Allocated blocks, after the first in disk order, that do not follow the previous one in the file. */
  fragmentedBlocks: number;
  /** Where the image's last structure or block ends (blocks counted whole), at most the data limit. */
  imageEnd: number;
  /** Bad entries (the first `maxProblems`), overlapping blocks, leaked blocks inside the file. */
  problems: LayoutProblem[];
  /** Bad entries found in all (some may be left out of `problems`). */
  badEntries: number;
  /** Whole blocks' worth of space inside the image that nothing names. */
  leakedInside: number;
  /** False when the blocks were too many to sort: overlaps and inner leaks were not looked for. */
  sorted: boolean;
}

export interface ScanOptions extends ProgressOptions {
  /** Stop at the first bad entry (the writable open). */
  stopAtFirst?: boolean;
  /** Problems kept at most (default 1000). */
  maxProblems?: number;
}

export async function scanVhdBat(src: RandomAccessSource, layout: VhdLayout, opts: ScanOptions = {}): Promise<BatScan> {
  const d = layout.dynamic!;
  const maxProblems = opts.maxProblems ?? 1000;
  const problems: LayoutProblem[] = [];
  const out: BatScan = { allocatedBlocks: 0, fragmentedBlocks: 0, imageEnd: d.objectsEnd, problems, badEntries: 0, leakedInside: 0, sorted: true };
  const whole = d.bitmapBytes + d.blockSize;
  let starts = new Uint32Array(1024);
  let count = 0;
  let prevEnd = -1;
  const window = new Uint8Array(WINDOW_ENTRIES * BAT_ENTRY_SIZE);
  const view = new DataView(window.buffer);
  for (let first = 0; first < d.blocks; first += WINDOW_ENTRIES) {
    throwIfAborted(opts.signal, 'BAT scan');
    const n = Math.min(WINDOW_ENTRIES, d.blocks - first);
    await readExact(src, d.tableOffset + first * BAT_ENTRY_SIZE, window.subarray(0, n * BAT_ENTRY_SIZE), 'VHD BAT');
    for (let i = 0; i < n; i++) {
      const index = first + i;
      const sector = view.getUint32(i * BAT_ENTRY_SIZE, false);
      const v = judgeBlock(layout, index, sector);
      if (v.kind === 'unallocated') continue;
      out.allocatedBlocks++;
      if (v.kind === 'bad') {
        out.badEntries++;
        if (problems.length < maxProblems) {
          problems.push({ severity: 'corruption', reason: v.reason, message: v.message, structure: `VHD BAT entry ${index}`, offset: d.tableOffset + index * BAT_ENTRY_SIZE });
        }
        if (opts.stopAtFirst) return out;
        continue;
      }
      if (prevEnd >= 0 && v.fileOffset !== prevEnd) out.fragmentedBlocks++;
      prevEnd = v.fileOffset + whole;
      out.imageEnd = Math.max(out.imageEnd, Math.min(v.fileOffset + whole, layout.dataLimit));
      if (!out.sorted) continue;
      if (count === MAX_SORTED_BLOCKS) {
        out.sorted = false;
        continue;
      }
      if (count === starts.length) {
        const grown = new Uint32Array(Math.min(MAX_SORTED_BLOCKS, starts.length * 2));
        grown.set(starts);
        starts = grown;
      }
      starts[count++] = sector;
    }
    opts.onProgress?.(first + n, d.blocks);
  }
  if (!out.sorted) {
    problems.push({
      severity: 'warning',
      reason: 'LIMIT_EXCEEDED',
      message: `more than ${MAX_SORTED_BLOCKS} allocated blocks: overlapping and leaked blocks were not looked for`,
      structure: 'VHD BAT',
      offset: d.tableOffset,
    });
    return out;
  }
  // Walk the blocks in file order beside the structures (sorted by the layout): a block that
  // starts before the previous block ends overlaps it (the judge kept blocks clear of the
  // structures); a gap of a whole block or more between objects is leaked space.
  const sorted = starts.subarray(0, count).sort();
  const objects = d.objects;
  let next = 0; // the next structure in file order
  let end = 0; // where the objects so far end
  let prevBlock = -1;
  const gap = (at: number): void => {
    if (at - end >= whole) out.leakedInside += Math.floor((at - end) / whole);
  };
  for (let i = 0; i < count; i++) {
    const at = sorted[i]! * SECTOR;
    for (; next < objects.length && objects[next]!.start <= at; next++) {
      gap(objects[next]!.start);
      end = Math.max(end, objects[next]!.end);
    }
    if (prevBlock >= 0 && at < prevBlock + whole) {
      out.badEntries++;
      if (problems.length < maxProblems) {
        problems.push({
          severity: 'corruption',
          reason: 'BLOCK_OVERLAP',
          message: `the block at ${formatOffset(at)} overlaps the block at ${formatOffset(prevBlock)}`,
          structure: 'VHD BAT',
          offset: d.tableOffset,
        });
      }
      if (opts.stopAtFirst) return out;
    } else gap(at);
    prevBlock = at;
    end = Math.max(end, Math.min(at + whole, layout.dataLimit));
  }
  for (; next < objects.length; next++) {
    gap(objects[next]!.start);
    end = Math.max(end, objects[next]!.end);
  }
  return out;
}
