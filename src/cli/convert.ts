/**
 * `vhdx convert [-p] [-f raw|vhdx] [-O raw|vhdx] [-o OPTIONS] SRC DST`: copy a virtual disk into
 * a new raw file or a new VHDX image, sparsely (zero and unallocated ranges are not written).
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { unlink } from '../io/fs-async.js';
import { availableParallelism } from 'node:os';
import { createOpenFile, openFile, type ParentPaths } from '../node-files.js';
import { NodeFileSource } from '../io/node-file.js';
import { VhdxImage } from '../driver/image.js';
import { probe } from '../driver/open.js';
import { RawDevice } from '../device/raw.js';
import { copyDevice, deviceSink, fileSink } from '../device/copy.js';
import type { BlockDevice } from '../device/block-device.js';
import { readExact } from '../io/source.js';
import { parentPaths, parse, UsageError, type Io } from './common.js';
import { parseCreateOptions, type CreateOptionValues } from './create.js';
import type { Progress } from './progress.js';

// Requests in flight: one per CPU (at least 2). On 2 cores, 2 beat 4 and 8 in both directions
// (tmpfs, 2 GiB: vhdx->raw 476 ms against 535-616 ms; raw->vhdx 593 ms against 659-679 ms).
const COPY_PARALLEL = Math.max(2, availableParallelism());

export { CONVERT_USAGE } from './usage.js';
import { CONVERT_USAGE } from './usage.js';

type Format = 'raw' | 'vhdx';

function format(value: unknown, what: string): Format | undefined {
  if (value === undefined) return undefined;
  if (value !== 'raw' && value !== 'vhdx') throw new UsageError(`${what} format ${String(value)} is not supported (raw or vhdx)`);
  return value;
}

export async function convertCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      progress: { type: 'boolean', short: 'p' },
      'source-format': { type: 'string', short: 'f' },
      'output-format': { type: 'string', short: 'O' },
      options: { type: 'string', short: 'o', multiple: true },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
    },
    CONVERT_USAGE,
  );
  if (positionals.length !== 2) throw new UsageError(`expected SRC and DST\nusage: ${CONVERT_USAGE}`);
  const inFmt = format(values['source-format'], 'source');
  const outFmt = format(values['output-format'], 'output') ?? 'raw';
  const specs = (values.options as string[] | undefined) ?? [];
  if (specs.length > 0 && outFmt !== 'vhdx') throw new UsageError('-o options apply to -O vhdx only');
  const createOpts = parseCreateOptions(specs);
  const [srcPath, dstPath] = positionals as [string, string];
  refuseSameFile(srcPath, dstPath);

  const src = await openSource(srcPath, inFmt, parentPaths(values.parents), values['force-share'] === true);
  // The progress bar's package loads only when asked for.
  const progress = values.progress === true ? (await import('./progress.js')).progressBar : null;
  try {
    if (outFmt === 'raw') await toRaw(src, dstPath, progress, signal);
    else await toVhdx(src, dstPath, createOpts, progress, signal);
  } finally {
    await src.close();
  }
  void io;
  return 0;
}

/**
 * Converting a file onto itself would destroy it before it is read. The start-up checks are
 * synchronous: a stat or an 8-byte read takes microseconds, a round trip through the thread
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

/**
 * The format SRC's first bytes show (the VHDX file identifier, else raw), or undefined when they
 * cannot be read here; the open that follows then reports why.
 */
function probeFile(path: string): Format | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const head = new Uint8Array(8);
    const n = readSync(fd, head, 0, head.length, 0);
    return probe(head.subarray(0, n)) > 0 ? 'vhdx' : 'raw';
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Open SRC as the format given, or as the format its first bytes show (VHDX identifier, else raw). */
async function openSource(path: string, fmt: Format | undefined, parents: ParentPaths, forceShare: boolean): Promise<BlockDevice> {
  let kind = fmt ?? probeFile(path);
  // A VHDX opens by path, so that a differencing image finds its parents (a chain is flattened).
  if (kind === 'vhdx') return openFile(path, { parents, forceShare });
  const file = await NodeFileSource.open(path, { forceShare });
  try {
    if (kind === undefined) {
      const head = new Uint8Array(Math.min(8, file.size));
      await readExact(file, 0, head, 'file identifier');
      kind = probe(head) > 0 ? 'vhdx' : 'raw';
    }
    if (kind === 'raw') return new RawDevice(file);
  } catch (e) {
    await file.close();
    throw e;
  }
  await file.close();
  return openFile(path, { parents, forceShare });
}

type BarFactory = ((enabled: boolean, label: string) => Progress) | null;

async function toRaw(src: BlockDevice, dstPath: string, progress: BarFactory, signal: AbortSignal): Promise<void> {
  const bar = progress?.(true, 'converting');
  const dst = await NodeFileSource.open(dstPath, { readOnly: false, create: true, truncate: true });
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
async function toVhdx(src: BlockDevice, dstPath: string, opts: CreateOptionValues, progress: BarFactory, signal: AbortSignal): Promise<void> {
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
