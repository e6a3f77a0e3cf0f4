/**
 * Opening images by path or URL (Node): `openDevice` for any format, `openFile` for a VHDX, with
 * their chains of parents found on the host's files (parents-node.ts) or beside a URL.
 */
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from '../io/source.js';
import { NodeFileSource, type CacheMode } from '../io/node-file.js';
import { redactUrl } from '../io/http.js';
// Makes the Node HTTP transport (src/io/http-node.ts) the HTTP source's default in Node (CLI and Node entry alike).
import '../io/http-node.js';
import { VhdxImage, type OpenOptions, type ParentResolver } from '../driver/image.js';
import type { VhdParentResolver } from '../vhd/image.js';
import { isUrl, type ParentPaths } from './parents.js';
import { fileIdentity, filePlaces } from './parents-node.js';
import {
  openFromStore,
  openInStore,
  probed,
  urlReadOnly,
  urlStore,
  vhdParentResolver,
  vhdxParentResolver,
  type DeviceOptions,
  type ImageStore,
  type OpenedDevice,
  type UrlOptions,
} from './open.js';

/** How files by path are opened: cache mode and locking (for the image and its parents). */
export interface FileOptions {
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

/** Images on the host's files, opened with `opts`' cache mode and locking. */
export function fileStore(opts: FileOptions = {}): ImageStore {
  return {
    open: (path, readOnly) => NodeFileSource.open(path, { readOnly, ...(opts.cache ? { cache: opts.cache } : {}), ...(opts.forceShare ? { forceShare: true } : {}) }),
    identity: (path) => fileIdentity(path),
    places: filePlaces,
  };
}

/** Options of {@link openDevice}: the format and access, files' cache and locking, and HTTP's. */
export interface OpenDeviceOptions extends DeviceOptions, FileOptions, UrlOptions {
  /** Internal (commit): open the direct parent writable. */
  writableParent?: boolean;
}

/**
 * Open a disk image for the block-device interface: a path, an http(s) URL, or a source you
 * opened. The format is probed (`format: 'auto'`, the default; see probeFormat) or named (`raw`,
 * `vhdx`, `vpc`). A differencing image opens with its chain, found by `parents` (relative paths
 * from the image's folder or URL by default), each parent verified once against what the child
 * names. Images over HTTP are read-only: `readOnly: false` is refused (EROFS / READ_ONLY), and
 * `http.stats` counts the requests of the whole chain. A source you opened has no place, so its
 * parents come only from a resolver. Close the device to close every file of its chain.
 */
export async function openDevice(target: string | RandomAccessSource, opts: OpenDeviceOptions = {}): Promise<OpenedDevice> {
  const { cache, forceShare, http, parentQuery, ...rest } = opts;
  if (typeof target !== 'string') return openOnSource(target, rest);
  if (isUrl(target) && rest.readOnly === false) throw urlReadOnly(target);
  const store = storeFor(target, { ...(cache ? { cache } : {}), ...(forceShare ? { forceShare } : {}), ...(http ? { http } : {}), ...(parentQuery ? { parentQuery } : {}), ...(typeof rest.parents === 'string' ? { parents: rest.parents } : {}) });
  return openFromStore(store, target, rest.name ?? (isUrl(target) ? redactUrl(target) : target), rest);
}

/** A source with no place: probed as any, with parents only from a resolver. */
async function openOnSource(src: RandomAccessSource, opts: DeviceOptions): Promise<OpenedDevice> {
  const name = opts.name ?? 'the image';
  const none: ImageStore = {
    open: () => Promise.reject(new VhdxError('EINVAL', 'BAD_ARGUMENT', `${name} was given as a source: its parents can only be found by a resolver`)),
    identity: async () => name,
    places: { locate: async () => ({ why: 'the image was given as a source, not found by path' }), missing: () => false },
  };
  const { format = 'auto', onWarning, probeRaw = true, depth = 0, ...chain } = opts;
  const fmt = format === 'auto' ? await probed(src, name, probeRaw, onWarning) : format;
  return openInStore(none, src, fmt, { location: name, name, depth, visited: new Set() }, { ...chain, parents: chain.parents ?? 'none' });
}

/** Options of {@link openFile}: those of `VhdxImage.open`, with parents found by path, and the files'. */
export interface OpenFileOptions extends Omit<OpenOptions, 'parent'>, FileOptions {
  /** How to find a differencing image's parent: a policy for the locator's paths, or your own resolver. */
  parents?: ParentPaths | ParentResolver;
}

/**
 * Open the VHDX file at `path`, read-only unless `readOnly: false`. A writable open takes the
 * image's write lock, a read-only one a shared lock (see NodeFileSource; `forceShare` skips it).
 * A differencing image's parents are opened read-only (holding shared locks, so no other
 * process writes them under the child), as `parents` allows, and closed with it. Close the
 * image to release the files and locks.
 */
export async function openFile(path: string, opts: OpenFileOptions = {}): Promise<VhdxImage> {
  return (await openDevice(path, { ...opts, format: 'vhdx' })) as VhdxImage;
}

/**
 * The resolver `openFile` would use for the differencing VHDX at `path` under the `parents`
 * policy (undefined for 'none'): for callers that open the file themselves, such as `checkImage`.
 */
export async function parentResolver(path: string, parents: ParentPaths, forceShare = false): Promise<ParentResolver | undefined> {
  const level = { location: path, name: path, depth: 0, visited: new Set([await fileIdentity(path)]) };
  return vhdxParentResolver(fileStore(forceShare ? { forceShare } : {}), level, { parents });
}

/** A store for `name`: the host's files, or the web for an http(s) URL. */
function storeFor(name: string, opts: FileOptions & UrlOptions & { parents?: ParentPaths }): ImageStore {
  if (isUrl(name)) return urlStore({ ...(opts.http ? { http: opts.http } : {}), ...(opts.parentQuery ? { parentQuery: opts.parentQuery } : {}), ...(opts.parents ? { parents: opts.parents } : {}) });
  return fileStore({ ...(opts.cache ? { cache: opts.cache } : {}), ...(opts.forceShare ? { forceShare: true } : {}) });
}

/**
 * The source of the image `name` (a path or an http(s) URL) with the resolvers that find its
 * parents under `parents` as openDevice would, for callers that read the structures themselves
 * (check). A URL cannot be opened writable (EROFS / READ_ONLY).
 */
export async function openImageSource(
  name: string,
  opts: FileOptions & UrlOptions & { readOnly?: boolean; parents: ParentPaths },
): Promise<{ source: RandomAccessSource; vhdxParents: ParentResolver | undefined; vhdParents: VhdParentResolver | undefined }> {
  const readOnly = opts.readOnly ?? true;
  if (isUrl(name) && !readOnly) throw urlReadOnly(name);
  const store = storeFor(name, opts);
  const level = { location: name, name: isUrl(name) ? redactUrl(name) : name, depth: 0, visited: new Set<string>() };
  const source = await store.open(name, readOnly, null);
  try {
    level.visited.add(await store.identity(name, source));
  } catch (e) {
    await source.close();
    throw e;
  }
  return { source, vhdxParents: vhdxParentResolver(store, level, { parents: opts.parents }), vhdParents: vhdParentResolver(store, level, { parents: opts.parents }) };
}
