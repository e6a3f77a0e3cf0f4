/**
 * Parents on the host's files (Node): where a parent path points, under the policy of parents.ts,
 * and the locator a new child needs to find its parent.
 */
import { realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { LOCATOR_TYPE_VHDX } from '../format/constants.js';
import type { ParentLocator } from '../format/parent-locator.js';
import type { VhdxImage } from '../driver/image.js';
import type { LocatorPath, ParentPlaces } from './parents.js';

/**
 * The host path a parent path names, or a reason it names none here. A relative path is taken
 * against the child's folder with Windows separators translated; one that leaves that folder
 * (`..\\x`) is followed only under the `any` policy, like an absolute path, and the reason given
 * says nothing of whether it exists. Absolute Windows paths (`C:\…`, `\\?\C:\…`,
 * `\\?\Volume{…}\…`, UNC) mean something only on Windows; a POSIX path stored as an absolute
 * path (as `vhdx create -b` does off Windows) is used as it is.
 */
function hostPath(p: LocatorPath, childDir: string, policy: 'relative' | 'any'): { path: string } | { why: string } {
  const windows = sep === '\\';
  const { value } = p;
  if (p.relative) {
    const rel = windows ? value : value.replace(/\\/g, '/');
    if (isAbsolute(rel) || /^[A-Za-z]:/.test(value)) return { why: 'not a relative path' };
    const path = resolve(childDir, rel);
    const inside = relative(childDir, path);
    if (policy !== 'any' && (inside === '..' || inside.startsWith(`..${sep}`) || isAbsolute(inside))) {
      return { why: "not followed: it leaves the child's folder; such paths are followed only with parents 'any' / --parents=any" };
    }
    return { path };
  }
  if (policy !== 'any') return { why: "not followed (absolute parent paths are followed only with parents 'any' / --parents=any)" };
  if (value.startsWith('/') && !windows) return { path: value };
  if (windows) return { path: value.startsWith('\\\\?\\') && /^[A-Za-z]:/.test(value.slice(4)) ? value.slice(4) : value };
  return { why: 'a Windows path, which has no meaning on this host' };
}

/** Parents on files: identified by their real path, with their modification time. */
export const filePlaces: ParentPlaces = {
  async locate(p, child, policy) {
    const where = hostPath(p, dirname(resolve(child)), policy);
    if ('why' in where) return where;
    const missing = { why: 'not found', shown: where.path };
    let real: string;
    try {
      real = await realpath(where.path);
    } catch {
      return missing;
    }
    const st = await stat(real);
    if (!st.isFile()) return { why: 'not a regular file', shown: where.path };
    return { place: { location: where.path, shown: where.path, identity: real, modifiedTime: st.mtimeMs } };
  },
  // The file was found; one that vanished before the open is an error of its own.
  missing: () => false,
};

/** The identity of the file at `path` in a chain (its real path; the path itself when it cannot be resolved). */
export async function fileIdentity(path: string): Promise<string> {
  return realpath(path).catch(() => resolve(path));
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
