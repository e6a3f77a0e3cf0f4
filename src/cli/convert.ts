/**
 * `vhdx convert [-p] [-f raw|vhdx] [-O raw|vhdx|vpc] [-o OPTIONS] [-t CACHE] [-T CACHE] SRC DST`: copy a virtual disk into
 * a new raw file, VHDX image or VHD image, sparsely (zero and unallocated ranges are not written).
 */
import { statSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { createOpenFile } from '../device/create-file.js';
import { CACHE_MODES, NodeFileSource, type CacheMode } from '../io/node-file.js';
import { VhdxImage } from '../driver/image.js';
import { copyDevice, deviceSink, fileSink } from '../device/copy.js';
import type { BlockDevice, WritableBlockDevice } from '../device/block-device.js';
import { isUrl } from '../device/parents.js';
import { namedError, naming, parentPaths, parse, requireDirectory, UsageError, type Io } from './common.js';
import { createVhdFile, parseCreateOptions, parseVhdOptions, vhdCreateOptions, type CreateOptionValues, type VhdOptionValues } from './create.js';
import { formatOption, newHttpStats, openImage, READ_FORMATS, refuseUrl, reportHttp } from './image-format.js';
import type { Progress } from './progress.js';

// Requests in flight: one per CPU (at least 2). On 2 cores, 2 beat 4 and 8 in both directions
// (tmpfs, 2 GiB: vhdx->raw 476 ms against 535-616 ms; raw->vhdx 593 ms against 659-679 ms).
const COPY_PARALLEL = Math.max(2, availableParallelism());

export { CONVERT_USAGE } from './usage.js';
import { CONVERT_USAGE } from './usage.js';

export async function convertCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      progress: { type: 'boolean', short: 'p' },
      'source-format': { type: 'string', short: 'f' },
      'output-format': { type: 'string', short: 'O' },
      options: { type: 'string', short: 'o', multiple: true },
      cache: { type: 'string', short: 't' },
      'source-cache': { type: 'string', short: 'T' },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
      verbose: { type: 'boolean', short: 'v' },
    },
    CONVERT_USAGE,
  );
  // As qemu-img convert: the new file is written with cache mode unsafe (no flush: a conversion
  // a crash interrupts is done again, as a copy is), the source read through the page cache.
  const dstCache = cacheMode(values.cache, '-t') ?? 'unsafe';
  const srcCache = cacheMode(values['source-cache'], '-T') ?? 'writeback';
  if (positionals.length !== 2) throw new UsageError(`expected SRC and DST\nusage: ${CONVERT_USAGE}`);
  const inFmt = formatOption(values['source-format'], 'source', READ_FORMATS);
  const outFmt = formatOption(values['output-format'], 'output', ['raw', 'vhdx', 'vpc']) ?? 'raw';
  const specs = (values.options as string[] | undefined) ?? [];
  if (specs.length > 0 && outFmt === 'raw') throw new UsageError('-o options apply to -O vhdx and -O vpc only');
  const createOpts = outFmt === 'vhdx' ? parseCreateOptions(specs) : {};
  const vhdOpts = outFmt === 'vpc' ? parseVhdOptions(specs, true) : {};
  const [srcPath, dstPath] = positionals as [string, string];
  refuseUrl(dstPath);
  refuseSameFile(srcPath, dstPath);
  requireDirectory(dstPath, 'output');

  const stats = isUrl(srcPath) ? newHttpStats() : null;
  const src = await naming(srcPath, () =>
    openImage(srcPath, inFmt, { parents: parentPaths(values.parents), cache: srcCache, forceShare: values['force-share'] === true, ...(stats ? { http: { stats } } : {}) }, io),
  );
  // The progress bar's package loads only when asked for.
  const progress = values.progress === true ? (await import('./progress.js')).progressBar : null;
  try {
    if (outFmt === 'raw') await toRaw(src, dstPath, dstCache, progress, signal);
    else if (outFmt === 'vpc') await toVhd(src, dstPath, vhdOpts, dstCache, progress, signal);
    else await toVhdx(src, dstPath, { ...createOpts, cache: dstCache }, progress, signal);
  } catch (e) {
    // Errors of the files name them; anything else is said to be about the conversion.
    throw e instanceof Error && !e.message.includes(srcPath) && !e.message.includes(dstPath) ? namedError(`converting ${srcPath} to ${dstPath}`, e) : e;
  } finally {
    await src.close();
  }
  reportHttp(stats, values.verbose === true, io);
  return 0;
}

/**
 * Converting a file onto itself would destroy it before it is read. The start-up checks are
 * synchronous: a stat takes microseconds, a round trip through the thread
 * pool far longer, and a CLI command has nothing else to do meanwhile.
 */
