// Workloads for the writer's crash tests: operations on a VhdxImage, applied to a SparseModel
// as they complete, and run on a FaultySource that may die part-way.
//
// Operations: { kind: 'write', offset, data, fua? }, { kind: 'zero' | 'discard', offset, length },
// { kind: 'flush' }, { kind: 'close' }, { kind: 'reopen' } (close and open again, writable),
// { kind: 'parallel', ops: [...] } (issued together; they must not overlap),
// { kind: 'move', moves } (moveBlocks: `moves` is a list, or a function of the image giving one;
// the disk's content does not change, and the moves are durable when it returns).
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { VhdxImage } from '../../dist/index.js';
import { FaultySource } from '../../dist/testing.js';
import { SparseModel } from './model.js';

/** Apply a completed operation to the model. */
export function applyToModel(model, op) {
  if (op.kind === 'write') model.write(op.offset, op.data);
  else if (op.kind === 'zero' || op.kind === 'discard') model.zero(op.offset, op.length);
  else if (op.kind === 'parallel') op.ops.forEach((o) => applyToModel(model, o));
}

export function execute(img, op) {
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
    case 'move':
      return (async () => img.moveBlocks(typeof op.moves === 'function' ? await op.moves(img) : op.moves))();
  }
}

/** What a crash-time byte may hold: operations issued since the last durable point, flattened. */
export function flatten(list) {
  const out = [];
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
 * differencing disk's test passes its parent); `model`: the disk's content before the workload
 * (default zeros; a differencing disk starts as its parent), cloned.
 */
export async function runWorkload(base, list, crashAt, { open = (disk) => VhdxImage.open(disk, { readOnly: false }), model: initial } = {}) {
  const disk = new FaultySource(base, { crashAt, trace: true });
  const model = initial ? initial.clone() : new SparseModel();
  let durable = model.clone();
  let since = [];
  let img = null;
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
      if (op.kind === 'flush' || op.kind === 'close' || op.kind === 'reopen' || op.kind === 'move' || op.fua) {
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
export async function readRanges(img, ranges, bufs = ranges.map(([, len]) => new Uint8Array(len))) {
  await Promise.all(ranges.map(([offset], i) => img.read(offset, bufs[i])));
  return bufs;
}

/** Write a FaultySource's content to `path` as a sparse file (for qemu-img). */
export function writeSparseFile(path, disk) {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, disk.size);
    for (const { offset, data } of disk.extents()) writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

