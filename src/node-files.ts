/** Opening and creating image files by path (Node only). The CLI imports this directly, not the
 * package barrel, so a command loads only the modules it uses. */
import { createRequire } from 'node:module';
import { realpath, stat, unlink } from './io/fs-async.js';
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { LOCATOR_TYPE_VHDX } from './format/constants.js';
import type { ParentLocator } from './format/parent-locator.js';
import { NodeFileSource, type CacheMode } from './io/node-file.js';
import { PARENT_PATH_KEYS, VhdxImage, checkParent, locatorValue, type OpenOptions, type ParentResolver } from './driver/image.js';
import { commitChild, type CommitOptions, type CommitResult } from './device/commit.js';
import { createImage, planCreate, DEFAULT_CREATOR, type CreateOptions, type CreateResult } from './driver/create.js';
import type { ImagePlan } from './driver/layout.js';
import { VhdxError, isVhdxError } from './errors.js';

/**
 * Which of a differencing image's parent locator paths `openFile` follows:
 * - `relative` (the default): `relative_path` only, resolved against the child's folder;
 * - `any`: then `volume_path` and `absolute_win32_path` as well (absolute paths: only for
 *   images you trust, since they can name any file on the host);
 * - `none`: no parent is opened (the image opens for its metadata; reads fail with NO_PARENT).
 */
export type ParentPaths = 'relative' | 'any' | 'none';

export interface OpenFileOptions extends Omit<OpenOptions, 'parent'> {
  /** How to find a differencing image's parent: a policy for the locator's paths, or your own resolver. */
  parents?: ParentPaths | ParentResolver;
  /** Cache mode of the file and of its parents (default writeback; see CacheMode). */
  cache?: CacheMode;
  /**
   * Read-only opens only: take and check no lock, on the image or its parents (qemu's
   * `force-share`, the CLI's -U). Unsafe while another process writes the image: reads may see
   * its changes half-made, or fail. Without it, a read-only open holds a shared lock that keeps
   * writers out, and is refused while a writer holds the image.
   */
  forceShare?: boolean;
}

/**
 * Open the VHDX file at `path`, read-only unless `readOnly: false`. A writable open takes the
 * image's write lock, a read-only one a shared lock (see NodeFileSource; `forceShare` skips it).
 * A differencing image's parents are opened read-only (holding shared locks, so no other
 * process writes them under the child), as `parents` allows, and closed with it. Close the
 * image to release the files and locks.
 */
export async function openFile(path: string, opts: OpenFileOptions = {}): Promise<VhdxImage> {
  const real = await realpath(path).catch(() => resolve(path));
  return openInChain(path, opts, new Set([real]));
}

/**
 * The resolver `openFile` would use for the differencing image at `path` under the `parents`
 * policy (undefined for 'none'): for callers that open the file themselves, such as `check`.
 */
export async function parentResolver(path: string, parents: ParentPaths, forceShare = false): Promise<ParentResolver | undefined> {
  if (parents === 'none') return undefined;
  const real = await realpath(path).catch(() => resolve(path));
  return pathResolver(path, parents, new Set([real]), forceShare ? { forceShare } : {}, false);
}

/** Open `path` and its chain; with `writableParent`, its direct parent is opened writable (commit). */
async function openInChain(path: string, opts: OpenFileOptions, visited: Set<string>, writableParent = false): Promise<VhdxImage> {
  const { parents = 'relative', cache, forceShare, ...rest } = opts;
  const parent: ParentResolver | undefined =
    typeof parents === 'function' ? parents : parents === 'none' ? undefined : pathResolver(path, parents, visited, opts, writableParent);
  const src = await NodeFileSource.open(path, { readOnly: opts.readOnly ?? true, ...(cache ? { cache } : {}), ...(forceShare ? { forceShare } : {}) });
  try {
    return await VhdxImage.open(src, { ...rest, name: rest.name ?? path, ...(parent ? { parent } : {}) });
  } catch (e) {
    await src.close();
    throw e;
  }
}

/**
 * The host path a locator value names, or a reason it names none here. `relative_path` is taken
 * against the child's folder with Windows separators translated; one that leaves that folder
 * (`..\\x`) is followed only under the `any` policy, like an absolute path, and the reason given
 * says nothing of whether it exists. Absolute Windows paths (`C:\…`, `\\?\C:\…`,
 * `\\?\Volume{…}\…`, UNC) mean something only on Windows; a POSIX path stored in
 * `absolute_win32_path` (as `vhdx create -b` does off Windows) is used as it is.
 */
