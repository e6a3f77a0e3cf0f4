/**
 * The device layer's opener: the one format probe, and images opened with their chains of parents
 * from any kind of place (files in open-node.ts, URLs here). Browser-safe.
 */
import { VhdxError } from '../errors.js';
import { readExact, type RandomAccessSource } from '../io/source.js';
import { HttpSource, redactUrl, type HttpSourceOptions, type HttpStats } from '../io/http.js';
import { RECOGNIZE_BYTES, probe, recognize } from '../driver/open.js';
import { VhdxImage, type OpenOptions, type ParentResolver } from '../driver/image.js';
import { VhdImage, type VhdOpenOptions, type VhdParentResolver } from '../vhd/image.js';
import { FOOTER_COOKIE, FOOTER_SIZE } from '../vhd/footer.js';
import { RawDevice } from './raw.js';
import { findParent, urlIdentity, urlPlaces, vhdLocatorPaths, vhdxLocatorPaths, type ParentPaths, type ParentPlace, type ParentPlaces } from './parents.js';

/** The formats the opener knows: `vpc` is VHD (qemu's name for it). */
export type ImageFormat = 'raw' | 'vhdx' | 'vpc';

/** A device the opener returns: a VHDX or VHD image (with its chain), or a raw disk. */
export type OpenedDevice = VhdxImage | VhdImage | RawDevice;

/**
 * What a source's bytes show it is, by the one probe every command shares: the VHDX file
 * identifier at offset 0; the VHD footer cookie at the end (so a fixed VHD is never taken for a
 * raw disk) or its copy at offset 0 (dynamic and differencing disks whose end footer is missing);
 * else raw. A probe never guesses in silence: an empty source is refused, and so is one that
 * looks like a damaged VHDX (no identifier, but a valid VHDX header or region table at its place),
 * rather than read as a raw disk (a write to it would destroy what is left of its metadata); a
 * source taken as raw comes with a warning (as qemu gives).
 */
export async function probeFormat(src: RandomAccessSource, name: string): Promise<{ format: ImageFormat; warning?: string }> {
  const seen = await detectFormat(src);
  if (seen === 'empty') throw new VhdxError('EINVAL', 'EMPTY_FILE', `${name} is empty: it is not a disk image (-f raw takes it as a raw disk of 0 bytes)`);
  if (seen === 'damaged-vhdx') {
    throw new VhdxError(
      'EINVAL',
      'DAMAGED_VHDX',
      `${name} looks like a damaged VHDX (no identifier, but a valid VHDX header or region table at its place), so it is not taken as raw; ` +
        '-f raw uses it as raw bytes anyway',
    );
  }
  if (seen === null) return { format: 'raw', warning: `${name} was probed as raw; use -f raw to silence this` };
  return { format: seen };
}

/**
 * What a source's bytes show, without a verdict (probeFormat's): `vhdx`, `vpc`, `damaged-vhdx`,
 * `empty`, or null for none of these. For callers that examine any file, such as check.
 */
export async function detectFormat(src: RandomAccessSource): Promise<'vhdx' | 'vpc' | 'damaged-vhdx' | 'empty' | null> {
  if (src.size === 0) return 'empty';
  // The first 8 bytes settle the usual cases; the rest is read only without them.
  const first = await readAt(src, 0, 8);
  if (probe(first) > 0) return 'vhdx';
  if (hasCookie(first, 0)) return 'vpc';
  // The footer at the end: 512 bytes, or 511 in the oldest Virtual PC files.
  if (src.size >= FOOTER_SIZE) {
    const tail = await readAt(src, src.size - FOOTER_SIZE, FOOTER_SIZE);
    if (hasCookie(tail, 0) || hasCookie(tail, 1)) return 'vpc';
  }
  return recognize(await readAt(src, 0, RECOGNIZE_BYTES));
}

