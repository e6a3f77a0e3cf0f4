/**
 * FAT12, FAT16 and FAT32: recognition from the boot sector's BIOS parameter block, and the
 * used map from the file allocation table (Microsoft, "FAT: General Overview of On-Disk
 * Format", the FAT32 specification 1.03).
 *
 * The type is decided by the count of data clusters, as the specification says, never by the
 * type string. A cluster is free when its FAT entry is 0; the reserved sectors, the FATs and the
 * FAT12/16 root directory are used; so is anything past the last whole cluster. The FAT is read
 * in windows, so memory does not grow with the volume.
 */
import { viewOf } from '../codec/struct.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import type { FilesystemDriver, FilesystemInfo, FilesystemState, Region, Run } from './filesystem.js';
import { readInRegion, noFreeSpace, usedFromFree, type FreeStep, type Span } from './used-map.js';

/** Entries of the FAT examined per window (the window is at most 4 bytes each). */
const WINDOW_ENTRIES = 64 * 1024;
/** Clusters of the FAT32 root directory searched for the volume label. */
const LABEL_SCAN_CLUSTERS = 64;

const ATTR_VOLUME_ID = 0x08;
const ATTR_LONG_NAME = 0x0f;

/** The boot sector's geometry, validated, with what follows from it. */
export interface FatVolume {
  type: 'fat12' | 'fat16' | 'fat32';
  bytesPerSector: number;
  clusterSize: number;
  /** Byte offset of the FAT in use (the first, unless FAT32 mirroring is off). */
  fatAt: number;
  fatBytes: number;
  rootDirAt: number;
  rootDirBytes: number;
  rootCluster: number;
  dataAt: number;
  clusters: number;
  size: number;
  serial: number | null;
  bootLabel: string | null;
  /** The boot sector's "volume dirty" bit (BS_Reserved1 bit 0, set by Windows NT and Linux while mounted). */
  bootDirty: boolean;
}

/** The boot sector (at least 512 bytes) as a FAT volume, or null when it is not one. */
export function parseFatBootSector(b: Uint8Array): FatVolume | null {
  if (b.length < 512) return null;
  const v = viewOf(b);
  if (!(b[0] === 0xeb && b[2] === 0x90) && b[0] !== 0xe9) return null;
  if (v.getUint16(510, true) !== 0xaa55) return null;
  const bytesPerSector = v.getUint16(0x0b, true);
  const secPerClus = b[0x0d]!;
  const reserved = v.getUint16(0x0e, true);
  const numFats = b[0x10]!;
  const rootEntries = v.getUint16(0x11, true);
  const totSec = v.getUint16(0x13, true) || v.getUint32(0x20, true);
  const media = b[0x15]!;
  const fatSz16 = v.getUint16(0x16, true);
  const fatSz = fatSz16 || v.getUint32(0x24, true);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) return null;
  if (secPerClus === 0 || (secPerClus & (secPerClus - 1)) !== 0) return null;
  if (reserved === 0 || numFats === 0 || numFats > 4 || totSec === 0 || fatSz === 0) return null;
  if (media !== 0xf0 && media < 0xf8) return null;
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const metaSectors = reserved + numFats * fatSz + rootDirSectors;
  if (metaSectors >= totSec) return null;
  const clusters = Math.floor((totSec - metaSectors) / secPerClus);
  const type = clusters < 4085 ? 'fat12' : clusters < 65525 ? 'fat16' : 'fat32';
  if (type === 'fat32' && (fatSz16 !== 0 || rootEntries !== 0)) return null;
  if (type !== 'fat32' && rootEntries === 0) return null;
  let fatIndex = 0;
  if (type === 'fat32') {
    const extFlags = v.getUint16(0x28, true);
    if (extFlags & 0x80) fatIndex = extFlags & 0x0f;
    if (fatIndex >= numFats) return null;
  }
  const ext = type === 'fat32' ? 0x40 : 0x24;
  const bootSig = b[ext + 2]!;
  const hasSerial = bootSig === 0x29 || bootSig === 0x28;
  const label = bootSig === 0x29 ? dirName(b.subarray(ext + 7, ext + 18)) : null;
  return {
    type,
    bytesPerSector,
    clusterSize: secPerClus * bytesPerSector,
    fatAt: (reserved + fatIndex * fatSz) * bytesPerSector,
    fatBytes: fatSz * bytesPerSector,
    rootDirAt: (reserved + numFats * fatSz) * bytesPerSector,
    rootDirBytes: rootEntries * 32,
    rootCluster: type === 'fat32' ? v.getUint32(0x2c, true) & 0x0fffffff : 0,
    dataAt: metaSectors * bytesPerSector,
    clusters,
    size: totSec * bytesPerSector,
    serial: hasSerial ? v.getUint32(ext + 3, true) : null,
    bootLabel: label === 'NO NAME' ? null : label,
    bootDirty: ((b[ext + 1] ?? 0) & 1) !== 0,
  };
}

