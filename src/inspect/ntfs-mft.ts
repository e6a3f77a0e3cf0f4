/**
 * NTFS structures the driver reads: the boot sector, MFT records with their update-sequence
 * fixups, attributes, runlists (mapping pairs) and the data of a non-resident attribute (the
 * Linux-NTFS project's "NTFS Documentation": Boot sector, FILE record, Attribute header, Data
 * runs, $AttributeList).
 *
 * Every offset and length read from a record is checked against the record before use; a run
 * must lie inside the volume; a record whose fixups do not match is damaged and not used.
 */
import { viewOf } from '../codec/struct.js';
import type { BlockDevice } from '../device/block-device.js';
import type { Region } from './filesystem.js';
import { readInRegion } from './used-map.js';

/** The update sequence protects every 512 bytes of a record, whatever the sector size. */
const STRIDE = 512;
const MAX_CLUSTER = 2 * 1024 * 1024;
const MAX_RECORD = 64 * 1024;
/** Bytes of an $ATTRIBUTE_LIST read at most (lists hold a few dozen entries of ~32 bytes). */
const MAX_ATTRIBUTE_LIST = 256 * 1024;
/** Extension records followed for one attribute at most. */
const MAX_EXTENTS = 1024;

export const AT_ATTRIBUTE_LIST = 0x20;
export const AT_FILE_NAME = 0x30;
export const AT_VOLUME_NAME = 0x60;
export const AT_VOLUME_INFORMATION = 0x70;
export const AT_DATA = 0x80;
export const AT_INDEX_ROOT = 0x90;
export const AT_INDEX_ALLOCATION = 0xa0;
const AT_END = 0xffffffff;

export const MFT_RECORD_IN_USE = 0x1;

export interface NtfsGeometry {
  sectorSize: number;
  clusterSize: number;
  /** Clusters of the volume (whole clusters in its sectors). */
  clusters: number;
  mftCluster: number;
  recordSize: number;
  indexBlockSize: number;
  /** Bytes the boot sector says the volume spans. */
  size: number;
  serial: bigint;
}

/** A size given in clusters when positive, else as 2^-x bytes (records and index blocks). */
function recordBytes(x: number, clusterSize: number): number | null {
  const n = x > 0 ? x * clusterSize : x < 0 && x >= -31 ? 2 ** -x : 0;
  return n >= 256 && n <= MAX_RECORD && (n & (n - 1)) === 0 ? n : null;
}

/** The boot sector as NTFS geometry, or null when it is not an NTFS boot sector. */
export function parseNtfsBootSector(b: Uint8Array): NtfsGeometry | null {
  if (b.length < 512 || String.fromCharCode(...b.subarray(3, 11)) !== 'NTFS    ') return null;
  const v = viewOf(b);
  const sectorSize = v.getUint16(0x0b, true);
  if (sectorSize < 256 || sectorSize > 4096 || (sectorSize & (sectorSize - 1)) !== 0) return null;
  const spcByte = b[0x0d]!;
  // Above 0x80 the byte is a negative power: 2^(256 - x) sectors per cluster.
  const spc = spcByte <= 0x80 ? spcByte : 2 ** (256 - spcByte);
  if (spc === 0 || (spc & (spc - 1)) !== 0 || spc * sectorSize > MAX_CLUSTER) return null;
  // Fields FAT uses must be zero (reserved sectors, FATs, root entries, sectors, FAT size, large sectors).
  if (v.getUint16(0x0e, true) || b[0x10] || v.getUint16(0x11, true) || v.getUint16(0x13, true) || v.getUint16(0x16, true) || v.getUint32(0x20, true)) return null;
  const totalSectors = v.getBigUint64(0x28, true);
  const mftCluster = v.getBigUint64(0x30, true);
  const clusterSize = spc * sectorSize;
  const size = Number(totalSectors) * sectorSize;
  if (totalSectors === 0n || !Number.isSafeInteger(size)) return null;
  const clusters = Math.floor(Number(totalSectors) / spc);
  if (mftCluster >= BigInt(clusters)) return null;
  const recordSize = recordBytes(v.getInt8(0x40), clusterSize);
  const indexBlockSize = recordBytes(v.getInt8(0x44), clusterSize);
  if (recordSize === null || indexBlockSize === null || recordSize < sectorSize) return null;
  return { sectorSize, clusterSize, clusters, mftCluster: Number(mftCluster), recordSize, indexBlockSize, size, serial: v.getBigUint64(0x48, true) };
}