/** The format `auto` opens `src` as (see DeviceOptions.probeRaw); the probe's warning goes to `onWarning`. */
export async function probed(src: RandomAccessSource, name: string, probeRaw: boolean, onWarning?: (message: string) => void): Promise<ImageFormat> {
  if (!probeRaw) return (await detectFormat(src)) === 'vpc' ? 'vpc' : 'vhdx';
  const { format, warning } = await probeFormat(src, name);
  if (warning !== undefined) onWarning?.(warning);
  return format;
}

/** Up to `length` bytes at `offset` (fewer at the end of the source). */
async function readAt(src: RandomAccessSource, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(Math.max(0, Math.min(length, src.size - offset)));
  await readExact(src, offset, out, 'the format probe');
  return out;
}

function hasCookie(b: Uint8Array, at: number): boolean {
  if (b.length < at + FOOTER_COOKIE.length) return false;
  for (let i = 0; i < FOOTER_COOKIE.length; i++) if (b[at + i] !== FOOTER_COOKIE.charCodeAt(i)) return false;
  return true;
}

/** The drivers' options the opener passes on (cache sizes, VHD size rule...). */
export type DriverOptions = Omit<OpenOptions, 'parent' | 'depth' | 'readOnly' | 'name'> & Omit<VhdOpenOptions, 'parent' | 'depth' | 'chain' | 'readOnly' | 'name' | 'modifiedTime'>;

/** How a device is opened: format, access, parents and the drivers' options (see `openDevice`). */
export interface DeviceOptions extends DriverOptions {
  /** `auto` (the default) probes (probeFormat); a format named is used as it is. */
  format?: 'auto' | ImageFormat;
  /** Open for reading only (the default). */
  readOnly?: boolean;
  /**
   * How a differencing image's parents are found: a policy for the paths it names (default
   * `relative`; see ParentPaths), or, for a VHDX, your own resolver. Parents open read-only.
   */
  parents?: ParentPaths | ParentResolver;
  /** The name of the image in messages (default: its path, or its URL without the query). */
  name?: string;
  /** How deep the image sits in a chain (0, the default: the image the caller opened). Set by resolvers. */
  depth?: number;
  /** Called with the probe's warning (a source taken as raw). */
  onWarning?: (message: string) => void;
  /**
   * With `format: 'auto'`, whether a source that is neither VHDX nor VHD is taken as raw (the
   * default, with a warning). `false`: anything but a VHD is opened as a VHDX, whose open says
   * why it is not one
   * (for writable uses that must not take a file for a raw disk by a guess).
   */
  probeRaw?: boolean;
}

/** How images are found and opened in one kind of place (host files, URLs). */
export interface ImageStore {
  /** Open the source at `location`; `childOf`: the child's location when it is a parent. */
  open(location: string, readOnly: boolean, childOf: string | null): Promise<RandomAccessSource>;
  /** The identity of the image at `location` in a chain (loops). */
  identity(location: string, src: RandomAccessSource): Promise<string>;
  places: ParentPlaces;
}

/** What opening one image of a chain needs besides its source. */
export interface Level {
  location: string;
  name: string;
  depth: number;
  /** The images already in the chain (store identities; this one included). */
  visited: Set<string>;
  /** VHD: the unique ids below this image, and this file's modification time. */
  chain?: readonly string[];
  modifiedTime?: number;
}

/** The chain options: read-only unless `readOnly: false`; with `writableParent`, the direct parent is opened writable (commit). */
export interface ChainOptions extends DriverOptions {
  readOnly?: boolean;
  parents?: ParentPaths | ParentResolver;
  writableParent?: boolean;
}

/** How a level's parents open: read-only (writable only for a commit's direct parent), by the same policy. */
function parentOpener(store: ImageStore, level: Level, opts: ChainOptions) {
  const { writableParent = false, readOnly: _readOnly, ...rest } = opts;
  void _readOnly;
  const parentOpts: ChainOptions = { ...rest, readOnly: !writableParent };
  return async (fmt: 'vhdx' | 'vpc', place: ParentPlace, visited: Set<string>, depth: number, chain?: readonly string[]): Promise<OpenedDevice> => {
    const src = await store.open(place.location, !writableParent, level.location);
    const at: Level = { location: place.location, name: place.shown, depth, visited, ...(chain ? { chain } : {}), ...(place.modifiedTime !== undefined ? { modifiedTime: place.modifiedTime } : {}) };
    return openInStore(store, src, fmt, at, parentOpts);
  };
}

