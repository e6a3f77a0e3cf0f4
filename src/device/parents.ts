/**
 * Finding a differencing image's parent: the one place where the paths a child names are turned
 * into candidates, tried in order under a policy, opened, verified and refused (loops, paths that
 * leave the child's folder, absolute paths, another origin). VHDX and VHD chains, on files (Node:
 * parents-node.ts says where a path points) and behind URLs (below), all pass through `findParent`,
 * and each parent is verified once, by the check the driver hands the resolver (`verify`).
 * Browser-safe.
 */
import { VhdxError, isVhdxError } from '../errors.js';
import { redactUrl } from '../io/http.js';
import { PARENT_PATH_KEYS, locatorValue } from '../driver/image.js';
import type { ParentLocator } from '../format/parent-locator.js';
import { PlatformCode } from '../vhd/parent-locator.js';
import type { VhdLocator } from '../vhd/layout.js';

/**
 * Which of a differencing image's parent paths are followed:
 * - `relative` (the default): relative paths only, resolved against the child's folder (or URL),
 *   and not out of it;
 * - `any`: absolute paths as well (only for images you trust, since they can name any file on
 *   the host), and relative ones wherever they lead;
 * - `none`: no parent is opened (the image opens for its metadata; reads fail with NO_PARENT).
 */
export type ParentPaths = 'relative' | 'any' | 'none';

/** One path a child names for its parent, in the order paths are tried. */
export interface LocatorPath {
  /** What names it, for messages: a VHDX locator key (`relative_path`) or a VHD platform (`W2ru`). */
  key: string;
  value: string;
  /** True for a path relative to the child. */
  relative: boolean;
}

/** The paths of a VHDX parent locator: relative_path, volume_path, absolute_win32_path. */
export function vhdxLocatorPaths(loc: ParentLocator): LocatorPath[] {
  const out: LocatorPath[] = [];
  for (const key of PARENT_PATH_KEYS) {
    const value = locatorValue(loc, key);
    if (value !== undefined) out.push({ key, value, relative: key === 'relative_path' });
  }
  return out;
}

/**
 * The paths of a VHD's parent locators: the relative ones (W2ru, Wi2r) first, then the absolute
 * ones (W2ku, Wi2k, and MacX's file URL as the path it names), each group in header order.
 */
export function vhdLocatorPaths(locators: readonly VhdLocator[]): LocatorPath[] {
  const relative: LocatorPath[] = [];
  const absolute: LocatorPath[] = [];
  for (const l of locators) {
    if (l.path === null || l.path === '') continue;
    if (l.platformCode === PlatformCode.W2RU || l.platformCode === PlatformCode.WI2R) relative.push({ key: l.platform, value: l.path, relative: true });
    else if (l.platformCode === PlatformCode.MACX) {
      const path = fileUrlPath(l.path);
      if (path !== null) absolute.push({ key: l.platform, value: path, relative: false });
    } else absolute.push({ key: l.platform, value: l.path, relative: false });
  }
  return [...relative, ...absolute];
}

/** The path of a `file://` URL, or null when it is not one. */
function fileUrlPath(text: string): string | null {
  try {
    const u = new URL(text);
    return u.protocol === 'file:' ? decodeURIComponent(u.pathname) : null;
  } catch {
    return null;
  }
}

/** Where a path puts the parent. */
export interface ParentPlace {
  /** What to open: a host path or a URL. */
  location: string;
  /** How messages name it. */
  shown: string;
  /** What identifies it in a chain (a real path; a URL without its query): seen twice is a loop. */
  identity: string;
  /** The file's modification time, where known (a VHD child may name it as its parent's time stamp). */
  modifiedTime?: number;
}

/** How paths become places for one kind of location (host files, URLs). */
export interface ParentPlaces {
  /** Where `path` (from the child at `child`) names the parent under `policy`, or why it names none usable. */
  locate(path: LocatorPath, child: string, policy: 'relative' | 'any'): Promise<{ place: ParentPlace } | { why: string; shown?: string }>;
  /** True when an open failed because nothing is at the place (the next path is tried). */
  missing(error: unknown): boolean;
}

/** Errors about the chain as a whole: passed on as they are, never wrapped or skipped. */
const CHAIN_REASONS = new Set(['PARENT_LOOP', 'CHAIN_TOO_DEEP', 'PARENT_NOT_FOUND', 'PARENT_MISMATCH', 'PARENT_NOT_ALLOWED']);