/**
 * Check the signature and undo the update-sequence fixups of a multi-sector record in place
 * ("FILE", "INDX"): the last two bytes of every 512-byte stride must hold the update sequence
 * number, and get back the saved bytes. False when the record is damaged.
 */
export function applyFixups(rec: Uint8Array, magic: string): boolean {
  if (rec.length < STRIDE || rec.length % STRIDE !== 0) return false;
  if (String.fromCharCode(rec[0]!, rec[1]!, rec[2]!, rec[3]!) !== magic) return false;
  const v = viewOf(rec);
  const usaAt = v.getUint16(4, true);
  const usaCount = v.getUint16(6, true);
  if (usaCount !== rec.length / STRIDE + 1 || usaAt % 2 !== 0 || usaAt < 8 || usaAt + usaCount * 2 > STRIDE - 2) return false;
  const usn = v.getUint16(usaAt, true);
  for (let i = 1; i < usaCount; i++) {
    const end = i * STRIDE - 2;
    if (v.getUint16(end, true) !== usn) return false;
    v.setUint16(end, v.getUint16(usaAt + i * 2, true), true);
  }
  return true;
}

/** One run of a runlist: `length` clusters from `vcn`, at `lcn` (null: sparse, reads as zeros). */
export interface DataRun {
  vcn: number;
  lcn: number | null;
  length: number;
}

export interface Attribute {
  type: number;
  name: string;
  nonResident: boolean;
  /** Resident: the value. */
  value: Uint8Array | null;
  /** Non-resident: first and last VCN of this extent, sizes, and its runs (null when the runlist is damaged). */
  lowestVcn: number;
  highestVcn: number;
  dataSize: number;
  initializedSize: number;
  runs: DataRun[] | null;
}

/** Little-endian integer of `n` bytes (n <= 8), signed or not; null when beyond 2^53. */
function readInt(b: Uint8Array, at: number, n: number, signed: boolean): number | null {
  let x = 0;
  for (let i = n - 1; i >= 0; i--) x = x * 256 + b[at + i]!;
  if (signed && n > 0 && b[at + n - 1]! & 0x80) x -= 2 ** (8 * n);
  return Number.isSafeInteger(x) ? x : null;
}

/** Decode mapping pairs in b[at, end) starting at `vcn`; every run must lie inside `clusters`. */
export function decodeRunlist(b: Uint8Array, at: number, end: number, vcn: number, clusters: number): DataRun[] | null {
  const runs: DataRun[] = [];
  let lcn = 0;
  while (at < end) {
    const h = b[at]!;
    if (h === 0) return runs;
    const lenBytes = h & 0x0f;
    const offBytes = h >> 4;
    if (lenBytes === 0 || lenBytes > 8 || offBytes > 8 || at + 1 + lenBytes + offBytes > end) return null;
    const length = readInt(b, at + 1, lenBytes, false);
    if (length === null || length <= 0) return null;
    if (offBytes === 0) runs.push({ vcn, lcn: null, length });
    else {
      const delta = readInt(b, at + 1 + lenBytes, offBytes, true);
      if (delta === null) return null;
      lcn += delta;
      if (lcn < 0 || lcn + length > clusters) return null;
      runs.push({ vcn, lcn, length });
    }
    vcn += length;
    at += 1 + lenBytes + offBytes;
  }
  return null; // no terminator inside the attribute
}