/** The resolver that finds the parents of the VHDX at `level` in `store` (undefined for `none`). */
export function vhdxParentResolver(store: ImageStore, level: Level, opts: ChainOptions): ParentResolver | undefined {
  const { parents = 'relative' } = opts;
  if (typeof parents === 'function') return parents;
  if (parents === 'none') return undefined;
  const open = parentOpener(store, level, opts);
  return ({ locator, depth, verify }) =>
    findParent({
      child: level.name,
      from: level.location,
      paths: vhdxLocatorPaths(locator),
      policy: parents,
      places: store.places,
      visited: level.visited,
      open: async (place, visited) => (await open('vhdx', place, visited, depth)) as VhdxImage,
      verify,
    });
}

/** The resolver that finds the parents of the VHD at `level` in `store` (undefined for `none`). */
export function vhdParentResolver(store: ImageStore, level: Level, opts: ChainOptions): VhdParentResolver | undefined {
  const { parents = 'relative' } = opts;
  if (typeof parents === 'function') throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${level.name}: a ParentResolver opens VHDX parents; a VHD's parents follow a policy (relative, any, none)`);
  if (parents === 'none') return undefined;
  const open = parentOpener(store, level, opts);
  return (req) =>
    findParent({
      child: level.name,
      from: level.location,
      paths: vhdLocatorPaths(req.locators),
      policy: parents,
      places: store.places,
      visited: level.visited,
      open: async (place, visited) => (await open('vpc', place, visited, req.depth, req.chain)) as VhdImage,
      verify: req.verify,
    });
}

/**
 * Open the image in `src` (at `level.location` of `store`) as `format`, with its parents found
 * by `opts.parents`. The source is closed if the open fails.
 */
export async function openInStore(store: ImageStore, src: RandomAccessSource, format: ImageFormat, level: Level, opts: ChainOptions): Promise<OpenedDevice> {
  const { parents: _parents, readOnly = true, writableParent: _writableParent, ...driver } = opts;
  void _parents;
  void _writableParent;
  try {
    if (format === 'raw') return new RawDevice(src);
    if (format === 'vhdx') {
      const parent = vhdxParentResolver(store, level, opts);
      return await VhdxImage.open(src, { ...driver, readOnly, name: level.name, depth: level.depth, ...(parent ? { parent } : {}) });
    }
    const parent = vhdParentResolver(store, level, opts);
    return await VhdImage.open(src, {
      ...driver,
      readOnly,
      name: level.name,
      depth: level.depth,
      ...(level.chain ? { chain: level.chain } : {}),
      ...(level.modifiedTime !== undefined ? { modifiedTime: level.modifiedTime } : {}),
      ...(parent ? { parent } : {}),
    });
  } catch (e) {
    await src.close().catch(() => undefined);
    throw e;
  }
}

/**
 * Open the image at `location` of `store`: probed unless `opts.format` names a format (the probe's
 * warning goes to `opts.onWarning`), with its chain.
 */
export async function openFromStore(store: ImageStore, location: string, name: string, opts: DeviceOptions & { writableParent?: boolean }): Promise<OpenedDevice> {
  const { format = 'auto', onWarning, probeRaw = true, name: _name, depth = 0, ...chain } = opts;
  void _name;
  const src = await store.open(location, chain.readOnly !== false, null);
  let fmt: ImageFormat;
  let visited: Set<string>;
  try {
    if (format === 'auto') {
      fmt = await probed(src, name, probeRaw, onWarning);
    } else fmt = format;
    visited = new Set([await store.identity(location, src)]);
  } catch (e) {
    await src.close().catch(() => undefined);
    throw e;
  }
  return openInStore(store, src, fmt, { location, name, depth, visited }, chain);
}

/** The error for a writable use of an image behind a URL. */
export function urlReadOnly(url: string): VhdxError {
  return new VhdxError('EROFS', 'READ_ONLY', `${redactUrl(url)}: images read over HTTP are read-only (download the file to change it)`);
}

