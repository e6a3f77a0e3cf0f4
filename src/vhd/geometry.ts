/**
 * How big a VHD is. The footer holds two answers: Current Size (bytes), and a CHS geometry
 * (cylinders × heads × sectors per track, × 512). The specification computes the geometry from
 * the size, rounding down (and capping at 65535 × 16 × 255 sectors, about 127 GiB), so the two
 * agree only for "CHS-exact" sizes. Readers differ in which they believe:
 *
 * - Virtual PC shows the guest the CHS geometry (its Current Size is often larger).
 * - Hyper-V, Windows (Disk Management, Mount-VHD), Azure and 7-Zip use Current Size.
 * - libvhdi (20210425) uses Original Size (offset 40), which every creator writes equal to
 *   Current Size; the two differ only in a disk resized after it was made.
 * - qemu before 2.6 used CHS, except for Disk2VHD's "d2v " files.
 * - qemu 2.6 to 9.2 uses Current Size when the creator is "win " (Hyper-V), "qem2" (qemu with
 *   force_size), "d2v " (Disk2VHD), "CTXS" (XenConverter) or "tap\0" (XenServer), or when the
 *   geometry is the maximum 65535 × 16 × 255; CHS otherwise, so Azure's "wa\0\0" files read
 *   short there.
 * - qemu 10.0 turned the list round: CHS only for "vpc " (Virtual PC) and "qemu" (qemu without
 *   force_size, which rounds the size up to a CHS-exact one when it creates a disk, so the two
 *   agree in its own files); Current Size for every other creator, and still for the maximum
 *   geometry.
 *
 * The rule applied here (`'auto'`) is qemu 10.0's: the CHS geometry for "vpc " and "qemu" unless
 * it is the maximum geometry, Current Size for every other creator. It gives Hyper-V's, Azure's
 * and 7-Zip's answer for every file they make or read, and Virtual PC's for Virtual PC's
 * files, which are the only ones whose Current Size is known to overstate the disk. Options
 * override it: `'current-size'` (what Hyper-V does) and `'chs'` (what Virtual PC does).
 *
 * A size the file cannot hold (a CHS size past the BAT's reach or past a fixed disk's data) is
 * refused with BAD_VIRTUAL_SIZE rather than read short or past the data.
 */
import { VhdxError } from '../errors.js';
import { creatorText, type Footer } from './footer.js';

/** A CHS disk geometry, as a VHD footer holds it (the disk is their product × 512 bytes). */
export interface Chs {
  /** Cylinders (at most 65535). */
  cylinders: number;
  /** Heads (at most 16). */
  heads: number;
  /** Sectors per track (at most 255). */
  sectorsPerTrack: number;
}

export const MAX_CHS: Chs = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
export const MAX_CHS_SECTORS = 65535 * 16 * 255;

/** Largest dynamic or differencing disk: 2040 GiB, as Hyper-V and qemu allow (BAT offsets are u32 sectors). */
export const MAX_DYNAMIC_VHD_SIZE = 2040 * 1024 ** 3;
/** Largest fixed disk we open or make (it has no BAT; the same bound as a VHDX). */
export const MAX_FIXED_VHD_SIZE = 64 * 1024 ** 4;

