/**
 * The page's worker: opens the image (dropped files or a URL), describes it, draws up the
 * allocation map and saves the disk or a partition. Everything that reads the image runs here, so
 * the page stays responsive on any disk size; memory is bounded by the library's caches, the map's
 * cell count and the copy's chunks, never by the disk's size.
 */
import {
  BlobSource,
  VhdxImage,
  VhdxError,
  copyDevice,
  describe,
  describeContents,
  isVhdxError,
  locatorValue,
  openUrl,
  type BlockDevice,
  type ContentsInfo,
  type CopySink,
  type HttpStats,
  type ParentResolver,
} from '../src/index.js';
import { PARENT_PATH_KEYS } from '../src/driver/image.js';
import { CELL_DATA, CELL_UNALLOCATED, CELL_ZERO, MAX_DEPTH_SHOWN, type ChainLevel, type Reply, type Request } from './protocol.js';

interface WorkerScope {
  postMessage(message: Reply, transfer?: Transferable[]): void;
  onmessage: ((ev: MessageEvent<Request>) => void) | null;
}
const scope = self as unknown as WorkerScope;

let image: VhdxImage | null = null;
let contents: ContentsInfo | null = null;
let stats: HttpStats | null = null;
/** Bumped by each map request: a map in progress stops when it is no longer the latest. */
let mapGeneration = 0;
let saving: AbortController | null = null;

const post = (m: Reply, transfer: Transferable[] = []): void => scope.postMessage(m, transfer);

function failed(op: string, e: unknown): void {
  post({ type: 'error', op, message: e instanceof Error ? e.message : String(e), reason: isVhdxError(e) ? e.reason : null });
}

function postStats(): void {
  if (stats) post({ type: 'stats', stats: { ...stats } });
}

scope.onmessage = (ev) => {
  const req = ev.data;
  const run = async (): Promise<void> => {
    switch (req.op) {
      case 'open-files':
        return openDropped(req.files);
      case 'open-url':
        return openFromUrl(req.url, req.authorization);
      case 'map':
        return allocationMap(req.from, req.to, req.cells);
      case 'save':
        return save(req.partition, req.handle);
      case 'cancel-save':
        saving?.abort();
        return;
    }
  };
  run().catch((e) => failed(req.op, e));
};

async function replaceImage(open: () => Promise<VhdxImage>): Promise<VhdxImage> {
  mapGeneration++;
  saving?.abort();
  const old = image;
  image = null;
  contents = null;
  await old?.close();
  image = await open();
  return image;
}

/** The last element of a Windows or POSIX path. */
function baseName(p: string): string {
  return p.split(/[\\/]/).pop() ?? p;
}

/** The file names a differencing image's locator points at. */
function locatorNames(img: VhdxImage): string[] {
  const loc = img.layout.parentLocator;
  if (!loc) return [];
  return PARENT_PATH_KEYS.map((k) => locatorValue(loc, k)).filter((v): v is string => v !== undefined).map((v) => baseName(v).toLowerCase());
}

/** Parents among the dropped files, by the name their child's locator gives them. */
function droppedResolver(files: File[], used: Set<File>): ParentResolver {
  return async ({ locator, depth }) => {
    const names = PARENT_PATH_KEYS.map((k) => locatorValue(locator, k)).filter((v): v is string => v !== undefined).map((v) => baseName(v).toLowerCase());
    const file = files.find((f) => !used.has(f) && names.includes(f.name.toLowerCase()));
    if (!file) {
      throw new VhdxError('ENOENT', 'PARENT_NOT_FOUND', `its parent ${names[0] ?? '(unnamed)'} is not among the dropped files: drop the child together with its parents`);
    }
    used.add(file);
    return VhdxImage.open(new BlobSource(file), { depth, name: file.name, parent: droppedResolver(files, used) });
  };
}

/**
 * Open what was dropped: the file no other dropped file names as its parent (a child with its
 * parents), its chain from the others. A chain that cannot be completed is opened alone, and the
 * page says why.
 */
async function openDropped(files: File[]): Promise<void> {
  if (files.length === 0) return;
  stats = null;
  const named = new Set<string>();
  for (const f of files) {
    const img = await VhdxImage.open(new BlobSource(f), { name: f.name }).catch(() => null);
    if (img) {
      for (const n of locatorNames(img)) named.add(n);
      await img.close();
    }
  }
  const top = files.find((f) => !named.has(f.name.toLowerCase())) ?? files[0]!;
  let chainError: string | null = null;
  const img = await replaceImage(async () => {
    try {
      return await VhdxImage.open(new BlobSource(top), { name: top.name, parent: droppedResolver(files, new Set([top])) });
    } catch (e) {
      if (!isVhdxError(e) || !['PARENT_NOT_FOUND', 'PARENT_MISMATCH', 'PARENT_LOOP', 'CHAIN_TOO_DEEP'].includes(e.reason)) throw e;
      chainError = e.message;
      return VhdxImage.open(new BlobSource(top), { name: top.name });
    }
  });
  await opened(img, top.name, chainError);
}

