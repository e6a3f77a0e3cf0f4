/**
 * exFAT: recognition from the main boot region, label from the root directory's volume label
 * entry, and the used map from the allocation bitmap (Microsoft, "exFAT file system
 * specification": 3.1 main boot sector, 3.4 boot checksum, 7.1 allocation bitmap, 7.3 volume
 * label directory entries).
 *
 * The boot region's checksum is verified; a volume marked dirty or with media failures is not
 * trusted. The bitmap and the root directory are followed through the FAT cluster by cluster
 * with bounds on every step, and the bitmap is read in windows: memory does not grow with the
 * volume. A bitmap that ends early, or whose chain breaks, leaves the rest used.
 */
import { viewOf } from '../codec/struct.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import { formatVolumeSerial } from './fat.js';
import type { FilesystemDriver, FilesystemInfo, FilesystemState, Region, Run } from './filesystem.js';
import { ChunkReader, bitRuns, noFreeSpace, readInRegion, usedFromFree, type FreeStep, type Span } from './used-map.js';

const ENTRY_END = 0x00;
const ENTRY_BITMAP = 0x81;
const ENTRY_LABEL = 0x83;
const FLAG_ACTIVE_FAT = 0x1;
const FLAG_DIRTY = 0x2;
const FLAG_MEDIA_FAILURE = 0x4;
/** Clusters of the root directory searched for the bitmap and label entries. */
const ROOT_SCAN_CLUSTERS = 256;
/** Bytes of bitmap read at a time (at most 256 Ki free spans to hold, however the bits alternate). */
const BITMAP_WINDOW = 64 * 1024;

export interface ExfatVolume {
  sectorSize: number;
  clusterSize: number;
  fatAt: number;
  heapAt: number;
  clusterCount: number;
  rootCluster: number;
  size: number;
  serial: number;
  flags: number;
  checksumOk: boolean;
}

/** The main boot region (12 sectors, or the first sector alone for a quick look) as exFAT, or null. */
export function parseExfatBootRegion(b: Uint8Array): ExfatVolume | null {
  if (b.length < 512) return null;
  const v = viewOf(b);
  if (b[0] !== 0xeb || b[1] !== 0x76 || b[2] !== 0x90) return null;
  if (String.fromCharCode(...b.subarray(3, 11)) !== 'EXFAT   ') return null;
  if (v.getUint16(510, true) !== 0xaa55) return null;
  for (let i = 11; i < 64; i++) if (b[i] !== 0) return null;
  const bps = b[108]!;
  const spc = b[109]!;
  const fats = b[110]!;
  if (bps < 9 || bps > 12 || spc > 25 - bps || (fats !== 1 && fats !== 2)) return null;
  const sectorSize = 2 ** bps;
  const volumeSectors = v.getBigUint64(72, true);
  const size = Number(volumeSectors) * sectorSize;
  const fatOffset = v.getUint32(80, true);
  const fatLength = v.getUint32(84, true);
  const heapOffset = v.getUint32(88, true);
  const clusterCount = v.getUint32(92, true);
  const rootCluster = v.getUint32(96, true);
  const clusterSize = sectorSize * 2 ** spc;
  if (!Number.isSafeInteger(size) || size < 1024 * 1024) return null;
  if (fatOffset < 24 || fatLength * sectorSize < (clusterCount + 2) * 4) return null;
  if (heapOffset < fatOffset + fatLength * fats) return null;
  if (clusterCount === 0 || clusterCount > 0xfffffff5 || heapOffset * sectorSize + clusterCount * clusterSize > size) return null;
  if (rootCluster < 2 || rootCluster > clusterCount + 1) return null;
  const activeFat = fats === 2 ? v.getUint16(106, true) & FLAG_ACTIVE_FAT : 0;
  return {
    sectorSize,
    clusterSize,
    fatAt: (fatOffset + activeFat * fatLength) * sectorSize,
    heapAt: heapOffset * sectorSize,
    clusterCount,
    rootCluster,
    size,
    serial: v.getUint32(100, true),
    flags: v.getUint16(106, true),
    checksumOk: b.length >= 12 * sectorSize && bootChecksumOk(b, sectorSize),
  };
}

/** Sector 11 repeats the checksum of sectors 0-10, which skips VolumeFlags and PercentInUse. */
function bootChecksumOk(b: Uint8Array, sectorSize: number): boolean {
  let sum = 0;
  for (let i = 0; i < 11 * sectorSize; i++) {
    if (i === 106 || i === 107 || i === 112) continue;
    sum = (((sum & 1) << 31) | (sum >>> 1)) + b[i]!;
    sum >>>= 0;
  }
  const v = viewOf(b);
  for (let at = 11 * sectorSize; at < 12 * sectorSize; at += 4) if (v.getUint32(at, true) !== sum) return false;
  return true;
}

/** Follows cluster chains through the FAT in use, one cached chunk at a time. */
class Chains {
  private readonly fat: ChunkReader;

  constructor(
    dev: BlockDevice,
    region: Region,
    private readonly vol: ExfatVolume,
  ) {
    this.fat = new ChunkReader(dev, region);
  }

  valid(cluster: number): boolean {
    return cluster >= 2 && cluster <= this.vol.clusterCount + 1;
  }

  /** The cluster after `cluster`, or null at the end of the chain or on damage. */
  async next(cluster: number): Promise<number | null> {
    const e = await this.fat.read(this.vol.fatAt + cluster * 4, 4);
    if (!e) return null;
    const n = viewOf(e).getUint32(0, true);
    return this.valid(n) ? n : null;
  }

  offsetOf(cluster: number): number {
    return this.vol.heapAt + (cluster - 2) * this.vol.clusterSize;
  }
}

