/** Commit and rebase of differencing VHDX files by path (Node). */
import { unlink } from 'node:fs/promises';
import { checkParent, type ParentResolver } from '../driver/image.js';
import { VhdxError } from '../errors.js';
import { commitChild, type CommitOptions, type CommitResult } from './commit.js';
import type { ParentPaths } from './parents.js';
import { locatorFor } from './parents-node.js';
import { openDevice, openFile } from './open-node.js';
import type { VhdxImage } from '../driver/image.js';

/**
 * What becomes of the child after a commit: `empty` (the default: every block shows the parent
 * again, the file is cut back), `keep` (left with its data, as `qemu-img commit -d`: it reads as
 * before and stays linked to the parent), or `remove` (the file is deleted once the parent holds
 * its data and is closed).
 */
export type CommitChildOutcome = 'empty' | 'keep' | 'remove';

/** Options of {@link commitFile}: those of `commitChild` (but `emptyChild`), the child's fate and how the chain is found. */
export interface CommitFileOptions extends Omit<CommitOptions, 'emptyChild'> {
  /** What becomes of the child (default `empty`). */
  child?: CommitChildOutcome;
  /** How the chain is opened (default 'relative'). */
  parents?: ParentPaths | ParentResolver;
}

/**
 * Merge the differencing image at `childPath` into its parent (see `commitChild` for the order
 * of operations and what a crash leaves). The parent is opened writable and locked; its own
 * parents read-only. The child is emptied, kept or removed as `child` says. Returns the parent's path.
 */
export async function commitFile(childPath: string, opts: CommitFileOptions = {}): Promise<CommitResult & { parentPath: string | null }> {
  const { child: outcome = 'empty', parents = 'relative', ...commitOpts } = opts;
  if (outcome !== 'empty' && outcome !== 'keep' && outcome !== 'remove') {
    throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `child must be 'empty', 'keep' or 'remove', not ${JSON.stringify(outcome)}`);
  }
  if (parents === 'none') throw new VhdxError('EINVAL', 'BAD_ARGUMENT', "commit needs the parent: parents 'none' cannot be used");
  const child = (await openDevice(childPath, { format: 'vhdx', readOnly: false, parents, writableParent: true })) as VhdxImage;
  let result: CommitResult;
  let parentPath: string | null;
  try {
    result = await commitChild(child, { ...commitOpts, emptyChild: outcome === 'empty' });
    parentPath = result.image.parent?.name ?? null;
    await result.image.close(); // closes (and so flushes) the parent too
  } finally {
    await child.close(); // when commit failed (or reopened it: closed already)
  }
  if (outcome === 'remove') await unlink(childPath);
  return { ...result, parentPath };
}

/**
 * Point the differencing image at `childPath` at a parent that moved (`rebase -u`): the new
 * parent must be the one the child links to (its DataWriteGuid is the child's parent_linkage or
 * parent_linkage2, and sizes agree), as Set-VHD -ParentPath requires. The locator's
 * relative_path and absolute_win32_path are rewritten; a stale volume_path is dropped; the
 * linkage is kept. The child's data is not touched.
 */
export async function rebaseFile(childPath: string, newParentPath: string, opts: { parents?: ParentPaths | ParentResolver } = {}): Promise<void> {
  const child = await openFile(childPath, { readOnly: false, parents: 'none' });
  try {
    const old = child.layout.parentLocator;
    if (!old) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${childPath} is not a differencing image`);
    const parent = await openFile(newParentPath, { ...(opts.parents !== undefined ? { parents: opts.parents } : {}) });
    try {
      checkParent(child.layout, parent, childPath);
      const fresh = locatorFor(childPath, newParentPath, parent);
      const keep = old.entries.filter((e) => e.key === 'parent_linkage' || e.key === 'parent_linkage2');
      const paths = fresh.entries.filter((e) => e.key === 'relative_path' || e.key === 'absolute_win32_path');
      const others = old.entries.filter((e) => !['parent_linkage', 'parent_linkage2', 'relative_path', 'volume_path', 'absolute_win32_path'].includes(e.key));
      await child.setParentLocator({ locatorType: old.locatorType, entries: [...keep, ...paths, ...others] });
    } finally {
      await parent.close();
    }
  } finally {
    await child.close();
  }
}
