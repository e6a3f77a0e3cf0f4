/**
 * Merging a differencing image into its parent (`vhdx commit`, Merge-VHD, `qemu-img commit`).
 *
 * Order of operations, chosen so that the chain reads the same after a crash at any point:
 * 1. The child names the parent's next identity: a new GUID G goes into the child's locator as
 *    parent_linkage2 (through the child's log, durable) before the parent is touched. The child
 *    then links to the parent both before its DataWriteGuid changes (parent_linkage) and after
 *    (parent_linkage2 = G).
 * 1b. A child grown past its parent (resize) grows the parent to its size first, as
 *    `qemu-img commit` truncates a smaller base up: the parent's grow is its first change and
 *    gives it DataWriteGuid G (so the child stays linked, through parent_linkage2, whether the
 *    grow is durable or not), and the range it adds reads as zeros, as the child showed it.
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
import type { ProgressOptions } from './block-device.js';
import { copyDevice, deviceSink } from './copy.js';
import type { ParentLocator } from '../format/parent-locator.js';
import type { VhdxImage } from '../driver/image.js';
import { resize } from '../ops/resize.js';

/** Options of {@link commitChild}; progress is in bytes of the virtual disk scanned, `signal` stops the copy. */
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

/** What {@link commitChild} did. */
export interface CommitResult {
  /** Bytes of data copied into the parent. */
  dataBytes: number;
  /** Bytes the parent now reads as zeros because the child did (ZERO or UNMAPPED blocks). */
  zeroBytes: number;
  /** The parent's DataWriteGuid after the merge. */
  parentDataWriteGuid: string;
  /**
   * The child to go on with (and close): the one passed in, or, when the parent had to grow,
   * the child reopened over the grown parent (the one passed in and its old parent are closed).
   */
  image: VhdxImage;
  /** Bytes the parent grew by (0 when it had the child's size). */
  parentGrowth: number;
}

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

  // 1. The parent's next identity, named in the child first.
  let g: string;
  if (child.linkedBy === 'parent_linkage2') g = parent.header.dataWriteGuid;
  else {
    g = randomGuid();
    await child.setParentLocator(withEntry(loc, 'parent_linkage2', `{${g}}`));
  }
  parent.setNextDataWriteGuid(g);

  // 1b. A parent smaller than the child grows to its size; the child is reopened over it.
  const parentGrowth = child.size - parent.size;
  if (parentGrowth <= 0) return merge(child, parent, 0, opts);
  // The child's sectors hold its own GPT (moved when it grew), which the merge copies: the
  // parent's table is left alone.
  const grown = (await resize(parent, child.size, { gptFix: false, ...(opts.signal ? { signal: opts.signal } : {}) })).image;
  let reopened: VhdxImage;
  try {
    grown.setNextDataWriteGuid(g);
    reopened = await child.reopen(grown);
  } catch (e) {
    await grown.close();
    throw e;
  }
  try {
    return await merge(reopened, grown, parentGrowth, opts);
  } catch (e) {
    await reopened.close();
    throw e;
  }
}

/** Steps 2 and 3 (see the top of this file), once `parent` has the child's size. */
async function merge(child: VhdxImage, parent: VhdxImage, parentGrowth: number, opts: CommitOptions): Promise<CommitResult> {
  // 2. The child's own ranges (depth 0) into the parent: its data copied (zeros included: they
  // cover the parent's data), its zero ranges zeroed. The parent is flushed at the end.
  const copied = await copyDevice(child, deviceSink(parent), {
    parallel: opts.parallel ?? 4,
    detectZeroes: false,
    plan: (x) => ((x.depth ?? 0) !== 0 ? 'skip' : x.type === 'data' ? 'copy' : x.type === 'zero' ? 'zero' : 'skip'),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
  });
  // Cancelled during the copy: stop before the child is relinked (a second commit resumes).
  throwIfAborted(opts.signal, 'commit');
  const parentDataWriteGuid = parent.header.dataWriteGuid;

  // 3. The child shows the merged parent everywhere, and links to its new identity.
  if (opts.emptyChild ?? true) {
    // Relinked first: from here on the child accepts only the merged parent, never a copy of
    // the parent as it was (a half-emptied child over the old content would read wrong).
    const relinked = withEntry(withEntry(child.layout.parentLocator!, 'parent_linkage2', null), 'parent_linkage', `{${parentDataWriteGuid}}`);
    await child.setParentLocator(relinked);
    // The chain reads the same, so the child keeps its DataWriteGuid: its own children stay linked.
    await child.clearAllBlocks({ contentUnchanged: true, ...(opts.signal ? { signal: opts.signal } : {}) });
  }
  return { dataBytes: copied.bytesRead, zeroBytes: copied.bytesZeroed, parentDataWriteGuid, image: child, parentGrowth };
}