/** The geometry the specification assigns to a disk of `totalSectors` sectors (rounding down). */
export function chsForSectors(totalSectors: number): Chs {
  const total = Math.min(totalSectors, MAX_CHS_SECTORS);
  let sectorsPerTrack: number;
  let heads: number;
  let cylTimesHeads: number;
  if (total >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylTimesHeads = Math.floor(total / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylTimesHeads = Math.floor(total / sectorsPerTrack);
    heads = Math.max(4, Math.floor((cylTimesHeads + 1023) / 1024));
    if (cylTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylTimesHeads = Math.floor(total / sectorsPerTrack);
    }
    if (cylTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylTimesHeads = Math.floor(total / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylTimesHeads / heads), heads, sectorsPerTrack };
}

export function chsSectors(g: Chs): number {
  return g.cylinders * g.heads * g.sectorsPerTrack;
}

export function isMaxChs(g: Chs): boolean {
  return chsSectors(g) === MAX_CHS_SECTORS;
}

/** True when the geometry the specification gives `size` describes exactly `size` bytes. */
export function isChsExact(size: number): boolean {
  return size % 512 === 0 && chsSectors(chsForSectors(size / 512)) * 512 === size;
}

/**
 * The smallest CHS-exact size of at least `size` bytes (what qemu's create rounds up to), or
 * null when none fits under the maximum geometry.
 */
export function chsRoundUp(size: number): number | null {
  const want = Math.ceil(size / 512);
  if (want > MAX_CHS_SECTORS) return null;
  for (let s = want; s <= MAX_CHS_SECTORS; s++) {
    const g = chsSectors(chsForSectors(s));
    if (g >= want) return g * 512;
  }
  return null;
}

/**
 * Which of a VHD footer's sizes to believe (see the top of src/vhd/geometry.ts): `auto` (qemu
 * 10.0's rule: the CHS geometry for creators "vpc " and "qemu", Current Size for the rest),
 * `current-size` (Hyper-V's), or `chs` (Virtual PC's).
 */
export type SizeRule = 'auto' | 'current-size' | 'chs';

/** Creators whose disks the `'auto'` rule sizes by their CHS geometry (qemu 10.0's list). */
export const CHS_CREATORS: readonly string[] = ['vpc ', 'qemu'];

/** Creators qemu 2.6 to 9.2 sizes by Current Size (every other creator by CHS, unless the geometry is the maximum). */
export const QEMU_LEGACY_CURRENT_SIZE_CREATORS: readonly string[] = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];

/** The size each family of readers gives a footer's disk, in bytes. */
export interface SizesByReader {
  /** Hyper-V, Windows, Azure, 7-Zip: Current Size. */
  currentSize: number;
  /** libvhdi: Original Size. */
  originalSize: number;
  /** qemu 2.6 to 9.2. */
  qemuLegacy: number;
  /** qemu 10.0 and later, and this library's 'auto' rule. */
  qemu10: number;
}

export function sizesByReader(f: Footer): SizesByReader {
  const chs = footerChs(f);
  const chsSize = chsSectors(chs) * 512;
  const current = Math.floor(f.currentSize / 512) * 512;
  const max = isMaxChs(chs);
  return {
    currentSize: current,
    originalSize: f.originalSize > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Math.floor(Number(f.originalSize) / 512) * 512,
    qemuLegacy: max || QEMU_LEGACY_CURRENT_SIZE_CREATORS.includes(f.creatorApplication) ? current : chsSize,
    qemu10: max || !CHS_CREATORS.includes(f.creatorApplication) ? current : chsSize,
  };
}

export interface DiskSize {
  /** The disk's size in bytes (a multiple of 512). */
  size: number;
  /** Which answer was taken. */
  from: 'current-size' | 'chs';
  /** The other answer, in bytes, when it differs (null when the geometry is the maximum: then it means "use the current size"). */
  otherSize: number | null;
  /** Why, for people. */
  why: string;
}

export function footerChs(f: Footer): Chs {
  return { cylinders: f.cylinders, heads: f.heads, sectorsPerTrack: f.sectorsPerTrack };
}

/** The size of the disk a footer describes under `rule` (see the rules at the top of this file). */
export function diskSizeOf(f: Footer, rule: SizeRule = 'auto'): DiskSize {
  if (rule !== 'auto' && rule !== 'current-size' && rule !== 'chs') {
    throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `size rule must be 'auto', 'current-size' or 'chs', not ${JSON.stringify(rule)}`);
  }
  const chs = footerChs(f);
  const chsSize = chsSectors(chs) * 512;
  const current = Math.floor(f.currentSize / 512) * 512;
  const app = `"${creatorText(f.creatorApplication)}"`;
  let from: DiskSize['from'];
  let why: string;
  if (rule === 'chs') {
    from = 'chs';
    why = 'the CHS geometry, as asked';
  } else if (rule === 'current-size') {
    from = 'current-size';
    why = 'the stored current size, as asked';
  } else if (isMaxChs(chs)) {
    from = 'current-size';
    why = 'the geometry is the maximum 65535×16×255, which every reader takes as "use the current size"';
  } else if (CHS_CREATORS.includes(f.creatorApplication)) {
    from = 'chs';
    why = `creator ${app} sizes its disks by the CHS geometry (Virtual PC; qemu without force_size)`;
  } else {
    from = 'current-size';
    why = `creator ${app} is sized by its current size, as Hyper-V, Azure, 7-Zip and qemu 10 read it`;
  }
  const size = from === 'chs' ? chsSize : current;
  const other = from === 'chs' ? current : chsSize;
  return { size, from, otherSize: other === size || isMaxChs(chs) ? null : other, why };
}