/** The attributes of a fixed-up MFT record, each checked to lie inside the record's used bytes. */
export function* attributes(rec: Uint8Array, clusters: number): Generator<Attribute> {
  const v = viewOf(rec);
  const inUse = v.getUint32(0x18, true);
  const limit = Math.min(inUse, rec.length);
  let at = v.getUint16(0x14, true);
  while (at + 8 <= limit) {
    const type = v.getUint32(at, true);
    if (type === AT_END) return;
    const length = v.getUint32(at + 4, true);
    if (length < 0x18 || length % 8 !== 0 || at + length > limit) return;
    const a = rec.subarray(at, at + length);
    const av = viewOf(a);
    const nonResident = a[8] !== 0;
    const nameLength = a[9]!;
    const nameAt = av.getUint16(0x0a, true);
    if (nameAt + nameLength * 2 > length) return;
    const name = nameLength ? new TextDecoder('utf-16le').decode(a.subarray(nameAt, nameAt + nameLength * 2)) : '';
    const attr: Attribute = { type, name, nonResident, value: null, lowestVcn: 0, highestVcn: -1, dataSize: 0, initializedSize: 0, runs: null };
    if (!nonResident) {
      const valueLength = av.getUint32(0x10, true);
      const valueAt = av.getUint16(0x14, true);
      if (valueAt + valueLength > length) return;
      attr.value = a.subarray(valueAt, valueAt + valueLength);
      attr.dataSize = attr.initializedSize = valueLength;
    } else {
      if (length < 0x40) return;
      const low = readInt(a, 0x10, 8, true);
      const high = readInt(a, 0x18, 8, true);
      const pairsAt = av.getUint16(0x20, true);
      const dataSize = readInt(a, 0x30, 8, true);
      const initialized = readInt(a, 0x38, 8, true);
      if (low === null || high === null || dataSize === null || initialized === null || low < 0 || dataSize < 0 || initialized < 0) return;
      attr.lowestVcn = low;
      attr.highestVcn = high;
      attr.dataSize = dataSize;
      attr.initializedSize = initialized;
      const runs = pairsAt >= 0x40 && pairsAt < length ? decodeRunlist(a, pairsAt, length, low, clusters) : null;
      const covered = runs ? runs.reduce((n, r) => n + r.length, low) : 0;
      attr.runs = runs && covered === high + 1 ? runs : null;
    }
    yield attr;
    at += length;
  }
}

/** Reads MFT records by number through $MFT's own runlist. */
export class Mft {
  private constructor(
    private readonly dev: BlockDevice,
    private readonly region: Region,
    readonly geo: NtfsGeometry,
    private runs: DataRun[],
  ) {}

  /** Read record 0 where the boot sector says, and map the whole $MFT from it; null on damage. */
  static async open(dev: BlockDevice, region: Region, geo: NtfsGeometry): Promise<Mft | null> {
    const rec = await readInRegion(dev, region, geo.mftCluster * geo.clusterSize, geo.recordSize);
    if (!rec || !applyFixups(rec, 'FILE')) return null;
    const first = [...attributes(rec, geo.clusters)].find((a) => a.type === AT_DATA && a.name === '' && a.lowestVcn === 0);
    if (!first?.runs) return null;
    // The first extent maps records 0-15 at least, enough to read $MFT's own extension records.
    const mft = new Mft(dev, region, geo, first.runs);
    const all = await mft.data(0, rec);
    if (all?.runs) mft.runs = all.runs;
    return mft;
  }

  /** Record `n` with its fixups undone, or null when it is unreadable or damaged. */
  async record(n: number): Promise<Uint8Array | null> {
    const rec = await this.read(this.runs, n * this.geo.recordSize, this.geo.recordSize, false);
    return rec && applyFixups(rec, 'FILE') ? rec : null;
  }

