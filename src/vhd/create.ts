/**
 * Making a new VHD in a source: fixed, dynamic, or differencing (on an opened parent VHD).
 *
 * The footer's sizes: Current Size is the size asked for, exactly (a multiple of 512). The CHS
 * geometry is the specification's for that size when it describes the size exactly; otherwise
 * it is the maximum 65535 × 16 × 255, which qemu since 2.6 (2015), Hyper-V, libvhdi and 7-Zip all
 * read as "the disk is Current Size bytes". So every reader sees the size asked for, whatever it
 * thinks of the creator field. A creator every qemu already sizes by Current Size ("win ",
 * "qem2", as Azure-ready images use: see azure.ts) gets the specification's geometry at every
 * size, rounded down as Hyper-V and qemu's `force_size` write it. `roundToGeometry`
 * instead rounds the size up to the next CHS-exact one, as qemu does without `force_size`, for
 * Virtual PC, which only believes the geometry.
 *
 * Layout of a dynamic disk: the footer copy at 0, the dynamic header at 512, the BAT at 1536
 * (all entries unallocated, padded to a sector), the parent locators' data (differencing), then
 * the footer. A fixed disk is the data (a sparse file of zeros) and the footer. Everything but
 * the footer at the end is written first, then the footer, then a flush.
 */
import { VhdxError } from '../errors.js';
import { isGuid, randomGuid } from '../codec/guid.js';
import type { RandomAccessSource } from '../io/source.js';
import { FEATURE_RESERVED, FOOTER, FOOTER_SIZE, FORMAT_VERSION, DiskType, NO_DATA_OFFSET, vhdTimestamp, type Footer } from './footer.js';
import { DEFAULT_VHD_BLOCK_SIZE, DYNAMIC_HEADER, DYNAMIC_HEADER_SIZE, HEADER_VERSION, MAX_VHD_BLOCK_SIZE, MIN_VHD_BLOCK_SIZE, isPowerOfTwo } from './dynamic-header.js';
import { MAX_LOCATOR_DATA, PARENT_LOCATOR_COUNT, PlatformCode, encodeLocatorPath, type ParentLocatorEntry } from './parent-locator.js';
import { SECTOR, batBytes, blockCount } from './bat.js';
import { CHS_CREATORS, MAX_CHS, MAX_DYNAMIC_VHD_SIZE, MAX_FIXED_VHD_SIZE, QEMU_LEGACY_CURRENT_SIZE_CREATORS, chsForSectors, chsRoundUp, isChsExact, type Chs } from './geometry.js';
import type { VhdImage } from './image.js';

/** How a new VHD stores its blocks; see {@link CreateVhdOptions.subformat}. */
export type VhdSubformat = 'fixed' | 'dynamic';

/** A path naming a differencing disk's parent, for one platform. */
export interface VhdParentPath {
  /** 'W2ru': a Windows path relative to the child; 'W2ku': an absolute Windows path; 'MacX': a file:// URL. */
  platform: 'W2ru' | 'W2ku' | 'MacX';
  /** The path, in that platform's form. */
  path: string;
}

/** Options of {@link createVhd} and {@link planVhd}. */
export interface CreateVhdOptions {
  /** Disk size in bytes: a multiple of 512 (at most 2040 GiB dynamic, 64 TiB fixed). Taken from the parent for a differencing disk. */
  size?: number;
  /** 'dynamic' (the default): blocks are allocated on first write. 'fixed': the data and the footer. */
  subformat?: VhdSubformat;
  /** Block size of a dynamic disk: a power of two from 512 bytes to 2 GiB (default 2 MiB, as the specification, qemu and Hyper-V). */
  blockSize?: number;
  /** Round the size up to the next CHS-exact one (as qemu without force_size does), instead of keeping it exact. */
  roundToGeometry?: boolean;
  /** Creator application, four characters (default "vhdx"); see geometry.ts for what readers make of it. */
  creatorApplication?: string;
  /** Creator version (default 0x00010000). */
  creatorVersion?: number;
  /** Creator host OS, four characters (default "Wi2k", as Hyper-V and Azure expect). */
  creatorHostOs?: string;
  /** The unique id (default random). */
  uniqueId?: string;
  /** Creation time in milliseconds since 1970 (default now). */
  time?: number;
  /**
   * Make a differencing disk on this parent (opened, any type). The child takes its size; the
   * child names it by its unique id and time stamp (`parentModifiedTime` when given, as Windows,
   * VirtualBox and XenServer record it, else the parent footer's), its file name, and `parentPaths`.
   */
  parent?: VhdImage;
  /** The parent file's modification time (ms since 1970), when known. */
  parentModifiedTime?: number;
  /** The parent's file name, stored in the dynamic header (default: the last part of the first path). */
  parentName?: string;
  /** Where the parent is, one locator each (at most 8). */
  parentPaths?: VhdParentPath[];
}

