/**
 * `vhdx create` as a library call: check the options, plan the layout (layout.ts) and write the
 * new image into a source. Browser-safe: I/O only through the RandomAccessSource given. The Node
 * entry adds `createFile`, which makes the file exclusively and removes it when anything fails.
 */
import { VhdxError } from '../errors.js';
import { MiB } from '../format/constants.js';
import { isGuid } from '../codec/guid.js';
import type { ProgressOptions } from '../device/block-device.js';
import type { RandomAccessSource } from '../io/source.js';
import { planLayout, randomIdentity, writeNewImage, type ImageIdentity, type ImagePlan } from './layout.js';
import type { ParentLocator } from '../format/parent-locator.js';

/** How a new image stores its blocks; see {@link CreateOptions.subformat}. */
export type Subformat = 'dynamic' | 'fixed';

/** Options of {@link createImage}. Only `size` is required. */
export interface CreateOptions extends ProgressOptions {
  /** Virtual disk size in bytes: a positive multiple of the logical sector size, at most 64 TiB. */
  size: number;
  /**
   * `dynamic` (the default): blocks are allocated on first write, the file starts small.
   * `fixed`: every block is allocated now and the whole file written with zeros, so it takes
   * its full size on disk (progress is reported for that pass, and `signal` can cancel it).
   */
  subformat?: Subformat;
  /** Payload block size: a power of two from 1 MiB to 256 MiB (default 32 MiB, as Hyper-V). */
  blockSize?: number;
  /** Log size: a non-zero multiple of 1 MiB (default 1 MiB). */
  logSize?: number;
  /** 512 (the default) or 4096. Programs see this sector size; QEMU opens only 512. */
  logicalSectorSize?: 512 | 4096;
  /** 512 or 4096 (the default), not smaller than the logical sector size. */
  physicalSectorSize?: 512 | 4096;
  /**
   * The file identifier's creator text (diagnostic only; at most 256 UTF-16 code units).
   * Default `vhdx`; the Node entry's `createFile` adds the package version.
   */
  creator?: string;
  /** GUIDs to use instead of random ones (for reproducible images). */
  identity?: Partial<ImageIdentity>;
  /**
   * Make a differencing disk with this parent locator (subformat dynamic only; the size and
   * logical sector size must be the parent's). `createFile` with `parent` builds it from a path.
   */
  parentLocator?: ParentLocator;
}

/** What {@link createImage} made. */
export interface CreateResult {
  /** Where every structure went. @internal */
  plan: ImagePlan;
  /** The GUIDs written. */
  identity: ImageIdentity;
}

/** Block size of a new image when none is given: 32 MiB, as Hyper-V. */
export const DEFAULT_BLOCK_SIZE = 32 * MiB;
/** Hyper-V's block size for differencing disks: small blocks keep copy-on-write cheap. */
export const DEFAULT_DIFFERENCING_BLOCK_SIZE = 2 * MiB;
/** Log size of a new image when none is given: 1 MiB. */
export const DEFAULT_LOG_SIZE = MiB;
export const DEFAULT_CREATOR = 'vhdx';
/** Longest creator text the file identifier holds (512 bytes of UTF-16). */
export const MAX_CREATOR_LENGTH = 256;

function bad(message: string): VhdxError {
  return new VhdxError('EINVAL', 'BAD_ARGUMENT', message);
}

/**
 * Check create options and plan the image, without any I/O. Throws VhdxError EINVAL /
 * BAD_ARGUMENT with a message naming the option for anything the format cannot hold (the
 * geometry rules are the format's, checked by planLayout).
 */
export function planCreate(opts: CreateOptions): ImagePlan {
  const {
    size,
    subformat = 'dynamic',
    blockSize = opts.parentLocator ? DEFAULT_DIFFERENCING_BLOCK_SIZE : DEFAULT_BLOCK_SIZE,
    logSize = DEFAULT_LOG_SIZE,
    logicalSectorSize = 512,
    physicalSectorSize = 4096,
    creator = DEFAULT_CREATOR,
  } = opts;
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw bad(`subformat ${String(subformat)} is not dynamic or fixed`);
  if (opts.parentLocator && subformat !== 'dynamic') throw bad('a differencing disk cannot be fixed');
  if (typeof creator !== 'string' || creator.length > MAX_CREATOR_LENGTH) {
    throw bad(`creator text is longer than ${MAX_CREATOR_LENGTH} UTF-16 code units`);
  }
  return planLayout({
    virtualSize: size,
    blockSize,
    logSize,
    logicalSectorSize,
    physicalSectorSize,
    fixed: subformat === 'fixed',
    creator,
    ...(opts.parentLocator ? { parentLocator: opts.parentLocator } : {}),
  });
}

/**
 * Create a new image in `source` (writable and truncatable; its previous content is discarded).
 * Options are checked before anything is written. A fixed disk's payload is written with zeros
 * (progress through `onProgress`, cancellable through `signal`: ECANCELED / ABORTED). The source
 * is flushed, not closed. Open the result with `VhdxImage.open(source, { readOnly: false })`.
 */
export async function createImage(source: RandomAccessSource, opts: CreateOptions): Promise<CreateResult> {
  const plan = planCreate(opts);
  const random = randomIdentity();
  const identity: ImageIdentity = {
    fileWriteGuid: opts.identity?.fileWriteGuid ?? random.fileWriteGuid,
    dataWriteGuid: opts.identity?.dataWriteGuid ?? random.dataWriteGuid,
    diskId: opts.identity?.diskId ?? random.diskId,
  };
  for (const [k, v] of Object.entries(identity)) if (!isGuid(v)) throw bad(`identity.${k} ${JSON.stringify(v)} is not a GUID`);
  const writeOpts: Parameters<typeof writeNewImage>[3] = { allocate: true };
  if (opts.onProgress) writeOpts.onProgress = opts.onProgress;
  if (opts.signal) writeOpts.signal = opts.signal;
  await writeNewImage(source, plan, identity, writeOpts);
  return { plan, identity };
}