function refuseSameFile(srcPath: string, dstPath: string): void {
  const a = statOrNull(srcPath);
  const b = a && statOrNull(dstPath);
  if (a && b && a.dev === b.dev && a.ino === b.ino) throw new UsageError(`SRC and DST are the same file (${dstPath})`);
}

function statOrNull(path: string): { dev: number; ino: number } | null {
  try {
    return statSync(path, { throwIfNoEntry: false }) ?? null;
  } catch {
    return null;
  }
}

function cacheMode(value: unknown, flag: string): CacheMode | undefined {
  if (value === undefined) return undefined;
  if (!(CACHE_MODES as readonly unknown[]).includes(value)) throw new UsageError(`${flag}: unknown cache mode ${String(value)} (${CACHE_MODES.join(', ')})`);
  return value as CacheMode;
}

type BarFactory = ((enabled: boolean, label: string) => Progress) | null;

async function toRaw(src: BlockDevice, dstPath: string, cache: CacheMode, progress: BarFactory, signal: AbortSignal): Promise<void> {
  const bar = progress?.(true, 'converting');
  const dst = await NodeFileSource.open(dstPath, { readOnly: false, create: true, truncate: true, cache });
  let failed = true;
  try {
    await copyDevice(src, fileSink(dst), { signal, parallel: COPY_PARALLEL, ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}) });
    await dst.close();
    failed = false;
  } finally {
    bar?.stop();
    if (failed) {
      await dst.close().catch(() => undefined);
      await unlink(dstPath).catch(() => undefined);
    }
  }
}

/**
 * Create DST (replacing a file there) sized to the source rounded up to the logical sector size,
 * with the source's sector sizes unless -o says otherwise, then copy into it (the new image stays
 * open: one file handle, one lock). DST is removed if the conversion fails.
 */
async function toVhdx(src: BlockDevice, dstPath: string, opts: CreateOptionValues & { cache: CacheMode }, progress: BarFactory, signal: AbortSignal): Promise<void> {
  const srcLogical = src.logicalSectorSize === 4096 ? 4096 : 512;
  const srcPhysical = src instanceof VhdxImage && src.physicalSectorSize === 512 ? 512 : 4096;
  const logicalSectorSize = opts.logicalSectorSize ?? srcLogical;
  const physicalSectorSize = opts.physicalSectorSize ?? (srcPhysical >= logicalSectorSize ? srcPhysical : 4096);
  if (src.size === 0) throw new UsageError('the source is empty: a VHDX disk cannot have size 0');
  const size = Math.ceil(src.size / logicalSectorSize) * logicalSectorSize;
  const allocBar = opts.subformat === 'fixed' ? progress?.(true, 'allocating') : undefined;
  let dst: VhdxImage;
  try {
    dst = await createOpenFile(dstPath, {
      ...opts,
      logicalSectorSize,
      physicalSectorSize,
      size,
      overwrite: true,
      signal,
      ...(allocBar ? { onProgress: (d: number, t: number) => allocBar.update(d, t) } : {}),
    });
  } finally {
    allocBar?.stop();
  }
  await copyInto(src, dst, dstPath, progress, signal);
}

/**
 * Create DST as a VHD (replacing a file there; `-o` as for create -f vpc, or azure) sized to the
 * source rounded up to 512 bytes (azure: checked or rounded to a whole MiB), then copy into it.
 * A fixed VHD's data is a sparse file, so the source's holes stay holes in either type.
 */
async function toVhd(src: BlockDevice, dstPath: string, opts: VhdOptionValues, cache: CacheMode, progress: BarFactory, signal: AbortSignal): Promise<void> {
  if (src.size === 0) throw new UsageError('the source is empty: a VHD disk cannot have size 0');
  // Azure's refusal names the source's own size.
  const create = vhdCreateOptions(opts, opts.azure !== undefined ? src.size : Math.ceil(src.size / 512) * 512);
  const dst = await createVhdFile(dstPath, { ...create, overwrite: true, cache });
  await copyInto(src, dst, dstPath, progress, signal);
}

/** Copy `src` into the new image `dst`, then close it; DST is removed if either fails. */
async function copyInto(src: BlockDevice, dst: WritableBlockDevice & { close(): Promise<void> }, dstPath: string, progress: BarFactory, signal: AbortSignal): Promise<void> {
  let failed = true;
  try {
    const bar = progress?.(true, 'converting');
    let copyError: unknown = null;
    try {
      await copyDevice(src, deviceSink(dst), { signal, parallel: COPY_PARALLEL, ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}) });
    } catch (e) {
      copyError = e;
    } finally {
      bar?.stop();
    }
    // Close commits (and closes the file); its error matters only when the copy itself succeeded.
    await dst.close().catch((e: unknown) => {
      copyError ??= e;
    });
    if (copyError !== null) throw copyError;
    failed = false;
  } finally {
    if (failed) {
      await dst.close().catch(() => undefined);
      await unlink(dstPath).catch(() => undefined);
    }
  }
}