/** An 8.3 directory name field (11 bytes) as text, trailing spaces removed. */
function dirName(b: Uint8Array): string | null {
  const s = String.fromCharCode(...b).replace(/ +$/, '');
  return s === '' ? null : s;
}

/** A 32-bit volume serial as FAT and exFAT tools print it: XXXX-XXXX. */
export function formatVolumeSerial(n: number): string {
  const h = n.toString(16).toUpperCase().padStart(8, '0');
  return `${h.slice(0, 4)}-${h.slice(4)}`;
}

/** How many entries of the FAT in use lie inside it (at most clusters + 2). */
function coveredEntries(vol: FatVolume): number {
  const fit = vol.type === 'fat12' ? Math.floor((vol.fatBytes * 2) / 3) : vol.fatBytes / (vol.type === 'fat16' ? 2 : 4);
  return Math.min(vol.clusters + 2, fit);
}

/** Read FAT entries [first, first + count) (count > 0), or null when the FAT is outside the region. */
async function readEntries(dev: BlockDevice, region: Region, vol: FatVolume, first: number, count: number): Promise<Uint32Array | null> {
  const out = new Uint32Array(count);
  if (vol.type === 'fat12') {
    const from = Math.floor((first * 3) / 2);
    const to = Math.floor(((first + count - 1) * 3) / 2) + 2;
    const b = await readInRegion(dev, region, vol.fatAt + from, Math.min(to, vol.fatBytes) - from);
    if (!b) return null;
    for (let i = 0; i < count; i++) {
      const e = first + i;
      const at = Math.floor((e * 3) / 2) - from;
      const pair = b[at]! | ((b[at + 1] ?? 0) << 8);
      out[i] = e & 1 ? pair >> 4 : pair & 0xfff;
    }
    return out;
  }
  const width = vol.type === 'fat16' ? 2 : 4;
  const b = await readInRegion(dev, region, vol.fatAt + first * width, count * width);
  if (!b) return null;
  const v = viewOf(b);
  for (let i = 0; i < count; i++) out[i] = width === 2 ? v.getUint16(i * 2, true) : v.getUint32(i * 4, true) & 0x0fffffff;
  return out;
}

/** The volume label from the root directory's volume-ID entry, or null. */
async function rootLabel(dev: BlockDevice, region: Region, vol: FatVolume): Promise<string | null> {
  const scan = (dir: Uint8Array): string | null | undefined => {
    for (let at = 0; at + 32 <= dir.length; at += 32) {
      const first = dir[at]!;
      if (first === 0) return null;
      const attr = dir[at + 11]!;
      if (first === 0xe5 || attr === ATTR_LONG_NAME || !(attr & ATTR_VOLUME_ID)) continue;
      return dirName(dir.subarray(at, at + 11));
    }
    return undefined;
  };
  if (vol.type !== 'fat32') {
    const dir = await readInRegion(dev, region, vol.rootDirAt, vol.rootDirBytes);
    return dir ? (scan(dir) ?? null) : null;
  }
  let cluster = vol.rootCluster;
  for (let i = 0; i < LABEL_SCAN_CLUSTERS && cluster >= 2 && cluster < vol.clusters + 2; i++) {
    const dir = await readInRegion(dev, region, vol.dataAt + (cluster - 2) * vol.clusterSize, vol.clusterSize);
    if (!dir) return null;
    const found = scan(dir);
    if (found !== undefined) return found;
    const next = await readEntries(dev, region, vol, cluster, 1);
    if (!next) return null;
    cluster = next[0]!;
  }
  return null;
}