async function openFromUrl(url: string, authorization: string | undefined): Promise<void> {
  stats = { requests: 0, bytesReceived: 0, retries: 0 };
  const s = stats;
  const headers = authorization ? { Authorization: authorization } : undefined;
  let chainError: string | null = null;
  const img = await replaceImage(async () => {
    try {
      return await openUrl(url, { http: { stats: s, ...(headers ? { headers } : {}) } });
    } catch (e) {
      if (!isVhdxError(e) || !['PARENT_NOT_FOUND', 'PARENT_MISMATCH', 'PARENT_LOOP', 'PARENT_NOT_ALLOWED', 'CHAIN_TOO_DEEP'].includes(e.reason)) throw e;
      chainError = e.message;
      return openUrl(url, { parents: 'none', http: { stats: s, ...(headers ? { headers } : {}) } });
    }
  });
  await opened(img, img.name ?? url, chainError);
}

/** Describe the image and its chain, then what is inside the disk. */
async function opened(img: VhdxImage, name: string, chainError: string | null): Promise<void> {
  const chain: ChainLevel[] = [];
  for (const level of img.chain) chain.push({ name: level.name ?? name, info: await describe(level, { allocation: 'auto' }) });
  post({ type: 'opened', name, chain, chainError });
  postStats();
  const info = chain[0]!.info;
  try {
    contents = await describeContents(img, { blockSize: info.blockSize, scanZeros: false });
    if (img !== image) return;
    post({ type: 'contents', contents, error: null });
  } catch (e) {
    if (img !== image) return;
    post({ type: 'contents', contents: null, error: e instanceof Error ? e.message : String(e) });
  }
  postStats();
}

const MIN_CELL = 4096;
/** Block status is asked for this much at a time while drawing the map. */
const MAP_WINDOW = 1024 * 1024 * 1024;

/**
 * The allocation map of [from, to) in `cells` equal cells: per cell, the class that holds most of
 * its data (or zero, or unallocated) and the share that is data. Sent as it fills in, window by
 * window; a newer request (a zoom) stops it.
 */
async function allocationMap(from: number, to: number, cells: number): Promise<void> {
  const img = image;
  if (!img) return;
  const gen = ++mapGeneration;
  const lo = Math.max(0, Math.min(from, img.size));
  const hi = Math.max(lo, Math.min(to, img.size));
  // Cells of at least MIN_CELL bytes: a small disk gets fewer cells, not cells finer than a page.
  const n = Math.max(1, Math.min(Math.floor(cells), 1 << 16, Math.ceil((hi - lo) / MIN_CELL)));
  const cellBytes = Math.ceil((hi - lo) / n);
  const kinds = CELL_DATA + MAX_DEPTH_SHOWN + 1;
  const bytes = new Float64Array(n * kinds);
  const send = (done: number, complete: boolean): void => {
    const classes = new Uint8Array(n);
    const fill = new Uint8Array(n);
    for (let c = 0; c < n; c++) {
      let best = CELL_UNALLOCATED;
      let data = 0;
      for (let k = CELL_DATA; k < kinds; k++) {
        data += bytes[c * kinds + k]!;
        if (bytes[c * kinds + k]! > (best >= CELL_DATA ? bytes[c * kinds + best]! : 0)) best = k;
      }
      if (best === CELL_UNALLOCATED && bytes[c * kinds + CELL_ZERO]! > 0) best = CELL_ZERO;
      classes[c] = best;
      const span = Math.min(cellBytes, hi - lo - c * cellBytes);
      fill[c] = best >= CELL_DATA ? Math.max(1, Math.round((255 * data) / span)) : 0;
    }
    post({ type: 'map', from: lo, to: hi, cellBytes, classes, fill, done, complete }, [classes.buffer, fill.buffer]);
  };
  let lastSent = Date.now();
  for (let w = lo; w < hi; ) {
    const extents = await img.blockStatus(w, Math.min(MAP_WINDOW, hi - w));
    if (gen !== mapGeneration || img !== image) return;
    let end = w;
    for (const x of extents) {
      const a = Math.max(x.offset, w);
      const b = Math.min(x.offset + x.length, hi);
      if (b <= a) continue;
      const kind = x.type === 'data' ? CELL_DATA + Math.min(x.depth ?? 0, MAX_DEPTH_SHOWN) : x.type === 'zero' ? CELL_ZERO : CELL_UNALLOCATED;
      for (let c = Math.floor((a - lo) / cellBytes); c * cellBytes + lo < b; c++) {
        const ca = Math.max(a, lo + c * cellBytes);
        const cb = Math.min(b, lo + (c + 1) * cellBytes);
        bytes[c * kinds + kind]! += cb - ca;
      }
      end = b;
    }
    if (end <= w) throw new VhdxError('EIO', 'IO_ERROR', `block status made no progress at ${w}`);
    w = end;
    if (Date.now() - lastSent > 150) {
      send(w - lo, false);
      postStats();
      lastSent = Date.now();
    }
  }
  send(hi - lo, true);
  postStats();
}

