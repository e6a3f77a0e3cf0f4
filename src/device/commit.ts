/**
 * Merging a differencing image into its parent (`vhdx commit`, Merge-VHD, `qemu-img commit`).
 *
 * Order of operations, chosen so that the chain reads the same after a crash at any point:
 * 1. The child names the parent's next identity: a new GUID G goes into the child's locator as
 *    parent_linkage2 (through the child's log, durable) before the parent is touched. The child
 *    then links to the parent both before its DataWriteGuid changes (parent_linkage) and after
 *    (parent_linkage2 = G).
 * 2. The child's own data is copied into the parent, whose first write gives it DataWriteGuid G.
 *    Every range written to the parent is one the child covers itself, so the chain's content
 *    does not change while the parent fills. The parent is flushed.
 * 3. The child is relinked (parent_linkage = the parent's new DataWriteGuid, parent_linkage2
 *    dropped: a copy of the old parent no longer matches), then emptied: every block
 *    NOT_PRESENT (committed through its log) and its file cut back. The child
 *    keeps its own DataWriteGuid (it reads as before), so an image whose parent it is stays
 *    linked to it. Or the caller removes the child once the parent is closed.
 * A commit that was interrupted is finished by running it again: a child linked through
 * parent_linkage2 reuses the parent's current DataWriteGuid as G, and copying is idempotent.
 */
import { VhdxError, throwIfAborted } from '../errors.js';
import { randomGuid } from '../codec/guid.js';
import type { ProgressOptions } from '../device/block-device.js';
import type { ParentLocator } from '../format/parent-locator.js';
import type { VhdxImage } from './image.js';

export interface CommitOptions extends ProgressOptions {
  /**
   * Empty the child after the merge (default true). With false the child keeps its data and
   * reads as before, linked to the merged parent through parent_linkage2 (`qemu-img commit -d`);
   * a caller that deletes the child passes false too.
   */
  emptyChild?: boolean;
  /** Copy requests in flight (default 4). */
  parallel?: number;
}

export interface CommitResult {
  /** Bytes of data copied into the parent. */
  dataBytes: number;
  /** Bytes the parent now reads as zeros because the child did (ZERO or UNMAPPED blocks). */
  zeroBytes: number;
  /** The parent's DataWriteGuid after the merge. */
  parentDataWriteGuid: string;
}

const WINDOW = 1024 * 1024 * 1024;
const COPY_CHUNK = 4 * 1024 * 1024;

function withEntry(loc: ParentLocator, key: string, value: string | null): ParentLocator {
  const entries = loc.entries.filter((e) => e.key !== key);
  if (value !== null) {
    // parent_linkage2 goes right after parent_linkage, where readers expect the identities.
    const at = entries.findIndex((e) => e.key === 'parent_linkage');
    entries.splice(at + 1, 0, { key, value });
  }
  return { locatorType: loc.locatorType, entries };
}

/**
 * Merge `child` (a differencing image opened writable, whose parent was opened writable) into
 * its parent. Progress is reported in bytes of the virtual disk scanned; `signal` stops the copy
 * (the chain stays readable and a second commit completes the merge).
 */
export async function commitChild(child: VhdxImage, opts: CommitOptions = {}): Promise<CommitResult> {
  const name = child.name ?? 'the image';
  if (!child.layout.hasParent || !child.layout.parentLocator) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${name} is not a differencing image: there is nothing to commit it into`);
  const parent: VhdxImage | null = child.parent;
  if (!parent) throw new VhdxError('EINVAL', 'NO_PARENT', `${name} was opened without its parent`);
  if (child.readOnly || parent.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'commit needs the child and its parent open for writing');
  const loc = child.layout.parentLocator;
  const into: VhdxImage = parent;

  // 1. The parent's next identity, named in the child first.
  let g: string;
  if (child.linkedBy === 'parent_linkage2') g = parent.header.dataWriteGuid;
  else {
    g = randomGuid();
    await child.setParentLocator(withEntry(loc, 'parent_linkage2', `{${g}}`));
  }
  parent.setNextDataWriteGuid(g);

  // 2. The child's own ranges (depth 0) into the parent.
  let dataBytes = 0;
  let zeroBytes = 0;
  const size = child.size;
  const parallel = Math.max(1, opts.parallel ?? 4);
  const inFlight = new Set<Promise<void>>();
  let failure: unknown = null;
  const start = (task: () => Promise<void>): void => {
    const p = task()
      .catch((e: unknown) => {
        failure ??= e;
      })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  };
  const copy = async (offset: number, length: number): Promise<void> => {
    const buf = new Uint8Array(length);
    await child.read(offset, buf);
    await parent.write(offset, buf);
  };
  try {
    await copyAll();
  } finally {
    await Promise.allSettled([...inFlight]);
  }
  if (failure !== null) throw failure;
  // Cancelled during the copy: stop before the child is relinked (a second commit resumes).
  throwIfAborted(opts.signal, 'commit');
  await parent.flush();
  const parentDataWriteGuid = parent.header.dataWriteGuid;

  // 3. The child shows the merged parent everywhere, and links to its new identity.
  if (opts.emptyChild ?? true) {
    // Relinked first: from here on the child accepts only the merged parent, never a copy of
    // the parent as it was (a half-emptied child over the old content would read wrong).
    const relinked = withEntry(withEntry(child.layout.parentLocator, 'parent_linkage2', null), 'parent_linkage', `{${parentDataWriteGuid}}`);
    await child.setParentLocator(relinked);
    // The chain reads the same, so the child keeps its DataWriteGuid: its own children stay linked.
    await child.clearAllBlocks({ contentUnchanged: true, ...(opts.signal ? { signal: opts.signal } : {}) });
  }
  return { dataBytes, zeroBytes, parentDataWriteGuid };

  async function copyAll(): Promise<void> {
    for (let w = 0; w < size && failure === null; w += WINDOW) {
      throwIfAborted(opts.signal, 'commit');
      const wEnd = Math.min(size, w + WINDOW);
      for (const x of await child.blockStatus(w, wEnd - w)) {
        if ((x.depth ?? 0) !== 0) continue;
        const end = Math.min(x.offset + x.length, wEnd);
        if (x.type === 'zero') {
          await into.writeZeroes(x.offset, end - x.offset);
          zeroBytes += end - x.offset;
          continue;
        }
        if (x.type !== 'data') continue;
        for (let pos = x.offset; pos < end && failure === null; pos += COPY_CHUNK) {
          throwIfAborted(opts.signal, 'commit');
          const n = Math.min(COPY_CHUNK, end - pos);
          while (inFlight.size >= parallel) await Promise.race(inFlight);
          start(() => copy(pos, n));
          dataBytes += n;
        }
      }
      opts.onProgress?.(wEnd, size);
    }
  }
}