function hostPath(key: string, value: string, childDir: string, policy: 'relative' | 'any'): { path: string } | { why: string } {
  const windows = sep === '\\';
  if (key === 'relative_path') {
    const rel = windows ? value : value.replace(/\\/g, '/');
    if (isAbsolute(rel) || /^[A-Za-z]:/.test(value)) return { why: 'not a relative path' };
    const path = resolve(childDir, rel);
    const inside = relative(childDir, path);
    if (policy !== 'any' && (inside === '..' || inside.startsWith(`..${sep}`) || isAbsolute(inside))) {
      return { why: "not followed: it leaves the child's folder; such paths are followed only with parents 'any' / --parents=any" };
    }
    return { path };
  }
  if (value.startsWith('/') && !windows) return { path: value };
  if (windows) return { path: value.startsWith('\\\\?\\') && /^[A-Za-z]:/.test(value.slice(4)) ? value.slice(4) : value };
  return { why: 'a Windows path, which has no meaning on this host' };
}

function pathResolver(childPath: string, policy: 'relative' | 'any', visited: Set<string>, opts: OpenFileOptions, writable: boolean): ParentResolver {
  return async ({ locator, child, depth }) => {
    // One line per path tried: the locator key and value, the host path it named, and why not.
    const tried: string[] = [];
    const named = (key: string, value: string, path?: string): string => (path !== undefined && path !== value ? `${key} ${value} -> ${path}` : `${key} ${value}`);
    let mismatch = false;
    for (const key of PARENT_PATH_KEYS) {
      const value = locatorValue(locator, key);
      if (value === undefined) continue;
      if (key !== 'relative_path' && policy !== 'any') {
        tried.push(`${named(key, value)}: not followed (absolute parent paths are followed only with parents 'any' / --parents=any)`);
        continue;
      }
      const where = hostPath(key, value, dirname(resolve(childPath)), policy);
      if ('why' in where) {
        tried.push(`${named(key, value)}: ${where.why}`);
        continue;
      }
      let real: string;
      try {
        real = await realpath(where.path);
      } catch {
        tried.push(`${named(key, value, where.path)}: not found`);
        continue;
      }
      if (!(await stat(real)).isFile()) {
        tried.push(`${named(key, value, where.path)}: not a regular file`);
        continue;
      }
      if (visited.has(real)) {
        throw new VhdxError('EINVAL', 'PARENT_LOOP', `the parent of ${childPath} is ${where.path}, which is already in the chain (a loop)`);
      }
      let parent: VhdxImage;
      try {
        parent = await openInChain(where.path, { ...opts, readOnly: !writable, depth, name: where.path, parents: policy }, new Set([...visited, real]));
      } catch (e) {
        if (isVhdxError(e) && (e.reason === 'PARENT_LOOP' || e.reason === 'CHAIN_TOO_DEEP' || e.reason === 'PARENT_NOT_FOUND' || e.reason === 'PARENT_MISMATCH')) throw e;
        throw isVhdxError(e) ? new VhdxError(e.code, e.reason, `parent ${where.path}: ${e.message}`, { cause: e }) : e;
      }
      try {
        checkParent(child, parent, childPath);
      } catch (e) {
        await parent.close();
        // Another path may name the right file (a parent that moved and left a stale copy behind).
        if (isVhdxError(e) && e.reason === 'PARENT_MISMATCH') {
          mismatch = true;
          tried.push(`${named(key, value, where.path)}: ${e.message}`);
          continue;
        }
        throw e;
      }
      return parent;
    }
    throw new VhdxError(
      mismatch ? 'EINVAL' : 'ENOENT',
      mismatch ? 'PARENT_MISMATCH' : 'PARENT_NOT_FOUND',
      `cannot open the parent of ${childPath}: ${tried.length ? `paths tried:\n  ${tried.join('\n  ')}` : 'its locator has no path'}`,
    );
  };
}

let version: string | undefined;
/** This package's version, from its package.json (the one place it is written). */
export function packageVersion(): string {
  if (version === undefined) {
    const require = createRequire(import.meta.url);
    version = (require('../package.json') as { version: string }).version;
  }
  return version;
}

export interface CreateFileOptions extends Omit<CreateOptions, 'size' | 'parentLocator'> {
  /** Virtual size in bytes; required unless `parent` is given (then it must be the parent's, if given). */
  size?: number;
  /** Replace an existing file instead of failing with EEXIST / FILE_EXISTS (default false). */
  overwrite?: boolean;
  /**
   * Make a differencing disk over the VHDX at this path. Its size and sector sizes come from the
   * parent; the locator records parent_linkage (the parent's DataWriteGuid), relative_path
   * (from the child's folder, Windows separators) and absolute_win32_path (the parent's absolute
   * path). The parent is opened read-only (its own parents as `parents` allows) and not changed.
   */
  parent?: string;
  /** How the parent's own chain is opened (default 'relative'). */
  parents?: ParentPaths | ParentResolver;
  /** Called with the checked plan before the file is made (`vhdx create` prints its `Formatting …` line there). */
  onPlan?: (plan: ImagePlan) => void;
  /** Cache mode of the new file (default writeback; see CacheMode). */
  cache?: CacheMode;
}