  /**
   * Bytes [offset, offset + length) of an attribute's data through its runs; sparse runs read
   * as zeros when `sparseOk`, else make the read fail. Null when unmapped or outside the region.
   */
  async read(runs: readonly DataRun[], offset: number, length: number, sparseOk: boolean): Promise<Uint8Array | null> {
    const cs = this.geo.clusterSize;
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const vcn = Math.floor(pos / cs);
      const run = findRun(runs, vcn);
      if (!run || (run.lcn === null && !sparseOk)) return null;
      const inRun = pos - run.vcn * cs;
      const n = Math.min(length - done, run.length * cs - inRun);
      if (run.lcn !== null) {
        const part = await readInRegion(this.dev, this.region, run.lcn * cs + inRun, n);
        if (!part) return null;
        out.set(part, done);
      }
      done += n;
    }
    return out;
  }

  /**
   * The unnamed $DATA attribute of record `n` (`rec`, already read): its first extent, which
   * holds the sizes (and the value when resident), and all its runs, following an
   * $ATTRIBUTE_LIST to extension records. `runs` is null when they cannot all be found or do
   * not join up; the whole result is null when there is no such attribute.
   */
  async data(n: number, rec: Uint8Array): Promise<{ attr: Attribute; runs: DataRun[] | null } | null> {
    const attrs = [...attributes(rec, this.geo.clusters)];
    const list = attrs.find((a) => a.type === AT_ATTRIBUTE_LIST);
    const first = attrs.find((a) => a.type === AT_DATA && a.name === '' && a.lowestVcn === 0);
    if (!list) return first ? { attr: first, runs: first.runs } : null;
    const extents = await this.extentsThroughList(n, rec, list);
    if (!extents) return first ? { attr: first, runs: null } : null;
    const runs: DataRun[] = [];
    let next = 0;
    for (const a of extents) {
      if (a.lowestVcn !== next || !a.runs) return { attr: extents[0]!, runs: null };
      runs.push(...a.runs);
      next = a.highestVcn + 1;
    }
    return { attr: extents[0]!, runs };
  }

  /** The extents of the unnamed $DATA listed in an $ATTRIBUTE_LIST, in VCN order; null on damage. */
  private async extentsThroughList(n: number, rec: Uint8Array, list: Attribute): Promise<Attribute[] | null> {
    let bytes = list.value;
    if (!bytes) {
      if (!list.runs || list.dataSize > MAX_ATTRIBUTE_LIST) return null;
      bytes = await this.read(list.runs, 0, list.dataSize, false);
      if (!bytes) return null;
    }
    const v = viewOf(bytes);
    const wanted: { vcn: number; record: number }[] = [];
    for (let at = 0; at + 0x1a <= bytes.length; ) {
      const len = v.getUint16(at + 4, true);
      if (len < 0x1a || at + len > bytes.length) return null;
      if (v.getUint32(at, true) === AT_DATA && bytes[at + 6] === 0) {
        const vcn = readInt(bytes, at + 8, 8, true);
        if (vcn === null || wanted.length >= MAX_EXTENTS) return null;
        wanted.push({ vcn, record: v.getUint32(at + 0x10, true) + v.getUint16(at + 0x14, true) * 0x100000000 });
      }
      at += len;
    }
    wanted.sort((a, b) => a.vcn - b.vcn);
    const out: Attribute[] = [];
    for (const e of wanted) {
      const r = e.record === n ? rec : await this.record(e.record);
      const a = r ? [...attributes(r, this.geo.clusters)].find((x) => x.type === AT_DATA && x.name === '' && x.lowestVcn === e.vcn) : undefined;
      if (!a) return null;
      out.push(a);
    }
    return out.length ? out : null;
  }
}

function findRun(runs: readonly DataRun[], vcn: number): DataRun | null {
  let lo = 0;
  let hi = runs.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = runs[mid]!;
    if (vcn < r.vcn) hi = mid - 1;
    else if (vcn >= r.vcn + r.length) lo = mid + 1;
    else return r;
  }
  return null;
}