function judge(vol: FatVolume, fat1: number | null, region: Region): { state: FilesystemState; untrusted: string | null } {
  if (fat1 !== null && vol.type !== 'fat12') {
    const [clean, noErrors] = vol.type === 'fat16' ? [0x8000, 0x4000] : [0x08000000, 0x04000000];
    if (!(fat1 & noErrors)) return { state: 'dirty', untrusted: 'the volume recorded disk errors (FAT[1] hard-error bit)' };
    if (!(fat1 & clean)) return { state: 'dirty', untrusted: 'not cleanly unmounted (FAT[1] clean-shutdown bit clear)' };
  }
  if (vol.bootDirty) return { state: 'dirty', untrusted: 'not cleanly unmounted (boot sector dirty flag)' };
  if (vol.size > region.length) return { state: 'clean', untrusted: 'the filesystem is larger than its partition' };
  if (fat1 === null) return { state: 'unknown', untrusted: 'the FAT lies outside the partition' };
  return { state: 'clean', untrusted: null };
}

async function detect(dev: BlockDevice, region: Region): Promise<FilesystemInfo | null> {
  const boot = await readInRegion(dev, region, 0, 512);
  const vol = boot ? parseFatBootSector(boot) : null;
  if (!vol) return null;
  const fat1 = await readEntries(dev, region, vol, 1, 1);
  const { state, untrusted } = judge(vol, fat1 ? fat1[0]! : null, region);
  return {
    type: vol.type,
    label: (await rootLabel(dev, region, vol)) ?? vol.bootLabel,
    uuid: vol.serial === null ? null : formatVolumeSerial(vol.serial),
    size: vol.size,
    state,
    untrusted,
  };
}

async function* walkFree(dev: BlockDevice, region: Region, vol: FatVolume): AsyncGenerator<FreeStep> {
  const end = coveredEntries(vol);
  for (let first = 2; first < end; first += WINDOW_ENTRIES) {
    const n = Math.min(WINDOW_ENTRIES, end - first);
    const entries = await readEntries(dev, region, vol, first, n);
    const free: Span[] = [];
    if (entries) {
      let run = -1;
      for (let i = 0; i <= n; i++) {
        const isFree = i < n && entries[i] === 0;
        if (isFree && run < 0) run = i;
        else if (!isFree && run >= 0) {
          free.push({ start: vol.dataAt + (first + run - 2) * vol.clusterSize, end: vol.dataAt + (first + i - 2) * vol.clusterSize });
          run = -1;
        }
      }
    }
    yield { free, done: vol.dataAt + (first + n - 2) * vol.clusterSize };
  }
}

async function* usedRuns(dev: BlockDevice, region: Region, info: FilesystemInfo, opts: ProgressOptions = {}): AsyncGenerator<Run> {
  const boot = await readInRegion(dev, region, 0, 512);
  const vol = boot ? parseFatBootSector(boot) : null;
  const walk = vol && vol.type === info.type && info.untrusted === null ? walkFree(dev, region, vol) : noFreeSpace();
  yield* usedFromFree(region, walk, opts, 'FAT used map');
}

export const fatDriver: FilesystemDriver = {
  types: ['fat12', 'fat16', 'fat32'],
  detect,
  usedRuns,
};