/** The locator a child at `childPath` needs to find `parent` (opened from `parentPath`). */
export function locatorFor(childPath: string, parentPath: string, parent: VhdxImage): ParentLocator {
  const absParent = resolve(parentPath);
  let rel = relative(dirname(resolve(childPath)), absParent);
  if (!rel.startsWith('..')) rel = `.${sep}${rel}`;
  const windowsStyle = (p: string): string => p.split(sep).join('\\');
  const absolute = sep === '\\' ? `\\\\?\\${absParent}` : absParent;
  return {
    locatorType: LOCATOR_TYPE_VHDX,
    entries: [
      { key: 'parent_linkage', value: `{${parent.header.dataWriteGuid}}` },
      { key: 'relative_path', value: windowsStyle(rel) },
      { key: 'absolute_win32_path', value: absolute },
    ],
  };
}

/**
 * Create a new VHDX file at `path` (see `createImage` for the options; the creator text defaults
 * to `vhdx <version>`). The options are checked before the file is made. The file is created
 * exclusively: an existing file is an EEXIST / FILE_EXISTS error and is left alone, unless
 * `overwrite`. If anything fails after the file was made (an I/O error, no space, `signal`
 * aborted), the file is removed before the error is thrown. The file is flushed and closed on
 * success; open it with `openFile(path, { readOnly: false })` to write.
 */
export async function createFile(path: string, opts: CreateFileOptions): Promise<CreateResult> {
  const { src, result } = await createOnFile(path, opts);
  await src.close();
  return result;
}

/**
 * Create a new VHDX file as `createFile` does and return it open for writing, on the same file
 * handle and under the same lock (no close, reopen and second validation of what was just
 * written; a differencing image is reopened by path, to open its parents as `openFile` does).
 * If the create or the open fails, the file is removed.
 */
export async function createOpenFile(path: string, opts: CreateFileOptions): Promise<VhdxImage> {
  const { src } = await createOnFile(path, opts);
  try {
    if (opts.parent !== undefined) {
      // A differencing image needs its chain: reopened by path, as openFile finds parents.
      await src.close();
      return await openFile(path, { readOnly: false, ...(opts.parents !== undefined ? { parents: opts.parents } : {}), ...(opts.cache ? { cache: opts.cache } : {}) });
    }
    return await VhdxImage.open(src, { readOnly: false, name: path });
  } catch (e) {
    await src.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw e;
  }
}

/** createFile's work, leaving the new file open. */
async function createOnFile(path: string, opts: CreateFileOptions): Promise<{ src: NodeFileSource; result: CreateResult }> {
  const { overwrite = false, parent: parentPath, parents, size, onPlan, cache, ...rest } = opts;
  let options: CreateOptions;
  if (parentPath !== undefined) {
    const parent = await openFile(parentPath, { ...(parents !== undefined ? { parents } : {}) });
    try {
      if (size !== undefined && size !== parent.size) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `size ${size} differs from the parent's ${parent.size} bytes (a differencing disk has its parent's size)`);
      }
      if (rest.logicalSectorSize !== undefined && rest.logicalSectorSize !== parent.logicalSectorSize) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `logical sector size ${rest.logicalSectorSize} differs from the parent's ${parent.logicalSectorSize}`);
      }
      options = {
        ...rest,
        size: parent.size,
        logicalSectorSize: parent.logicalSectorSize as 512 | 4096,
        physicalSectorSize: rest.physicalSectorSize ?? (parent.physicalSectorSize as 512 | 4096),
        parentLocator: locatorFor(path, parentPath, parent),
      };
    } finally {
      await parent.close();
    }
  } else {
    if (size === undefined) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', 'a size is needed (or a parent to take it from)');
    options = { ...rest, size };
  }
  options.creator ??= `${DEFAULT_CREATOR} ${packageVersion()}`;
  const plan = planCreate(options); // bad options fail here, before any file exists
  onPlan?.(plan);
  let src: NodeFileSource;
  try {
    src = await NodeFileSource.open(path, { readOnly: false, create: true, truncate: overwrite, ...(cache ? { cache } : {}) });
  } catch (e) {
    if (e instanceof VhdxError && (e.cause as { code?: string } | undefined)?.code === 'EEXIST') {
      throw new VhdxError('EEXIST', 'FILE_EXISTS', `${path} already exists (it is not overwritten)`, { cause: e });
    }
    throw e;
  }
  try {
    return { src, result: await createImage(src, options) };
  } catch (e) {
    await src.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw e;
  }
}

/**
 * What becomes of the child after a commit: `empty` (the default: every block shows the parent
 * again, the file is cut back), `keep` (left with its data, as `qemu-img commit -d`: it reads as
 * before and stays linked to the parent), or `remove` (the file is deleted once the parent holds
 * its data and is closed).
 */
export type CommitChildOutcome = 'empty' | 'keep' | 'remove';

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
  const real = await realpath(childPath).catch(() => resolve(childPath));
  const child = await openInChain(childPath, { readOnly: false, parents }, new Set([real]), true);
  let result: CommitResult;
  let parentPath: string | null;
  try {
    result = await commitChild(child, { ...commitOpts, emptyChild: outcome === 'empty' });
    parentPath = child.parent?.name ?? null;
  } finally {
    await child.close(); // closes (and so flushes) the parent too
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