export interface FindParent<T> {
  /** The child's name in messages. */
  child: string;
  /** The child's location (a path or a URL) that relative paths start from. */
  from: string;
  paths: readonly LocatorPath[];
  policy: 'relative' | 'any';
  places: ParentPlaces;
  /** Identities of the images already in the chain. */
  visited: ReadonlySet<string>;
  /** Open the parent at `place` (with its own chain; `visited` includes it). */
  open(place: ParentPlace, visited: Set<string>): Promise<T>;
  /** The driver's check of a candidate (the request's `verify`). */
  verify(parent: T): void;
}

/**
 * Try the child's parent paths in order and return the first parent that opens and verifies. A
 * path that is refused, leads nowhere or names another disk is listed in the error if none does
 * (a parent that moved may have left a stale copy where one path points). Loops and errors of
 * the chain further down end the search.
 */
export async function findParent<T extends { close(): Promise<void> }>(f: FindParent<T>): Promise<T> {
  const tried: string[] = [];
  const named = (p: LocatorPath, shown?: string): string => (shown !== undefined && shown !== p.value ? `${p.key} ${p.value} -> ${shown}` : `${p.key} ${p.value}`);
  let mismatch = false;
  for (const p of f.paths) {
    const where = await f.places.locate(p, f.from, f.policy);
    if ('why' in where) {
      tried.push(`${named(p, where.shown)}: ${where.why}`);
      continue;
    }
    const place = where.place;
    if (f.visited.has(place.identity)) {
      throw new VhdxError('EINVAL', 'PARENT_LOOP', `the parent of ${f.child} is ${place.shown}, which is already in the chain (a loop)`);
    }
    let parent: T;
    try {
      parent = await f.open(place, new Set([...f.visited, place.identity]));
    } catch (e) {
      if (f.places.missing(e)) {
        tried.push(`${named(p, place.shown)}: not found`);
        continue;
      }
      if (isVhdxError(e) && CHAIN_REASONS.has(e.reason)) throw e;
      throw isVhdxError(e) ? new VhdxError(e.code, e.reason, `parent ${place.shown}: ${e.message}`, { cause: e }) : e;
    }
    try {
      f.verify(parent);
    } catch (e) {
      await parent.close();
      if (isVhdxError(e) && e.reason === 'PARENT_MISMATCH') {
        mismatch = true;
        tried.push(`${named(p, place.shown)}: ${e.message}`);
        continue;
      }
      throw e;
    }
    return parent;
  }
  throw new VhdxError(
    mismatch ? 'EINVAL' : 'ENOENT',
    mismatch ? 'PARENT_MISMATCH' : 'PARENT_NOT_FOUND',
    `cannot open the parent of ${f.child}: ${tried.length ? `paths tried:\n  ${tried.join('\n  ')}` : 'its locator has no path'}`,
  );
}

/** Where a URL points, for loop detection: without its query and fragment. */
export function urlIdentity(url: string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/** True for the names the URL places handle (http: and https:). */
export function isUrl(name: string): boolean {
  return /^https?:\/\//i.test(name);
}

/**
 * A relative path (Windows separators) as a URL relative to the child's: each name
 * percent-encoded, `.` and `..` kept. Null, with why, for a path that is not relative.
 */
export function relativeParentUrl(relativePath: string, childUrl: string, parentQuery: 'inherit' | 'none' = 'inherit'): { url: string } | { why: string } {
  const parts = relativePath.split(/[\\/]/);
  if (parts[0] === '' || /^[A-Za-z]:/.test(parts[0] ?? '')) return { why: 'not a relative path' };
  if (parts.some((p) => p === '') || parts.length === 0) return { why: 'an empty path element' };
  const rel = parts.map((p) => (p === '.' || p === '..' ? p : encodeURIComponent(p))).join('/');
  const u = new URL(rel, childUrl);
  u.search = parentQuery === 'inherit' ? new URL(childUrl).search : '';
  u.hash = '';
  return { url: u.href };
}

/**
 * Parents behind URLs: a relative path from the child's URL (with the child's query string unless
 * `parentQuery` is `none`); absolute paths name files on some Windows host and are never followed.
 * Whether a parent may be served from another origin is the opener's to check (after redirects).
 */
export function urlPlaces(parentQuery: 'inherit' | 'none' = 'inherit'): ParentPlaces {
  return {
    async locate(p, child) {
      if (!p.relative) return { why: 'not followed (a path on a Windows host has no meaning on a web server)' };
      const where = relativeParentUrl(p.value, child, parentQuery);
      if ('why' in where) return where;
      return { place: { location: where.url, shown: redactUrl(where.url), identity: urlIdentity(where.url) } };
    },
    missing: (e) => isVhdxError(e) && e.reason === 'HTTP_STATUS' && e.code === 'ENOENT',
  };
}
