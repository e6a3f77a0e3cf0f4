/**
 * Opening VHDX images that live behind HTTP(S) URLs (object storage, presigned URLs, any web
 * server with byte ranges), read-only, with the parents of a differencing image found beside it.
 * Browser-safe.
 */
import { VhdxError, isVhdxError } from '../errors.js';
import { HttpSource, redactUrl, type HttpSourceOptions, type HttpStats } from '../io/http.js';
import { PARENT_PATH_KEYS, VhdxImage, locatorValue, type OpenOptions, type ParentResolver } from './image.js';

export interface OpenUrlOptions extends Omit<OpenOptions, 'parent' | 'readOnly'> {
  /** Images over HTTP open read-only: `false` is refused (EROFS / READ_ONLY). */
  readOnly?: boolean;
  /**
   * How the image and its parents are read (headers, cache, retries, timeouts, signal; see
   * HttpSourceOptions). Their `stats` counts the requests of the whole chain.
   */
  http?: Omit<HttpSourceOptions, 'size'>;
  /**
   * How a differencing image's parent is found: `relative` (the default) follows the locator's
   * relative_path from the child's URL and refuses a parent served from another origin (after
   * redirects); `any` lets it come from another origin; `none` opens no parent; or your own resolver.
   * Absolute paths in a locator name files on some Windows host and are never followed over HTTP.
   */
  parents?: 'relative' | 'any' | 'none' | ParentResolver;
  /**
   * Whether a parent's URL carries the child's query string (a container-wide SAS token, for
   * example): `inherit` (the default) or `none`.
   */
  parentQuery?: 'inherit' | 'none';
}

/** OpenUrlOptions with the counters every source of the chain adds to. */
type ChainOptions = OpenUrlOptions & { http: { stats: HttpStats } };

/**
 * Open the VHDX image at `url` read-only over HTTP range requests, with its parents as
 * `parents` says (read with the same `http` options, counted in the same `http.stats`). Close
 * the image to end its requests.
 */
export async function openUrl(url: string, opts: OpenUrlOptions = {}): Promise<VhdxImage> {
  if (opts.readOnly === false) {
    throw new VhdxError('EROFS', 'READ_ONLY', `${redactUrl(url)}: images read over HTTP are read-only (download the file to change it)`);
  }
  const stats = opts.http?.stats ?? { requests: 0, bytesReceived: 0, retries: 0 };
  return openInChain(url, { ...opts, http: { ...opts.http, stats } }, new Set(), null);
}

/** Where a URL points, for loop detection: without its query and fragment. */
function identity(url: string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/**
 * Open `url` and its chain. `origin`: the origin the answers must come from after redirects
 * (a parent under the `relative` policy), or null.
 */
async function openInChain(url: string, opts: ChainOptions, visited: Set<string>, origin: string | null): Promise<VhdxImage> {
  const { parents = 'relative', parentQuery, readOnly, depth, name, http, ...openOpts } = opts;
  void readOnly;
  void parentQuery;
  const src = await HttpSource.open(url, http);
  const servedFrom = new URL(src.finalUrl).origin;
  if (origin !== null && servedFrom !== origin) {
    await src.close();
    throw new VhdxError('EPERM', 'PARENT_NOT_ALLOWED', `${redactUrl(url)} is served from ${servedFrom}, another origin than its child's (parents 'any' allows that)`);
  }
  const here = new Set([...visited, identity(src.finalUrl)]);
  const parent = typeof parents === 'function' ? parents : parents === 'none' ? undefined : chainResolver(url, opts, here);
  try {
    return await VhdxImage.open(src, { ...openOpts, readOnly: true, name: name ?? redactUrl(url), ...(depth !== undefined ? { depth } : {}), ...(parent ? { parent } : {}) });
  } catch (e) {
    await src.close();
    throw e;
  }
}

/**
 * The locator's relative_path (Windows separators) as a URL relative to the child's: each name
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
 * The resolver `openUrl` uses: the parent is at the locator's relative_path from the child's
 * URL, served from the child's origin unless `parents` is `any`, opened with the same options;
 * loops are refused. `visited`: the images already in the chain (URLs without their query).
 */
export function urlParentResolver(childUrl: string, opts: OpenUrlOptions = {}, visited: Set<string> = new Set([identity(childUrl)])): ParentResolver {
  return chainResolver(childUrl, { ...opts, http: { ...opts.http, stats: opts.http?.stats ?? { requests: 0, bytesReceived: 0, retries: 0 } } }, visited);
}

function chainResolver(childUrl: string, opts: ChainOptions, visited: Set<string>): ParentResolver {
  const policy = opts.parents === 'any' ? 'any' : 'relative';
  const child = redactUrl(childUrl);
  return async ({ locator, depth }) => {
    const tried: string[] = [];
    for (const key of PARENT_PATH_KEYS) {
      const value = locatorValue(locator, key);
      if (value === undefined) continue;
      if (key !== 'relative_path') {
        tried.push(`${key} ${value}: not followed (a path on a Windows host has no meaning on a web server)`);
        continue;
      }
      const where = relativeParentUrl(value, childUrl, opts.parentQuery);
      if ('why' in where) {
        tried.push(`${key} ${value}: ${where.why}`);
        continue;
      }
      const shown = redactUrl(where.url);
      if (visited.has(identity(where.url))) {
        throw new VhdxError('EINVAL', 'PARENT_LOOP', `the parent of ${child} is ${shown}, which is already in the chain (a loop)`);
      }
      let parent: VhdxImage;
      try {
        parent = await openInChain(where.url, { ...opts, depth, name: shown }, visited, policy === 'relative' ? new URL(childUrl).origin : null);
      } catch (e) {
        if (isVhdxError(e) && e.reason === 'HTTP_STATUS' && e.code === 'ENOENT') {
          tried.push(`${key} ${value} -> ${shown}: not found`);
          continue;
        }
        if (isVhdxError(e) && (e.reason === 'PARENT_LOOP' || e.reason === 'CHAIN_TOO_DEEP' || e.reason === 'PARENT_NOT_FOUND' || e.reason === 'PARENT_MISMATCH' || e.reason === 'PARENT_NOT_ALLOWED')) throw e;
        throw isVhdxError(e) ? new VhdxError(e.code, e.reason, `parent ${shown}: ${e.message}`, { cause: e }) : e;
      }
      return parent;
    }
    throw new VhdxError('ENOENT', 'PARENT_NOT_FOUND', `cannot open the parent of ${child}: ${tried.length ? `paths tried:\n  ${tried.join('\n  ')}` : 'its locator has no path'}`);
  };
}
