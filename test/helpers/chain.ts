// Differencing chains in memory for the driver tests: a dynamic parent with known content, a
// child made over it (the locator built as locatorFor builds it), and the checks a chain must
// pass (block status tiling the disk, each extent's depth, the child's own sectors).
import { FaultySource } from '../../src/io/faulty.js';
import { VhdxImage, type OpenOptions } from '../../src/driver/image.js';
import { createImage } from '../../src/driver/create.js';
import { planLayout, writeNewImage } from '../../src/driver/layout.js';
import type { RandomAccessSource } from '../../src/io/source.js';
import type { Extent } from '../../src/device/block-device.js';
import type { ParentLocator } from '../../src/format/parent-locator.js';
import { SparseModel, bytesEqual, noisePayloads } from './model.js';

const MiB = 1024 * 1024;
export const LOCATOR_TYPE_VHDX = 'b04aefb7-d19e-4a81-b789-25b8e9445913';

/** Write payloads: slices of one seeded random buffer (never all zeros over a sector). */
export const payload = noisePayloads(0x2545f491);

interface LocatorEntries {
  relative?: string | null;
  absolute?: string | null;
  linkage?: string;
  extra?: ParentLocator['entries'];
}

/**
 * The locator a child needs to find `parent` (as locatorFor builds it), with `extra` entries;
 * without a parent, the linkage must be given.
 */
export function locatorOf(parent: VhdxImage, entries?: LocatorEntries): ParentLocator;
export function locatorOf(parent: null, entries: LocatorEntries & { linkage: string }): ParentLocator;
export function locatorOf(
  parent: VhdxImage | null,
  {
    relative = '.\\parent.vhdx',
    absolute = '/nowhere/parent.vhdx',
    linkage,
    extra = [],
  }: LocatorEntries = {},
): ParentLocator {
  return {
    locatorType: LOCATOR_TYPE_VHDX,
    entries: [
      { key: 'parent_linkage', value: `{${linkage ?? parent?.header.dataWriteGuid}}` },
      ...extra,
      ...(relative ? [{ key: 'relative_path', value: relative }] : []),
      ...(absolute ? [{ key: 'absolute_win32_path', value: absolute }] : []),
    ],
  };
}

/**
 * A dynamic image in a FaultySource without a write cache (a plain sparse memory disk) holding
 * `fill`: a list of { kind: 'data' | 'zero', offset, length } applied in order. Returns the
 * source and a model of its content.
 */
export type Fill = { kind: 'data'; offset: number; length: number; data?: Uint8Array } | { kind: 'zero'; offset: number; length: number };

export async function makeBase({
  size,
  sector = 512,
  blockSize = MiB,
  fill = [],
}: {
  size: number;
  sector?: 512 | 4096;
  blockSize?: number;
  fill?: readonly Fill[];
}): Promise<{ src: FaultySource; model: SparseModel }> {
  const src = new FaultySource(new Uint8Array(0), { writeCache: false });
  await writeNewImage(src, planLayout({ virtualSize: size, blockSize, logicalSectorSize: sector }));
  const model = new SparseModel();
  if (fill.length) {
    const img = await VhdxImage.open(src, { readOnly: false });
    let n = 1000;
    for (const f of fill) {
      if (f.kind === 'data') {
        const d = f.data ?? payload(++n, f.length);
        await img.write(f.offset, d);
        model.write(f.offset, d);
      } else {
        await img.writeZeroes(f.offset, f.length);
        model.zero(f.offset, f.length);
      }
    }
    await img.close();
  }
  return { src, model };
}

/**
 * Make a differencing image over the image `parent` (opened), in a fresh sparse memory source
 * (or `src`), with `blockSize`; the locator's linkage is the parent's DataWriteGuid.
 */
export interface ChildOptions {
  blockSize?: number;
  locator?: ParentLocator;
}
/** What makeChild needs of the parent: an open image, or its geometry alone when `locator` is given. */
export type ChildParent = Pick<VhdxImage, 'size' | 'logicalSectorSize'> & { header?: Pick<VhdxImage['header'], 'dataWriteGuid'> };
export async function makeChild(parent: ChildParent, opts?: ChildOptions): Promise<FaultySource>;
export async function makeChild<S extends RandomAccessSource>(parent: ChildParent, opts: ChildOptions & { src: S }): Promise<S>;
export async function makeChild(
  parent: ChildParent,
  { blockSize = 2 * MiB, src, locator }: ChildOptions & { src?: RandomAccessSource } = {},
): Promise<RandomAccessSource> {
  const child = src ?? new FaultySource(new Uint8Array(0), { writeCache: false });
  const sector = parent.logicalSectorSize;
  if (sector !== 512 && sector !== 4096) throw new Error(`parent has ${sector}-byte sectors`);
  let parentLocator = locator;
  if (!parentLocator) {
    if (!parent.header) throw new Error('makeChild: a parent that is not an open image needs the locator given');
    parentLocator = locatorOf(null, { linkage: parent.header.dataWriteGuid });
  }
  await createImage(child, {
    size: parent.size,
    logicalSectorSize: sector,
    blockSize,
    parentLocator,
  });
  return child;
}

