/** Messages between the page (app.ts) and its worker (worker.ts), which does all the reading. */
import type { ContentsInfo, HttpStats, ImageInfo } from '../src/index.js';

export type Request =
  | { op: 'open-files'; files: File[] }
  | { op: 'open-url'; url: string; authorization?: string }
  /** Compute the allocation map of [from, to) in `cells` cells (replaces any map in progress). */
  | { op: 'map'; from: number; to: number; cells: number }
  /** Save the raw disk (`partition` null) or one partition: to a file handle, else as a Blob. */
  | { op: 'save'; partition: number | null; handle: FileSystemFileHandle | null }
  | { op: 'cancel-save' };

/** One image of the opened chain, nearest first: what `vhdx info` says of it. */
export interface ChainLevel {
  name: string;
  info: ImageInfo;
}

/**
 * Classes of a map cell. A cell's class is what most of its data is (the image of the chain that
 * holds it, by depth), else zero, else unallocated; `fill` is the share of its bytes that hold data.
 */
export const CELL_UNALLOCATED = 0;
export const CELL_ZERO = 1;
/** CELL_DATA + depth (0 = the opened image, 1 its parent, ...), depths past MAX_DEPTH_SHOWN shown as it. */
export const CELL_DATA = 2;
export const MAX_DEPTH_SHOWN = 5;

export type Reply =
  | { type: 'opened'; name: string; chain: ChainLevel[]; chainError: string | null }
  | { type: 'contents'; contents: ContentsInfo | null; error: string | null }
  | { type: 'map'; from: number; to: number; cellBytes: number; classes: Uint8Array; fill: Uint8Array; done: number; complete: boolean }
  | { type: 'progress'; what: string; done: number; total: number }
  | { type: 'saved'; name: string; bytes: number; blob: Blob | null }
  | { type: 'stats'; stats: HttpStats }
  | { type: 'error'; op: string; message: string; reason: string | null };