/** A read-only view of [start, start + length) of `dev` (a partition), as a device of its own. */
function slice(dev: BlockDevice, start: number, length: number): BlockDevice {
  return {
    size: length,
    logicalSectorSize: dev.logicalSectorSize,
    readOnly: true,
    can: { zero: false, fastZero: false, discard: false, extents: dev.can.extents, fua: false },
    read: (offset, into) => dev.read(start + offset, into),
    async blockStatus(offset, len) {
      const out = [];
      for (const x of await dev.blockStatus(start + offset, len)) {
        const a = Math.max(x.offset, start + offset);
        const b = Math.min(x.offset + x.length, start + length);
        if (b > a) out.push({ ...x, offset: a - start, length: b - a, ...(x.fileOffset !== undefined ? { fileOffset: x.fileOffset + (a - x.offset) } : {}) });
      }
      return out;
    },
    checkRequest: (kind, offset, len) => dev.checkRequest(kind, start + offset, Math.min(len, Math.max(0, length - offset))),
    flush: async () => {},
    close: async () => {},
  };
}

/** A sink writing at positions into a file the user picked (File System Access API). */
async function fileHandleSink(handle: FileSystemFileHandle): Promise<CopySink & { abort(): Promise<void> }> {
  const w = await handle.createWritable();
  // Writes on one writable stream go one at a time.
  let queue: Promise<void> = Promise.resolve();
  return {
    write(offset, data) {
      const p = queue.then(() => w.write({ type: 'write', position: offset, data: data as Uint8Array<ArrayBuffer> }));
      queue = p.catch(() => {});
      return p;
    },
    async finish(size) {
      await queue;
      await w.truncate(size);
      await w.close();
    },
    abort: () => w.abort().catch(() => {}),
  };
}

const ZERO_MIB = new Uint8Array(1024 * 1024);
/** Blobs of 2^k MiB of zeros, each made of two of the one before: a run of zeros costs no memory. */
const zeroBlobs: Blob[] = [];
function zeroBlob(n: number): Blob {
  const parts: Blob[] = [];
  let mibs = Math.floor(n / ZERO_MIB.length);
  for (let k = 0; mibs > 0; k++, mibs = Math.floor(mibs / 2)) {
    if (zeroBlobs[k] === undefined) zeroBlobs[k] = k === 0 ? new Blob([ZERO_MIB]) : new Blob([zeroBlobs[k - 1]!, zeroBlobs[k - 1]!]);
    if (mibs % 2 === 1) parts.push(zeroBlobs[k]!);
  }
  const rest = n % ZERO_MIB.length;
  if (rest > 0) parts.push(new Blob([ZERO_MIB.subarray(0, rest)]));
  return new Blob(parts);
}

/**
 * A sink assembling a Blob for a download, where the browser has no File System Access API. Writes
 * must come in order (the copy runs one request at a time); gaps are zeros. The browser keeps a
 * large Blob's parts on disk, and runs of zeros are shared blobs, so it is not held in memory.
 */
function blobSink(): CopySink & { blob: Blob | null } {
  const parts: Blob[] = [];
  let pos = 0;
  const sink = {
    blob: null as Blob | null,
    async write(offset: number, data: Uint8Array) {
      if (offset < pos) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `download writes out of order (${offset} after ${pos})`);
      if (offset > pos) parts.push(zeroBlob(offset - pos));
      parts.push(new Blob([data.slice()]));
      pos = offset + data.length;
    },
    async finish(size: number) {
      if (size > pos) parts.push(zeroBlob(size - pos));
      sink.blob = new Blob(parts, { type: 'application/octet-stream' });
    },
  };
  return sink;
}

async function save(partition: number | null, handle: FileSystemFileHandle | null): Promise<void> {
  const img = image;
  if (!img) return;
  let dev: BlockDevice = img;
  let name = `${(img.name ?? 'disk').split(/[\\/?#]/).filter(Boolean).pop() ?? 'disk'}`.replace(/\.a?vhdx$/i, '');
  if (partition !== null) {
    const p = contents?.partitions.find((x) => x.index === partition);
    if (!p) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `no partition ${partition}`);
    dev = slice(img, p.start, p.length);
    name += `-p${partition}`;
  }
  name += '.raw';
  saving?.abort();
  const ctrl = new AbortController();
  saving = ctrl;
  const onProgress = (done: number, total: number): void => post({ type: 'progress', what: `saving ${name}`, done, total });
  if (handle) {
    const sink = await fileHandleSink(handle);
    try {
      await copyDevice(dev, sink, { signal: ctrl.signal, onProgress });
    } catch (e) {
      await sink.abort();
      throw e;
    }
    post({ type: 'saved', name: handle.name, bytes: dev.size, blob: null });
  } else {
    const sink = blobSink();
    await copyDevice(dev, sink, { signal: ctrl.signal, onProgress, parallel: 1 });
    post({ type: 'saved', name, bytes: dev.size, blob: sink.blob });
  }
  if (saving === ctrl) saving = null;
  postStats();
}
