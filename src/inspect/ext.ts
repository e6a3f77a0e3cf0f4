/**
 * ext2, ext3 and ext4: recognition from the superblock and the used map from the block
 * bitmaps (Linux kernel, Documentation/filesystems/ext4: super.rst, group_descr.rst,
 * blockgroup.rst, bitmaps.rst, checksums.rst).
 *
 * The used map walks the block groups in order, one descriptor and one bitmap at a time, so
 * memory is one bitmap (at most a block) plus a read cache whatever the filesystem's size. A
 * group's free space is believed only when its descriptor checksum and bitmap checksum verify
 * (when the filesystem has them) and its bitmap lies inside the filesystem; the group's own
 * metadata (superblock and descriptor copies, bitmaps, inode table) is always used, whatever
 * its bitmap says. Groups with BLOCK_UNINIT have no bitmap on disk: their used blocks are
 * exactly that metadata, as the kernel computes them.
 */
import { crc16Update } from '../codec/crc16.js';
import { crc32cUpdate } from '../codec/crc32c.js';
import { viewOf } from '../codec/struct.js';
import type { BlockDevice } from '../device/block-device.js';
import type { FilesystemDriver, FilesystemInfo, FilesystemState, Region, Run, UsageSource, UsedMapOptions } from './filesystem.js';
import { ChunkReader, bitRuns, readInRegion, noFreeSpace, usedFromFree, type FreeStep, type Span } from './used-map.js';

const SUPERBLOCK_AT = 1024;
const SUPERBLOCK_SIZE = 1024;
const MAGIC = 0xef53;

const STATE_VALID = 0x1;
const STATE_ERRORS = 0x2;

const COMPAT_HAS_JOURNAL = 0x4;
const COMPAT_SPARSE_SUPER2 = 0x200;

const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_FLEX_BG = 0x200;
const INCOMPAT_CSUM_SEED = 0x2000;
/**
 * Incompatible features whose meaning for block allocation we know: everything but
 * compression (0x1), which no kernel implements, and bits defined later.
 * FILETYPE, RECOVER, JOURNAL_DEV, META_BG, EXTENTS, 64BIT, MMP, FLEX_BG, EA_INODE, DIRDATA,
 * CSUM_SEED, LARGEDIR, INLINE_DATA, ENCRYPT, CASEFOLD.
 */
const KNOWN_INCOMPAT = 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;

const RO_SPARSE_SUPER = 0x1;
const RO_LARGE_FILE = 0x2;
const RO_BTREE_DIR = 0x4;
const RO_GDT_CSUM = 0x10;
const RO_BIGALLOC = 0x200;
const RO_METADATA_CSUM = 0x400;

/** What ext2 and ext3 understood: anything beyond makes the filesystem ext4 (as blkid names it). */
const EXT2_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_META_BG;
const EXT3_INCOMPAT = EXT2_INCOMPAT | INCOMPAT_RECOVER;
const EXT23_RO_COMPAT = RO_SPARSE_SUPER | RO_LARGE_FILE | RO_BTREE_DIR;

const BG_BLOCK_UNINIT = 0x2;
/** Descriptors at least this long hold the high half of the bitmap checksum. */
const BG_BLOCK_BITMAP_CSUM_HI_END = 0x3c;
/** Bytes of the descriptor table, and of side-by-side bitmaps, read at a time. */
const DESCRIPTOR_CHUNK = 64 * 1024;
const BITMAP_CHUNK = 64 * 1024;
/** Flex groups up to this many groups have their members' metadata looked for in uninitialised groups too. */
const FLEX_PEERS_CHECKED = 64;

/** The superblock fields the driver uses, validated. */
export interface ExtSuperblock {
  blockSize: number;
  blocksCount: number;
  firstDataBlock: number;
  /** log2 of blocks per cluster (0 without bigalloc). */
  clusterBits: number;
  blocksPerGroup: number;
  clustersPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  state: number;
  compat: number;
  incompat: number;
  roCompat: number;
  uuid: Uint8Array;
  label: string;
  reservedGdtBlocks: number;
  descSize: number;
  firstMetaBg: number;
  backupGroups: [number, number];
  logGroupsPerFlex: number;
  checksumType: number;
  checksumSeedField: number;
  checksumOk: boolean;
  groups: number;
}

/**
 * The superblock at byte 1024 of `sb` (1024 bytes), or null without the ext magic. Geometry
 * that cannot be right comes back as a string saying why.
 */
