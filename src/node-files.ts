/** Opening and creating image files by path (Node only). The CLI imports this directly, not the
 * package barrel, so a command loads only the modules it uses. */
import { createRequire } from 'node:module';
import { realpath, stat, unlink } from 'node:fs/promises';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { NodeFileSource } from './io/node-file.js';
import { VhdxImage, checkParent, locatorValue, type OpenOptions, type ParentResolver } from './driver/image.js';
import { createImage, planCreate, DEFAULT_CREATOR, type CreateOptions, type CreateResult } from './driver/create.js';
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
}

/**
 * Open the VHDX file at `path`, read-only unless `readOnly: false`. A writable open takes the
 * image's lock (see NodeFileSource). A differencing image's parents are opened read-only, as
 * `parents` allows, and closed with it. Close the image to release the files.
 */
export async function openFile(path: string, opts: OpenFileOptions = {}): Promise<VhdxImage> {
  const real = await realpath(path).catch(() => resolve(path));
  return openInChain(path, opts, new Set([real]));
}

async function openInChain(path: string, opts: OpenFileOptions, visited: Set<string>): Promise<VhdxImage> {
  const { parents = 'relative', ...rest } = opts;
  const parent: ParentResolver | undefined =
    typeof parents === 'function' ? parents : parents === 'none' ? undefined : pathResolver(path, parents, visited, rest);
  const src = await NodeFileSource.open(path, { readOnly: opts.readOnly ?? true });
  try {
    return await VhdxImage.open(src, { ...rest, name: rest.name ?? path, ...(parent ? { parent } : {}) });
  } catch (e) {
    await src.close();
    throw e;
  }
}

/**
 * The host path a locator value names, or a reason it names none here. `relative_path` is taken
 * against the child's folder with Windows separators translated; absolute Windows paths
 * (`C:\…`, `\\?\C:\…`, `\\?\Volume{…}\…`, UNC) mean something only on Windows; a POSIX path
 * stored in `absolute_win32_path` (as `vhdx create -b` does off Windows) is used as it is.
 */
function hostPath(key: string, value: string, childDir: string): { path: string } | { why: string } {
  const windows = sep === '\\';
  if (key === 'relative_path') {
    const rel = windows ? value : value.replace(/\\/g, '/');
    if (isAbsolute(rel) || /^[A-Za-z]:/.test(value)) return { why: 'not a relative path' };
    return { path: resolve(childDir, rel) };
  }
  if (value.startsWith('/') && !windows) return { path: value };
  if (windows) return { path: value.startsWith('\\\\?\\') && /^[A-Za-z]:/.test(value.slice(4)) ? value.slice(4) : value };
  return { why: 'a Windows path, which has no meaning on this host' };
}

function pathResolver(childPath: string, policy: 'relative' | 'any', visited: Set<string>, opts: OpenFileOptions): ParentResolver {
  return async ({ locator, child, depth }) => {
    const tried: string[] = [];
    for (const key of ['relative_path', 'volume_path', 'absolute_win32_path']) {
      const value = locatorValue(locator, key);
      if (value === undefined) continue;
      if (key !== 'relative_path' && policy !== 'any') {
        tried.push(`${key} ${JSON.stringify(value)} (not followed: absolute parent paths are followed only with parents 'any' / --parents=any)`);
        continue;
      }
      const where = hostPath(key, value, dirname(childPath));
      if ('why' in where) {
        tried.push(`${key} ${JSON.stringify(value)} (${where.why})`);
        continue;
      }
      let real: string;
      try {
        real = await realpath(where.path);
      } catch {
        tried.push(`${where.path} (not found)`);
        continue;
      }
      if (!(await stat(real)).isFile()) {
        tried.push(`${where.path} (not a regular file)`);
        continue;
      }
      if (visited.has(real)) {
        throw new VhdxError('EINVAL', 'PARENT_LOOP', `the parent of ${childPath} is ${where.path}, which is already in the chain (a loop)`);
      }
      let parent: VhdxImage;
      try {
        parent = await openInChain(where.path, { ...opts, readOnly: true, depth, name: where.path, parents: policy }, new Set([...visited, real]));
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
          tried.push(`${where.path} (${e.message})`);
          continue;
        }
        throw e;
      }
      return parent;
    }
    const mismatch = tried.some((t) => t.includes('is not the parent'));
    throw new VhdxError(
      mismatch ? 'EINVAL' : 'ENOENT',
      mismatch ? 'PARENT_MISMATCH' : 'PARENT_NOT_FOUND',
      `cannot open the parent of ${childPath}: ${tried.length ? `tried ${tried.join('; ')}` : 'its locator has no path'}`,
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

export interface CreateFileOptions extends CreateOptions {
  /** Replace an existing file instead of failing with EEXIST / FILE_EXISTS (default false). */
  overwrite?: boolean;
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
  const { overwrite = false, ...rest } = opts;
  const options: CreateOptions = { ...rest, creator: rest.creator ?? `${DEFAULT_CREATOR} ${packageVersion()}` };
  planCreate(options); // bad options fail here, before any file exists
  let src: NodeFileSource;
  try {
    src = await NodeFileSource.open(path, { readOnly: false, create: true, truncate: overwrite });
  } catch (e) {
    if (e instanceof VhdxError && (e.cause as { code?: string } | undefined)?.code === 'EEXIST') {
      throw new VhdxError('EEXIST', 'FILE_EXISTS', `${path} already exists (it is not overwritten)`, { cause: e });
    }
    throw e;
  }
  try {
    const result = await createImage(src, options);
    await src.close();
    return result;
  } catch (e) {
    await src.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw e;
  }
}