/** What {@link createVhd} made. */
export interface CreateVhdResult {
  /** The footer written (for the CLI's output). @internal */
  footer: Footer;
  /** The disk's size in bytes. */
  size: number;
  /** The CHS geometry written in the footer. */
  geometry: Chs;
  /** File size of the new image. */
  fileSize: number;
}

export const DEFAULT_CREATOR_APPLICATION = 'vhdx';
export const DEFAULT_CREATOR_VERSION = 0x00010000;

function bad(message: string): VhdxError {
  return new VhdxError('EINVAL', 'BAD_ARGUMENT', message);
}

/**
 * The geometry written for a disk of `size` bytes made under the name `creator` (see the top of
 * this file): the specification's when it describes the size exactly, or when the creator is one
 * every qemu sizes by Current Size whatever the geometry ("win ", "qem2"...: then the geometry is
 * only what a BIOS shows a guest, and Hyper-V writes the specification's); else the maximum.
 */
export function geometryFor(size: number, creator: string = DEFAULT_CREATOR_APPLICATION): Chs {
  const byCurrentSize = QEMU_LEGACY_CURRENT_SIZE_CREATORS.includes(creator) && !CHS_CREATORS.includes(creator);
  return isChsExact(size) || byCurrentSize ? chsForSectors(size / SECTOR) : { ...MAX_CHS };
}

/** What a VHD will be made as: the options checked and their defaults filled in (`planVhd`). */
export interface VhdPlan {
  /** The disk type that will be written. */
  type: 'fixed' | 'dynamic' | 'differencing';
  /** The disk's size in bytes (rounded when `roundToGeometry`). */
  size: number;
  /** Block size (used by dynamic and differencing disks only). */
  blockSize: number;
  /** The CHS geometry the footer will hold. */
  geometry: Chs;
  /** Creator application, four characters. */
  creatorApplication: string;
  /** Creator host OS, four characters. */
  creatorHostOs: string;
  /** The unique id. */
  uniqueId: string;
  /** Creation time in milliseconds since 1970. */
  time: number;
}

/**
 * Check `opts` as `createVhd` does, writing nothing: a caller that must not touch a file before
 * the options are known good (a CLI replacing an existing file) asks here first.
 */
export function planVhd(opts: CreateVhdOptions): VhdPlan {
  const parent = opts.parent ?? null;
  const subformat = opts.subformat ?? 'dynamic';
  if (subformat !== 'fixed' && subformat !== 'dynamic') throw bad(`subformat ${String(subformat)} is not fixed or dynamic`);
  if (parent && subformat !== 'dynamic') throw bad('a differencing disk cannot be fixed');
  const type = parent ? 'differencing' : subformat;
  let size = parent ? parent.size : opts.size;
  if (parent && opts.size !== undefined && opts.size !== parent.size) throw bad(`a differencing disk has its parent's size (${parent.size} bytes), not ${opts.size}`);
  if (size === undefined || !Number.isSafeInteger(size) || size <= 0 || size % SECTOR !== 0) throw bad(`size ${String(size)} is not a positive multiple of 512 bytes`);
  if (opts.roundToGeometry) {
    const rounded = chsRoundUp(size);
    if (rounded === null) throw bad(`size ${size} is past the largest CHS geometry (${MAX_CHS.cylinders}×${MAX_CHS.heads}×${MAX_CHS.sectorsPerTrack} sectors): it cannot be rounded to one`);
    size = rounded;
  }
  const max = type === 'fixed' ? MAX_FIXED_VHD_SIZE : MAX_DYNAMIC_VHD_SIZE;
  if (size > max) throw bad(`a ${type} VHD is at most ${max} bytes; ${size} asked`);
  const blockSize = opts.blockSize ?? DEFAULT_VHD_BLOCK_SIZE;
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_VHD_BLOCK_SIZE || blockSize > MAX_VHD_BLOCK_SIZE) throw bad(`block size ${blockSize} is not a power of two from 512 bytes to 2 GiB`);
  const four = (name: string, v: string): string => {
    if (typeof v !== 'string' || v.length !== 4 || [...v].some((c) => c.charCodeAt(0) > 0x7f)) throw bad(`${name} must be four ASCII characters, not ${JSON.stringify(v)}`);
    return v;
  };
  const creatorApplication = four('creatorApplication', opts.creatorApplication ?? DEFAULT_CREATOR_APPLICATION);
  const creatorHostOs = four('creatorHostOs', opts.creatorHostOs ?? 'Wi2k');
  const uniqueId = opts.uniqueId ?? randomGuid();
  if (!isGuid(uniqueId)) throw bad(`uniqueId ${JSON.stringify(uniqueId)} is not a UUID`);
  const time = opts.time ?? Date.now();
  return { type, size, blockSize, geometry: geometryFor(size, creatorApplication), creatorApplication, creatorHostOs, uniqueId, time };
}