export function parseExtSuperblock(sb: Uint8Array): ExtSuperblock | string | null {
  if (sb.length < SUPERBLOCK_SIZE) return null;
  const v = viewOf(sb);
  if (v.getUint16(0x38, true) !== MAGIC) return null;
  const logBlock = v.getUint32(0x18, true);
  if (logBlock > 6) return `block size 2^(10+${logBlock}) is not 1 KiB to 64 KiB`;
  const blockSize = 1024 << logBlock;
  const incompat = v.getUint32(0x60, true);
  const roCompat = v.getUint32(0x64, true);
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  const blocksCount = v.getUint32(0x04, true) + (is64 ? v.getUint32(0x150, true) * 0x100000000 : 0);
  const firstDataBlock = v.getUint32(0x14, true);
  const bigalloc = (roCompat & RO_BIGALLOC) !== 0;
  const logCluster = v.getUint32(0x1c, true);
  let clusterBits = 0;
  if (bigalloc) {
    if (logCluster < logBlock || logCluster - logBlock > 16) return `bigalloc cluster size 2^(10+${logCluster}) does not fit the block size`;
    clusterBits = logCluster - logBlock;
  }
  const blocksPerGroup = v.getUint32(0x20, true);
  const clustersPerGroup = bigalloc ? v.getUint32(0x24, true) : blocksPerGroup;
  const inodesPerGroup = v.getUint32(0x28, true);
  const revLevel = v.getUint32(0x4c, true);
  const inodeSize = revLevel === 0 ? 128 : v.getUint16(0x58, true);
  const descSize = is64 ? v.getUint16(0xfe, true) : 32;
  const reservedGdtBlocks = v.getUint16(0xce, true);
  if (clustersPerGroup === 0 || clustersPerGroup > blockSize * 8 || clustersPerGroup % 8 !== 0) return `${clustersPerGroup} clusters per group`;
  if (blocksPerGroup !== clustersPerGroup * 2 ** clusterBits) return `${blocksPerGroup} blocks per group for ${clustersPerGroup} clusters`;
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) return `${inodesPerGroup} inodes per group`;
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) return `inode size ${inodeSize}`;
  if (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0 || (is64 && descSize < 64)) return `descriptor size ${descSize}`;
  if (firstDataBlock >= blocksPerGroup || (bigalloc && firstDataBlock !== 0)) return `first data block ${firstDataBlock}`;
  if (blocksCount <= firstDataBlock || !Number.isSafeInteger(blocksCount * blockSize)) return `${blocksCount} blocks`;
  if (reservedGdtBlocks > blockSize / 4) return `${reservedGdtBlocks} reserved descriptor blocks`;
  const label = utf8z(sb.subarray(0x78, 0x88));
  return {
    blockSize,
    blocksCount,
    firstDataBlock,
    clusterBits,
    blocksPerGroup,
    clustersPerGroup,
    inodesPerGroup,
    inodeSize,
    state: v.getUint16(0x3a, true),
    compat: v.getUint32(0x5c, true),
    incompat,
    roCompat,
    uuid: sb.slice(0x68, 0x78),
    label,
    reservedGdtBlocks,
    descSize,
    firstMetaBg: v.getUint32(0x104, true),
    backupGroups: [v.getUint32(0x24c, true), v.getUint32(0x250, true)],
    logGroupsPerFlex: v.getUint8(0x174),
    checksumType: v.getUint8(0x175),
    checksumSeedField: v.getUint32(0x270, true),
    checksumOk: v.getUint32(0x3fc, true) === extCrc32c(0xffffffff, sb.subarray(0, 0x3fc)),
    groups: Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup),
  };
}

/** ext4's crc32c: the raw register update from `seed`, without the final inversion. */
function extCrc32c(seed: number, data: Uint8Array): number {
  return ~crc32cUpdate(~seed >>> 0, data) >>> 0;
}

function utf8z(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return new TextDecoder('utf-8').decode(nul < 0 ? b : b.subarray(0, nul));
}

