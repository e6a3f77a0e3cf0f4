// Workloads for the writers' crash tests: operations on a writable image (VHDX or VHD: any
// WorkloadDevice), applied to a SparseModel as they complete, and run on a FaultySource that may
// die part-way.
//
// Operations: { kind: 'write', offset, data, fua? }, { kind: 'zero' | 'discard', offset, length },
// { kind: 'flush' }, { kind: 'close' }, { kind: 'reopen' } (close and open again, writable),
// { kind: 'parallel', ops: [...] } (issued together; they must not overlap),
// { kind: 'move', moves } (moveBlocks: `moves` is a list, or a function of the image giving one;
// the disk's content does not change, and the moves are durable when it returns; VHDX images only).
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { FaultySource } from '../../src/io/faulty.js';
import { VhdxImage } from '../../src/driver/image.js';
import type { BlockMove } from '../../src/driver/writer.js';
import type { WritableBlockDevice } from '../../src/device/block-device.js';
import { SparseModel, pattern, type CrashOp } from './model.js';

/** What a workload drives: the methods a writable VhdxImage and a VhdImage both offer. */
export type WorkloadDevice = Pick<WritableBlockDevice, 'size' | 'read' | 'write' | 'writeZeroes' | 'discard' | 'flush' | 'close' | 'blockStatus'>;

/** One operation of a workload (see the top of this file). */
export type Op =
  | { kind: 'write'; offset: number; data: Uint8Array; fua?: boolean }
  | { kind: 'zero' | 'discard'; offset: number; length: number }
  | { kind: 'flush' | 'close' | 'reopen' }
  | { kind: 'parallel'; ops: readonly Op[] }
  | { kind: 'move'; moves: readonly BlockMove[] | ((img: VhdxImage) => readonly BlockMove[] | Promise<readonly BlockMove[]>) };

/** Builders of a workload's operations; each write carries a pattern of its own (model.ts' `pattern`, by its number). */
export interface OpMakers {
  w(offset: number, length: number, fua?: boolean): Op;
  zero(offset: number, length: number): Op;
  discard(offset: number, length: number): Op;
  move(moves: Extract<Op, { kind: 'move' }>['moves']): Op;
  flush: Op;
  close: Op;
  reopen: Op;
  parallel(...list: Op[]): Op;
}

/** A workload's operations as `build` lists them with the makers (writes numbered from 1 per call). */
export function ops(build: (m: OpMakers) => Op[]): Op[] {
  let seed = 0;
  return build({
    w: (offset, length, fua = false) => ({ kind: 'write', offset, data: pattern(++seed, length), fua }),
    zero: (offset, length) => ({ kind: 'zero', offset, length }),
    discard: (offset, length) => ({ kind: 'discard', offset, length }),
    move: (moves) => ({ kind: 'move', moves }),
    flush: { kind: 'flush' },
    close: { kind: 'close' },
    reopen: { kind: 'reopen' },
    parallel: (...list) => ({ kind: 'parallel', ops: list }),
  });
}

/** Apply a completed operation to the model. */
export function applyToModel(model: SparseModel, op: Op): void {
  if (op.kind === 'write') model.write(op.offset, op.data);
  else if (op.kind === 'zero' || op.kind === 'discard') model.zero(op.offset, op.length);
  else if (op.kind === 'parallel') op.ops.forEach((o) => applyToModel(model, o));
}

/** Issue `op` on `img` ('reopen' is runWorkload's: nothing here). */
export function execute(img: WorkloadDevice, op: Op): Promise<unknown> {
  switch (op.kind) {
    case 'write':
      return img.write(op.offset, op.data, { fua: op.fua });
    case 'zero':
      return img.writeZeroes(op.offset, op.length);
    case 'discard':
      return img.discard(op.offset, op.length);
    case 'flush':
      return img.flush();
    case 'close':
      return img.close();
    case 'parallel':
      return Promise.all(op.ops.map((o) => execute(img, o)));
    case 'move': {
      if (!(img instanceof VhdxImage)) return Promise.reject(new TypeError('a move needs a VHDX image'));
      const { moves } = op;
      return (async () => img.moveBlocks(typeof moves === 'function' ? await moves(img) : moves))();
    }
    case 'reopen':
      return Promise.resolve();
  }
}

/** What a crash-time byte may hold: operations issued since the last durable point, flattened. */
export function flatten(list: readonly Op[]): CrashOp[] {
  const out: CrashOp[] = [];
  for (const op of list) {
    if (op.kind === 'parallel') out.push(...flatten(op.ops));
    else if (op.kind === 'write') out.push({ kind: 'write', offset: op.offset, data: op.data });
    else if (op.kind === 'zero' || op.kind === 'discard') out.push({ kind: 'zero', offset: op.offset, length: op.length });
  }
  return out;
}

/**
 * Run the workload on a FaultySource holding `base` that dies at mutating operation `crashAt`
 * (never, when undefined). Returns the disk, the final model, the model as of the last completed
 * flush (or FUA write, close or reopen), and the operations issued after it, flattened.
 * Options: `open(disk)` opens the image writable (default: VhdxImage.open without a parent; a
 * differencing disk's test passes its parent; a VHD test opens a VhdImage); `model`: the disk's content before the workload
 * (default zeros; a differencing disk starts as its parent), cloned.
 */
export async function runWorkload(
  base: Uint8Array | { bytes(): Uint8Array },
  list: readonly Op[],
  crashAt: number | undefined,
  {
    open = (disk: FaultySource) => VhdxImage.open(disk, { readOnly: false }),
    model: initial,
  }: { open?: (disk: FaultySource) => Promise<WorkloadDevice>; model?: SparseModel } = {},
): Promise<{ disk: FaultySource; model: SparseModel; durable: SparseModel; since: CrashOp[] }> {
  const disk = new FaultySource(base, { crashAt, trace: true });
  const model = initial ? initial.clone() : new SparseModel();
  let durable = model.clone();
  let since: Op[] = [];
  let img: WorkloadDevice | null = null;
  try {
    img = await open(disk);
    for (const op of list) {
      since.push(op);
      if (op.kind === 'reopen') {
        await img.close();
        durable = model.clone();
        since = [];
        img = null;
        img = await open(disk);
      } else await execute(img, op);
      applyToModel(model, op);
      if (op.kind === 'flush' || op.kind === 'close' || op.kind === 'reopen' || op.kind === 'move' || (op.kind === 'write' && op.fua)) {
        durable = model.clone();
        since = [];
      }
    }
  } catch (e) {
    if (!disk.isCrashed) throw e;
    await img?.close().catch(() => undefined);
  }
  return { disk, model, durable, since: flatten(since) };
}

/** Read `ranges` ([offset, length] pairs) of `img` into `bufs` (one buffer per range, reused between images). */
export async function readRanges(
  img: Pick<WorkloadDevice, 'read'>,
  ranges: readonly (readonly [number, number])[],
  bufs: Uint8Array[] = ranges.map(([, len]) => new Uint8Array(len)),
): Promise<Uint8Array[]> {
  await Promise.all(ranges.map(([offset], i) => img.read(offset, bufs[i]!)));
  return bufs;
}

/** Write a FaultySource's content to `path` as a sparse file (for qemu-img). */
export function writeSparseFile(path: string, disk: FaultySource): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, disk.size);
    for (const { offset, data } of disk.extents()) writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