/**
 * Open a chain of sources, child first: chain[0] with chain[1] as its parent, and so on; the
 * last has no parent. `writable`: which indexes open writable (default: the first only).
 */
export async function openChain(
  chain: readonly RandomAccessSource[],
  { writable = [0], ...opts }: { writable?: readonly number[] } & OpenOptions = {},
): Promise<VhdxImage> {
  const openAt = (i: number): Promise<VhdxImage> =>
    VhdxImage.open(chain[i]!, {
      ...opts,
      readOnly: !writable.includes(i),
      name: `image ${i}`,
      depth: i,
      ...(i + 1 < chain.length ? { parent: () => openAt(i + 1) } : {}),
    });
  return openAt(0);
}

/** Whole-disk read in 1 MiB steps compared with `model`; a message or null. */
export async function compareWith(
  img: VhdxImage,
  model: SparseModel,
  offset = 0,
  length = img.size,
  bufs = { got: new Uint8Array(MiB), want: new Uint8Array(MiB) },
): Promise<string | null> {
  for (let at = offset; at < offset + length; at += MiB) {
    const n = Math.min(MiB, offset + length - at);
    const got = bufs.got.subarray(0, n);
    const want = bufs.want.subarray(0, n);
    await img.read(at, got);
    model.read(at, want);
    if (!bytesEqual(got, want)) {
      let i = 0;
      while (got[i] === want[i]) i++;
      return `byte ${at + i} reads ${got[i]}, the model has ${want[i]}`;
    }
  }
  return null;
}

/**
 * Check that `extents` tile [offset, offset + length) in order, without gaps or overlaps; a
 * message or null. The last extent may end past the range (BlockDevice.blockStatus allows it),
 * but not past `size` when given.
 */
export function tiles(extents: readonly Pick<Extent, 'offset' | 'length'>[], offset: number, length: number, size = offset + length): string | null {
  let at = offset;
  for (const x of extents) {
    if (at >= offset + length) return `extent at ${x.offset} after the range's end`;
    if (x.offset !== at) return `extent at ${x.offset} where ${at} was expected`;
    if (!(x.length > 0)) return `extent at ${x.offset} of length ${x.length}`;
    at += x.length;
  }
  if (at < offset + length) return `extents end at ${at}, before ${offset + length}`;
  return at <= size ? null : `extents end at ${at}, past ${size}`;
}

/** A set of logical sectors as a byte per sector (1: in the set). */
export class SectorSet {
  readonly sector: number;
  readonly bits: Uint8Array;
  constructor(size: number, sector: number) {
    this.sector = sector;
    this.bits = new Uint8Array(Math.ceil(size / sector));
  }
  /** Add the sectors [offset, offset + length) touches. */
  addRange(offset: number, length: number): void {
    if (length > 0) this.bits.fill(1, Math.floor(offset / this.sector), Math.ceil((offset + length) / this.sector));
  }
  /** Runs of [offset, length, inSet] covering the disk. */
  runs(): [number, number, boolean][] {
    const out: [number, number, boolean][] = [];
    for (let i = 0; i < this.bits.length; ) {
      let j = i + 1;
      while (j < this.bits.length && this.bits[j] === this.bits[i]) j++;
      out.push([i * this.sector, (j - i) * this.sector, this.bits[i] === 1]);
      i = j;
    }
    return out;
  }
}

/** The sectors extents at `depth` cover, as a SectorSet (extents are sector aligned). */
export function sectorsAtDepth(extents: readonly Extent[], size: number, sector: number, depth: number): SectorSet {
  const s = new SectorSet(size, sector);
  for (const x of extents) if ((x.depth ?? 0) === depth) s.addRange(x.offset, x.length);
  return s;
}

/** First sector where two SectorSets differ, or -1. */
export function firstDifferentSector(a: SectorSet, b: SectorSet): number {
  for (let i = 0; i < a.bits.length; i++) if (a.bits[i] !== b.bits[i]) return i;
  return -1;
}

/**
 * Compare a large, mostly empty disk with `model` without reading all of it: data extents are
 * read and compared; every other extent must be zeros in the model. A message or null.
 */
export async function compareSparse(img: VhdxImage, model: SparseModel): Promise<string | null> {
  const extents = await img.blockStatus(0, img.size);
  for (const x of extents) {
    if (x.type === 'data') {
      const m = await compareWith(img, model, x.offset, Math.min(x.length, img.size - x.offset));
      if (m) return m;
    }
  }
  // Every non-zero page of the model must lie in data extents (or hold zeros where it does not).
  const PAGE = 16 * 1024;
  for (const p of model.pages.keys()) {
    const from = p * PAGE;
    for (const x of extents) {
      if (x.type === 'data' || x.offset + x.length <= from || x.offset >= from + PAGE) continue;
      const a = Math.max(from, x.offset);
      const view = model.view(a, Math.min(from + PAGE, x.offset + x.length) - a);
      const i = view.findIndex((b) => b !== 0);
      if (i >= 0) return `byte ${a + i} is ${view[i]} in the model but lies in a ${x.type} extent at ${x.offset} (depth ${x.depth})`;
    }
  }
  return null;
}