function formatUuid(u: Uint8Array): string | null {
  if (u.every((x) => x === 0)) return null;
  const h = Array.from(u, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function typeOf(sb: { compat: number; incompat: number; roCompat: number }): string {
  if (sb.incompat & INCOMPAT_JOURNAL_DEV) return 'jbd';
  const oldRo = (sb.roCompat & ~EXT23_RO_COMPAT) === 0;
  if (sb.compat & COMPAT_HAS_JOURNAL) return oldRo && (sb.incompat & ~EXT3_INCOMPAT) === 0 ? 'ext3' : 'ext4';
  return oldRo && (sb.incompat & ~EXT2_INCOMPAT) === 0 ? 'ext2' : 'ext4';
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** State, and why the free space cannot be trusted (null when it can). */
function judge(sb: ExtSuperblock, region: Region): { state: FilesystemState; untrusted: string | null } {
  if (sb.incompat & INCOMPAT_JOURNAL_DEV) return { state: 'unknown', untrusted: 'an external journal device, not a filesystem' };
  if (sb.roCompat & RO_METADATA_CSUM) {
    if (sb.checksumType !== 1) return { state: 'unknown', untrusted: `unknown metadata checksum type ${sb.checksumType}` };
    if (!sb.checksumOk) return { state: 'unknown', untrusted: 'superblock checksum mismatch' };
  }
  const unknown = sb.incompat & ~KNOWN_INCOMPAT;
  if (unknown) return { state: 'unknown', untrusted: `unknown incompatible features ${hex(unknown)}` };
  if (sb.incompat & INCOMPAT_RECOVER) return { state: 'needs-recovery', untrusted: 'the journal needs recovery' };
  if (sb.state & STATE_ERRORS) return { state: 'dirty', untrusted: 'the filesystem has recorded errors (e2fsck needed)' };
  if (!(sb.state & STATE_VALID)) return { state: 'dirty', untrusted: 'not cleanly unmounted' };
  if (sb.blocksCount * sb.blockSize > region.length) return { state: 'clean', untrusted: 'the filesystem is larger than its partition' };
  return { state: 'clean', untrusted: null };
}

async function detect(dev: BlockDevice, region: Region): Promise<FilesystemInfo | null> {
  const sbBytes = await readInRegion(dev, region, SUPERBLOCK_AT, SUPERBLOCK_SIZE);
  if (!sbBytes) return null;
  const sb = parseExtSuperblock(sbBytes);
  if (sb === null) return null;
  const v = viewOf(sbBytes);
  const incompat = v.getUint32(0x60, true);
  if (typeof sb === 'string' || incompat & INCOMPAT_JOURNAL_DEV) {
    // A journal device has no block groups to validate; anything else here is damage.
    const type = typeOf({ compat: v.getUint32(0x5c, true), incompat, roCompat: v.getUint32(0x64, true) });
    const label = utf8z(sbBytes.subarray(0x78, 0x88)) || null;
    const why = typeof sb === 'string' && type !== 'jbd' ? `damaged superblock: ${sb}` : 'an external journal device, not a filesystem';
    return { type, label, uuid: formatUuid(sbBytes.subarray(0x68, 0x78)), size: 0, state: 'unknown', untrusted: why };
  }
  const { state, untrusted } = judge(sb, region);
  return {
    type: typeOf(sb),
    label: sb.label === '' ? null : sb.label,
    uuid: formatUuid(sb.uuid),
    size: sb.blocksCount * sb.blockSize,
    state,
    untrusted,
  };
}

/** Where the block groups are and what their fixed metadata is. */
class Geometry {
  readonly descPerBlock: number;
  /** Blocks of the primary descriptor table (without the reserved ones). */
  readonly gdtBlocks: number;
  /** The block after the one holding the primary superblock: where the descriptor table starts. */
  readonly gdtStart: number;
  readonly inodeTableBlocks: number;
  readonly csumSeed: number;
  readonly metaBg: boolean;
  readonly groupCsum: 'crc32c' | 'crc16' | null;

  constructor(readonly sb: ExtSuperblock) {
    this.descPerBlock = sb.blockSize / sb.descSize;
    this.gdtBlocks = Math.ceil(sb.groups / this.descPerBlock);
    this.gdtStart = Math.floor(SUPERBLOCK_AT / sb.blockSize) + 1;
    this.inodeTableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
    this.csumSeed = sb.incompat & INCOMPAT_CSUM_SEED ? sb.checksumSeedField : extCrc32c(0xffffffff, sb.uuid);
    this.metaBg = (sb.incompat & INCOMPAT_META_BG) !== 0;
    this.groupCsum = sb.roCompat & RO_METADATA_CSUM ? 'crc32c' : sb.roCompat & RO_GDT_CSUM ? 'crc16' : null;
  }

  firstBlock(g: number): number {
    return this.sb.firstDataBlock + g * this.sb.blocksPerGroup;
  }

  blockCount(g: number): number {
    return Math.min(this.sb.blocksPerGroup, this.sb.blocksCount - this.firstBlock(g));
  }

  hasSuper(g: number): boolean {
    const sb = this.sb;
    if (g === 0) return true;
    if (sb.compat & COMPAT_SPARSE_SUPER2) return g === sb.backupGroups[0] || g === sb.backupGroups[1];
    if (g === 1 || !(sb.roCompat & RO_SPARSE_SUPER)) return true;
    if (g % 2 === 0) return false;
    return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
  }

  /** The block holding group g's superblock copy (group 0: the primary's). */
  private superBlock(g: number): number {
    return g === 0 ? this.gdtStart - 1 : this.firstBlock(g);
  }

  /** Byte offset of group g's descriptor in the primary table. */
  descriptorOffset(g: number): number {
    const mg = Math.floor(g / this.descPerBlock);
    let block: number;
    if (!this.metaBg || mg < this.sb.firstMetaBg) block = this.gdtStart + mg;
    else {
      const first = mg * this.descPerBlock;
      block = this.superBlock(first) + (this.hasSuper(first) ? 1 : 0);
    }
    return block * this.sb.blockSize + (g % this.descPerBlock) * this.sb.descSize;
  }

  /**
   * The fixed metadata of group g as [first block, count] pieces: blocks before the first
   * group, the superblock copy and the descriptor table copy with its reserved blocks (or, with
   * meta_bg, the meta group's descriptor block).
   */
  fixedMetadata(g: number): [number, number][] {
    const out: [number, number][] = [];
    const sb = this.sb;
    if (g === 0) out.push([0, this.gdtStart]);
    if (this.hasSuper(g)) {
      out.push([this.superBlock(g), 1]);
      const oldDesc = this.metaBg ? Math.min(sb.firstMetaBg, this.gdtBlocks) : this.gdtBlocks + sb.reservedGdtBlocks;
      if (oldDesc > 0) out.push([this.superBlock(g) + 1, oldDesc]);
    }
    if (this.metaBg && Math.floor(g / this.descPerBlock) >= sb.firstMetaBg) {
      const r = g % this.descPerBlock;
      if (r === 0 || r === 1 || r === this.descPerBlock - 1) out.push([this.superBlock(g) + (this.hasSuper(g) ? 1 : 0), 1]);
    }
    return out;
  }
}

function isPowerOf(g: number, base: number): boolean {
  while (g % base === 0) g /= base;
  return g === 1;
}

/** One group descriptor's fields the used map needs. */
interface Descriptor {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
  /** bg_free_blocks_count: free clusters, as the filesystem counts them. */
  freeClusters: number;
  bitmapCsum: number;
  checksumOk: boolean;
}

async function readDescriptor(geo: Geometry, reader: ChunkReader, g: number): Promise<Descriptor | null> {
  const size = geo.sb.descSize;
  const d = await reader.read(geo.descriptorOffset(g), size);
  if (!d) return null;
  const v = viewOf(d);
  const wide = size >= 64;
  const hi = (at: number): number => (wide ? v.getUint32(at, true) * 0x100000000 : 0);
  const csumLo = v.getUint16(0x18, true);
  return {
    blockBitmap: v.getUint32(0x0, true) + hi(0x20),
    inodeBitmap: v.getUint32(0x4, true) + hi(0x24),
    inodeTable: v.getUint32(0x8, true) + hi(0x28),
    flags: v.getUint16(0x12, true),
    freeClusters: v.getUint16(0x0c, true) + (wide ? v.getUint16(0x2c, true) * 0x10000 : 0),
    bitmapCsum: size >= BG_BLOCK_BITMAP_CSUM_HI_END ? csumLo + v.getUint16(0x38, true) * 0x10000 : csumLo,
    checksumOk: descriptorChecksumOk(geo, g, d),
  };
}

function descriptorChecksumOk(geo: Geometry, g: number, d: Uint8Array): boolean {
  if (!geo.groupCsum) return true;
  const stored = viewOf(d).getUint16(0x1e, true);
  const groupLe = new Uint8Array(4);
  viewOf(groupLe).setUint32(0, g, true);
  if (geo.groupCsum === 'crc32c') {
    let c = extCrc32c(geo.csumSeed, groupLe);
    c = extCrc32c(c, d.subarray(0, 0x1e));
    c = extCrc32c(c, new Uint8Array(2));
    if (d.length > 0x20) c = extCrc32c(c, d.subarray(0x20));
    return (c & 0xffff) === stored;
  }
  let c = crc16Update(0xffff, geo.sb.uuid);
  c = crc16Update(c, groupLe);
  c = crc16Update(c, d.subarray(0, 0x1e));
  if (geo.sb.incompat & INCOMPAT_64BIT && d.length > 0x20) c = crc16Update(c, d.subarray(0x20));
  return c === stored;
}

/** Mark in `used` (one bit per cluster of group g) the blocks [first, first+count) that fall inside the group. */
function markBlocks(geo: Geometry, g: number, used: Uint8Array, first: number, count: number): void {
  const start = geo.firstBlock(g);
  const end = start + geo.blockCount(g);
  const a = Math.max(first, start);
  const b = Math.min(first + count, end);
  if (b <= a) return;
  const bits = geo.sb.clusterBits;
  const c0 = Math.floor((a - start) / 2 ** bits);
  const c1 = Math.ceil((b - start) / 2 ** bits);
  for (let c = c0; c < c1; c++) used[c >> 3] = used[c >> 3]! | (1 << (c & 7));
}

function markGroupOwnMetadata(geo: Geometry, g: number, used: Uint8Array, d: Descriptor): void {
  markBlocks(geo, g, used, d.blockBitmap, 1);
  markBlocks(geo, g, used, d.inodeBitmap, 1);
  markBlocks(geo, g, used, d.inodeTable, geo.inodeTableBlocks);
}

/** Reads the descriptor table and the block bitmaps, each through its own cache. */
interface Readers {
  descriptors: ChunkReader;
  /** With flex_bg the bitmaps of a flex group lie side by side and are read a chunk at a time. */
  bitmaps: ChunkReader;
}

/** Clusters of group g (the last group may be short). */
function groupClusters(geo: Geometry, g: number): number {
  return Math.ceil(geo.blockCount(g) / 2 ** geo.sb.clusterBits);
}

/**
 * Group g's metadata as a bitmap (one bit per cluster): its own bitmaps and inode table, the
 * superblock and descriptor copies, and, with flex_bg, the bitmaps and inode tables of the flex
 * group's other members that lie in it. Null when a member's descriptor cannot be believed.
 * This is exactly what is used in a group holding no data (what the kernel computes for a
 * BLOCK_UNINIT group).
 */
async function metadataOnly(geo: Geometry, reader: ChunkReader, g: number, d: Descriptor): Promise<Uint8Array | null> {
  const sb = geo.sb;
  const used = new Uint8Array(sb.clustersPerGroup / 8);
  const flex = sb.incompat & INCOMPAT_FLEX_BG ? 2 ** Math.min(sb.logGroupsPerFlex, 31) : 1;
  if (flex > 1 && flex <= FLEX_PEERS_CHECKED) {
    const first = Math.floor(g / flex) * flex;
    for (let p = first; p < Math.min(first + flex, sb.groups); p++) {
      if (p === g) continue;
      const pd = await readDescriptor(geo, reader, p);
      if (!pd || !pd.checksumOk) return null;
      markGroupOwnMetadata(geo, g, used, pd);
    }
  }
  markGroupOwnMetadata(geo, g, used, d);
  for (const [first, count] of geo.fixedMetadata(g)) markBlocks(geo, g, used, first, count);
  return used;
}

/** Bits set among the first `n` of `bits`. */
function countBits(bits: Uint8Array, n: number): number {
  let c = 0;
  bitRuns(bits, 0, n, 1, (a, b) => (c += b - a));
  return c;
}

/**
 * The free spans of group g (bytes), or none when nothing in it can be believed. With the
 * counters (see UsageSource), the bitmap is not read: a group whose free count says it holds
 * only its metadata has exactly that used, any other counts whole.
 */
async function groupFree(geo: Geometry, readers: Readers, g: number, usage: UsageSource): Promise<Span[]> {
  const sb = geo.sb;
  const reader = readers.descriptors;
  const d = await readDescriptor(geo, reader, g);
  if (!d || !d.checksumOk) return [];
  let used: Uint8Array | null;
  if ((d.flags & BG_BLOCK_UNINIT && geo.groupCsum) || usage === 'counters') {
    used = await metadataOnly(geo, reader, g, d);
    if (!used) return [];
    if (!(d.flags & BG_BLOCK_UNINIT && geo.groupCsum) && d.freeClusters !== groupClusters(geo, g) - countBits(used, groupClusters(geo, g))) return [];
  } else {
    if (d.blockBitmap < sb.firstDataBlock || d.blockBitmap >= sb.blocksCount) return [];
    const bitmap = await readers.bitmaps.read(d.blockBitmap * sb.blockSize, sb.clustersPerGroup / 8);
    if (!bitmap) return [];
    if (geo.groupCsum === 'crc32c') {
      let c = extCrc32c(geo.csumSeed, bitmap);
      if (sb.descSize < BG_BLOCK_BITMAP_CSUM_HI_END) c &= 0xffff;
      if (c !== d.bitmapCsum) return [];
    }
    used = bitmap.slice();
    markGroupOwnMetadata(geo, g, used, d);
    for (const [first, count] of geo.fixedMetadata(g)) markBlocks(geo, g, used, first, count);
  }
  const start = geo.firstBlock(g);
  const blocks = geo.blockCount(g);
  const ratio = 2 ** sb.clusterBits;
  const free: Span[] = [];
  bitRuns(used, 0, groupClusters(geo, g), 0, (c0, c1) => {
    const b0 = start + c0 * ratio;
    const b1 = Math.min(start + c1 * ratio, start + blocks);
    free.push({ start: b0 * sb.blockSize, end: b1 * sb.blockSize });
  });
  return free;
}

function readersOf(dev: BlockDevice, region: Region, sb: ExtSuperblock): Readers {
  // Without flex_bg each bitmap sits in its own group: a chunk of one block reads just it.
  const bitmapChunk = sb.incompat & INCOMPAT_FLEX_BG ? BITMAP_CHUNK : sb.blockSize;
  return { descriptors: new ChunkReader(dev, region, DESCRIPTOR_CHUNK), bitmaps: new ChunkReader(dev, region, bitmapChunk) };
}

async function* walkFree(dev: BlockDevice, region: Region, sb: ExtSuperblock, usage: UsageSource): AsyncGenerator<FreeStep> {
  const geo = new Geometry(sb);
  const readers = readersOf(dev, region, sb);
  for (let g = 0; g < sb.groups; g++) {
    const free = await groupFree(geo, readers, g, usage);
    yield { free, done: (geo.firstBlock(g) + geo.blockCount(g)) * sb.blockSize };
  }
}

/** The superblock, when the filesystem's free space can be believed; else null. */
async function trustedSuperblock(dev: BlockDevice, region: Region, info: FilesystemInfo): Promise<ExtSuperblock | null> {
  const sbBytes = await readInRegion(dev, region, SUPERBLOCK_AT, SUPERBLOCK_SIZE);
  const sb = sbBytes ? parseExtSuperblock(sbBytes) : null;
  return sb !== null && typeof sb !== 'string' && judge(sb, region).untrusted === null && info.untrusted === null ? sb : null;
}

async function* usedRuns(dev: BlockDevice, region: Region, info: FilesystemInfo, opts: UsedMapOptions = {}): AsyncGenerator<Run> {
  const sb = await trustedSuperblock(dev, region, info);
  const walk = sb ? walkFree(dev, region, sb, opts.usage ?? 'maps') : noFreeSpace();
  yield* usedFromFree(region, walk, opts, 'ext used map');
}

/**
 * The free bytes the group descriptors count, without a bitmap read: the sum of each group's
 * free count, over the groups whose descriptor verifies (a group that does not, or whose bitmap
 * lies outside the filesystem, counts nothing free, as in the used map).
 */
async function counterFreeBytes(dev: BlockDevice, region: Region, info: FilesystemInfo): Promise<number | null> {
  const sb = await trustedSuperblock(dev, region, info);
  if (!sb) return null;
  const geo = new Geometry(sb);
  const reader = readersOf(dev, region, sb).descriptors;
  let clusters = 0;
  for (let g = 0; g < sb.groups; g++) {
    const d = await readDescriptor(geo, reader, g);
    if (!d || !d.checksumOk) continue;
    if (!(d.flags & BG_BLOCK_UNINIT && geo.groupCsum) && (d.blockBitmap < sb.firstDataBlock || d.blockBitmap >= sb.blocksCount)) continue;
    clusters += Math.min(d.freeClusters, groupClusters(geo, g));
  }
  return Math.min(clusters * 2 ** sb.clusterBits * sb.blockSize, sb.blocksCount * sb.blockSize);
}

export const extDriver: FilesystemDriver = {
  types: ['ext2', 'ext3', 'ext4', 'jbd'],
  detect,
  usedRuns,
  counterFreeBytes,
};