/**
 * Create a VHD in `source` (writable and truncatable; its content is discarded). Options are
 * checked before anything is written (`planVhd`); the source is flushed, not closed.
 */
export async function createVhd(source: RandomAccessSource, opts: CreateVhdOptions): Promise<CreateVhdResult> {
  if (source.readOnly || !source.write || !source.flush || !source.truncate) throw new VhdxError('EROFS', 'READ_ONLY', 'creating a VHD needs a writable source');
  const parent = opts.parent ?? null;
  const { type, size, blockSize, geometry, creatorApplication, creatorHostOs, uniqueId, time } = planVhd(opts);

  // Differencing: the locators' data, placed after the BAT.
  const blocks = blockCount(size, blockSize);
  const tableOffset = FOOTER_SIZE + DYNAMIC_HEADER_SIZE;
  let end = type === 'fixed' ? size : tableOffset + batBytes(blocks);
  const locatorData: { at: number; data: Uint8Array }[] = [];
  const entries: ParentLocatorEntry[] = [];
  const paths = opts.parentPaths ?? [];
  if (!parent && paths.length > 0) throw bad('parent paths are for a differencing disk (give parent)');
  if (paths.length > PARENT_LOCATOR_COUNT) throw bad(`at most ${PARENT_LOCATOR_COUNT} parent paths`);
  for (const p of paths) {
    const code = p.platform === 'W2ru' ? PlatformCode.W2RU : p.platform === 'W2ku' ? PlatformCode.W2KU : p.platform === 'MacX' ? PlatformCode.MACX : null;
    if (code === null) throw bad(`parent path platform ${JSON.stringify(p.platform)} is not W2ru, W2ku or MacX`);
    const data = encodeLocatorPath(code, p.path);
    if (data.length === 0 || data.length > MAX_LOCATOR_DATA) throw bad(`parent path of ${data.length} bytes (1 to ${MAX_LOCATOR_DATA})`);
    const space = Math.ceil(data.length / SECTOR) * SECTOR;
    // Platform Data Space in bytes, as Windows and Virtual PC write it (see parent-locator.ts).
    entries.push({ platformCode: code, platformDataSpace: space, platformDataLength: data.length, reserved: 0, platformDataOffset: end });
    locatorData.push({ at: end, data });
    end += space;
  }
  while (entries.length < PARENT_LOCATOR_COUNT) entries.push({ platformCode: 0, platformDataSpace: 0, platformDataLength: 0, reserved: 0, platformDataOffset: 0 });
  const parentName = opts.parentName ?? (paths[0] ? paths[0].path.split(/[\\/]/).pop()! : '');
  if (parentName.length > 256) throw bad('parent name longer than 256 UTF-16 characters');

  const footer: Footer = {
    cookie: 'conectix',
    features: FEATURE_RESERVED,
    formatVersion: FORMAT_VERSION,
    dataOffset: type === 'fixed' ? NO_DATA_OFFSET : BigInt(FOOTER_SIZE),
    timestamp: vhdTimestamp(time),
    creatorApplication,
    creatorVersion: opts.creatorVersion ?? DEFAULT_CREATOR_VERSION,
    creatorHostOs,
    originalSize: BigInt(size),
    currentSize: size,
    cylinders: geometry.cylinders,
    heads: geometry.heads,
    sectorsPerTrack: geometry.sectorsPerTrack,
    diskType: type === 'fixed' ? DiskType.FIXED : type === 'dynamic' ? DiskType.DYNAMIC : DiskType.DIFFERENCING,
    checksum: 0,
    uniqueId,
    savedState: 0,
  };
  const footerBytes = FOOTER.encode(footer);

  await source.truncate(0);
  if (type === 'fixed') {
    await source.truncate(size);
  } else {
    const head = new Uint8Array(tableOffset + batBytes(blocks));
    head.set(footerBytes, 0);
    DYNAMIC_HEADER.encode(
      {
        cookie: 'cxsparse',
        dataOffset: NO_DATA_OFFSET,
        tableOffset,
        headerVersion: HEADER_VERSION,
        maxTableEntries: blocks,
        blockSize,
        parentUniqueId: parent ? parent.uniqueId : '00000000-0000-0000-0000-000000000000',
        parentTimestamp: parent ? (opts.parentModifiedTime !== undefined ? vhdTimestamp(opts.parentModifiedTime) : parent.footer.timestamp) : 0,
        reserved: 0,
        parentUnicodeName: parent ? parentName : '',
        parentLocators: entries,
      },
      head,
      FOOTER_SIZE,
    );
    head.fill(0xff, tableOffset); // every block unallocated, the padding too
    await source.write(0, head);
    for (const l of locatorData) await source.write(l.at, l.data);
  }
  await source.write(end, footerBytes);
  await source.flush();
  return { footer: FOOTER.decode(footerBytes), size, geometry, fileSize: end + FOOTER_SIZE };
}
