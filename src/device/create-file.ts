/** Creating VHDX files by path (Node): a new image, or a differencing child over a parent file. */
import { unlink } from 'node:fs/promises';
import { NodeFileSource, type CacheMode } from '../io/node-file.js';
import { VhdxImage, type ParentResolver } from '../driver/image.js';
import { createImage, planCreate, DEFAULT_CREATOR, type CreateOptions, type CreateResult } from '../driver/create.js';
import type { ImagePlan } from '../driver/layout.js';
import { VhdxError } from '../errors.js';
import { packageVersion } from '../package-version.js';
import type { ParentPaths } from './parents.js';
import { locatorFor } from './parents-node.js';
import { openFile } from './open-node.js';

/** Options of `createFile` and `createOpenFile`: those of `createImage`, plus the file's and the parent's. */
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
  /** Called with the checked plan before the file is made (`vhdx create` prints its `Formatting …` line there). @internal */
  onPlan?: (plan: ImagePlan) => void;
  /** Cache mode of the new file (default writeback; see CacheMode). */
  cache?: CacheMode;
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
  const options = await planOptions(path, opts);
  return withNewFile(path, opts, async (src) => {
    const result = await createImage(src, options);
    await src.close();
    return result;
  });
}

/**
 * Create a new VHDX file as `createFile` does and return it open for writing, on the same file
 * handle and under the same lock (no close, reopen and second validation of what was just
 * written; a differencing image is reopened by path, to open its parents as `openFile` does).
 * If the create or the open fails, the file is removed.
 */
export async function createOpenFile(path: string, opts: CreateFileOptions): Promise<VhdxImage> {
  const options = await planOptions(path, opts);
  return withNewFile(path, opts, async (src) => {
    await createImage(src, options);
    if (opts.parent !== undefined) {
      // A differencing image needs its chain: reopened by path, as openFile finds parents.
      await src.close();
      return openFile(path, { readOnly: false, ...(opts.parents !== undefined ? { parents: opts.parents } : {}), ...(opts.cache ? { cache: opts.cache } : {}) });
    }
    return VhdxImage.open(src, { readOnly: false, name: path });
  });
}

/**
 * Make the file at `path` exclusively (an existing one is EEXIST / FILE_EXISTS and left alone,
 * unless `overwrite`), open for writing, and return what `fill` makes of it. If `fill` fails, the
 * file is closed and removed before the error is thrown. The VHDX and VHD creators share it.
 */
export async function withNewFile<T>(path: string, opts: { overwrite?: boolean | undefined; cache?: CacheMode | undefined }, fill: (src: NodeFileSource) => Promise<T>): Promise<T> {
  let src: NodeFileSource;
  try {
    src = await NodeFileSource.open(path, { readOnly: false, create: true, truncate: opts.overwrite === true, ...(opts.cache ? { cache: opts.cache } : {}) });
  } catch (e) {
    if (e instanceof VhdxError && (e.cause as { code?: string } | undefined)?.code === 'EEXIST') {
      throw new VhdxError('EEXIST', 'FILE_EXISTS', `${path} already exists (it is not overwritten)`, { cause: e });
    }
    throw e;
  }
  try {
    return await fill(src);
  } catch (e) {
    await src.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw e;
  }
}

/** The options createImage gets for `path`: a differencing disk's come from its parent (opened read-only, then closed). Bad options fail here, before any file exists; `onPlan` sees the checked plan. */
async function planOptions(path: string, opts: CreateFileOptions): Promise<CreateOptions> {
  const { overwrite: _overwrite, parent: parentPath, parents, size, onPlan, cache: _cache, ...rest } = opts;
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
  onPlan?.(planCreate(options)); // bad options fail here, before any file exists
  return options;
}