/** Options of images read over HTTP. */
export interface UrlOptions {
  /**
   * How the image and its parents are read (headers, cache, retries, timeouts, signal; see
   * HttpSourceOptions). Their `stats` counts the requests of the whole chain.
   */
  http?: Omit<HttpSourceOptions, 'size'>;
  /**
   * Whether a parent's URL carries the child's query string (a container-wide SAS token, for
   * example): `inherit` (the default) or `none`.
   */
  parentQuery?: 'inherit' | 'none';
}

/**
 * Images behind URLs: read-only; a parent found by a relative path must be served from its
 * child's origin (after redirects) unless parents are `any`. Every source adds to one `stats`.
 */
export function urlStore(opts: UrlOptions & { parents?: ParentPaths | ParentResolver }): ImageStore {
  const http = { ...opts.http, stats: opts.http?.stats ?? { requests: 0, bytesReceived: 0, retries: 0 } };
  return {
    async open(url, readOnly, childOf) {
      if (!readOnly) throw urlReadOnly(url);
      const src = await HttpSource.open(url, http);
      const servedFrom = new URL(src.finalUrl).origin;
      if (childOf !== null && opts.parents !== 'any' && servedFrom !== new URL(childOf).origin) {
        await src.close();
        throw new VhdxError('EPERM', 'PARENT_NOT_ALLOWED', `${redactUrl(url)} is served from ${servedFrom}, another origin than its child's (parents 'any' allows that)`);
      }
      return src;
    },
    identity: async (_url, src) => urlIdentity((src as HttpSource).finalUrl),
    places: urlPlaces(opts.parentQuery),
  };
}

/** Options of {@link openUrl}: those of `VhdxImage.open`, HTTP's, and how parents are found. */
export interface OpenUrlOptions extends Omit<OpenOptions, 'parent' | 'readOnly'>, UrlOptions {
  /** Images over HTTP open read-only: `false` is refused (EROFS / READ_ONLY). */
  readOnly?: boolean;
  /**
   * How a differencing image's parent is found: `relative` (the default) follows the locator's
   * relative_path from the child's URL and refuses a parent served from another origin (after
   * redirects); `any` lets it come from another origin; `none` opens no parent; or your own resolver.
   * Absolute paths in a locator name files on some Windows host and are never followed over HTTP.
   */
  parents?: ParentPaths | ParentResolver;
}

/**
 * Open the VHDX image at `url` read-only over HTTP range requests, with its parents as
 * `parents` says (read with the same `http` options, counted in the same `http.stats`). Close
 * the image to end its requests.
 */
export async function openUrl(url: string, opts: OpenUrlOptions = {}): Promise<VhdxImage> {
  const { http, parentQuery, name, ...rest } = opts;
  const store = urlStore({ ...(http ? { http } : {}), ...(parentQuery ? { parentQuery } : {}), ...(rest.parents !== undefined ? { parents: rest.parents } : {}) });
  return (await openFromStore(store, url, name ?? redactUrl(url), { ...rest, format: 'vhdx' })) as VhdxImage;
}

/**
 * The resolver `openUrl` uses for the VHDX at `childUrl`: the parent is at the locator's
 * relative_path from the child's URL, served from the child's origin unless `parents` is `any`,
 * opened with the same options; loops are refused.
 */
export function urlParentResolver(childUrl: string, opts: OpenUrlOptions = {}): ParentResolver {
  const { http, parentQuery, name, parents = 'relative', readOnly: _readOnly, ...driver } = opts;
  void _readOnly;
  const policy = parents === 'none' ? 'relative' : parents;
  const store = urlStore({ ...(http ? { http } : {}), ...(parentQuery ? { parentQuery } : {}), parents: policy });
  const level: Level = { location: childUrl, name: name ?? redactUrl(childUrl), depth: 0, visited: new Set([urlIdentity(childUrl)]) };
  return vhdxParentResolver(store, level, { ...driver, parents: policy })!;
}

export type { HttpStats };