interface RootEntries {
  label: string | null;
  /** The active allocation bitmap: first cluster and length in bytes. */
  bitmap: { cluster: number; length: number } | null;
}

async function readRoot(dev: BlockDevice, region: Region, vol: ExfatVolume): Promise<RootEntries> {
  const chains = new Chains(dev, region, vol);
  const out: RootEntries = { label: null, bitmap: null };
  const wantBitmap = vol.flags & FLAG_ACTIVE_FAT;
  let cluster: number | null = vol.rootCluster;
  for (let i = 0; i < ROOT_SCAN_CLUSTERS && cluster !== null; i++) {
    const dir = await readInRegion(dev, region, chains.offsetOf(cluster), vol.clusterSize);
    if (!dir) return out;
    const v = viewOf(dir);
    for (let at = 0; at + 32 <= dir.length; at += 32) {
      const type = dir[at]!;
      if (type === ENTRY_END) return out;
      if (type === ENTRY_LABEL && out.label === null) {
        const n = Math.min(dir[at + 1]!, 11);
        out.label = n === 0 ? null : new TextDecoder('utf-16le').decode(dir.subarray(at + 2, at + 2 + n * 2));
      } else if (type === ENTRY_BITMAP && (dir[at + 1]! & 1) === wantBitmap && out.bitmap === null) {
        const length = Number(v.getBigUint64(at + 24, true));
        out.bitmap = { cluster: v.getUint32(at + 20, true), length };
      }
    }
    cluster = await chains.next(cluster);
  }
  return out;
}

function judge(vol: ExfatVolume, region: Region): { state: FilesystemState; untrusted: string | null } {
  if (!vol.checksumOk) return { state: 'unknown', untrusted: 'boot region checksum mismatch' };
  if (vol.flags & FLAG_DIRTY) return { state: 'dirty', untrusted: 'not cleanly unmounted (VolumeDirty set)' };
  if (vol.flags & FLAG_MEDIA_FAILURE) return { state: 'dirty', untrusted: 'the volume recorded media failures' };
  if (vol.size > region.length) return { state: 'clean', untrusted: 'the filesystem is larger than its partition' };
  return { state: 'clean', untrusted: null };
}

async function readBoot(dev: BlockDevice, region: Region): Promise<ExfatVolume | null> {
  const first = await readInRegion(dev, region, 0, 512);
  if (!first || !parseExfatBootRegion(first)) return null;
  const sectorSize = 2 ** first[108]!;
  const all = await readInRegion(dev, region, 0, 12 * sectorSize);
  return parseExfatBootRegion(all ?? first);
}

async function detect(dev: BlockDevice, region: Region): Promise<FilesystemInfo | null> {
  const vol = await readBoot(dev, region);
  if (!vol) return null;
  const { state, untrusted } = judge(vol, region);
  const root = await readRoot(dev, region, vol);
  const noBitmap = untrusted === null && !root.bitmap ? 'no allocation bitmap in the root directory' : null;
  return {
    type: 'exfat',
    label: root.label,
    uuid: formatVolumeSerial(vol.serial),
    size: vol.size,
    state: noBitmap ? 'unknown' : state,
    untrusted: untrusted ?? noBitmap,
  };
}

async function* walkFree(dev: BlockDevice, region: Region, vol: ExfatVolume, bitmap: { cluster: number; length: number }): AsyncGenerator<FreeStep> {
  const chains = new Chains(dev, region, vol);
  const bytesNeeded = Math.min(bitmap.length, Math.ceil(vol.clusterCount / 8));
  let cluster: number | null = chains.valid(bitmap.cluster) ? bitmap.cluster : null;
  let bitmapAt = 0; // bytes of the bitmap done
  // Bounded: every step consumes one cluster of a bitmap at most clusterCount / 8 bytes long.
  while (cluster !== null && bitmapAt < bytesNeeded) {
    // Gather contiguous clusters of the chain, up to the window.
    let runClusters = 1;
    let next: number | null = await chains.next(cluster);
    while (next === cluster + runClusters && runClusters * vol.clusterSize < BITMAP_WINDOW && bitmapAt + runClusters * vol.clusterSize < bytesNeeded) {
      runClusters++;
      next = await chains.next(next);
    }
    const n = Math.min(runClusters * vol.clusterSize, bytesNeeded - bitmapAt);
    const bits = await readInRegion(dev, region, chains.offsetOf(cluster), n);
    if (!bits) return;
    const free: Span[] = [];
    const firstBit = bitmapAt * 8;
    bitRuns(bits, 0, Math.min(n * 8, vol.clusterCount - firstBit), 0, (a, b) => {
      free.push({ start: vol.heapAt + (firstBit + a) * vol.clusterSize, end: vol.heapAt + (firstBit + b) * vol.clusterSize });
    });
    bitmapAt += n;
    yield { free, done: vol.heapAt + Math.min(bitmapAt * 8, vol.clusterCount) * vol.clusterSize };
    cluster = next;
  }
}

async function* usedRuns(dev: BlockDevice, region: Region, info: FilesystemInfo, opts: ProgressOptions = {}): AsyncGenerator<Run> {
  const vol = await readBoot(dev, region);
  const root = vol && info.untrusted === null && judge(vol, region).untrusted === null ? await readRoot(dev, region, vol) : null;
  const walk = vol && root?.bitmap ? walkFree(dev, region, vol, root.bitmap) : noFreeSpace();
  yield* usedFromFree(region, walk, opts, 'exFAT used map');
}

export const exfatDriver: FilesystemDriver = {
  types: ['exfat'],
  detect,
  usedRuns,
};
