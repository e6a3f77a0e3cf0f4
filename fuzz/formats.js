// Where the structures are in an input, for the format-aware mutations (fuzz/mutate.js): each
// instance is { name, at, struct, reseal(bytes) } where `struct` is the field table the library
// itself decodes with (src/format, src/vhd via defineStruct), or { name, at, mutate(bytes, rng) }
// for entries with their own codec (VHDX BAT entries through encodeBatEntry). `reseal`
// recomputes the checksum that covers the instance: CRC-32C for VHDX headers, region tables and
// log entries, the one's complement sum for the VHD footer and dynamic header, CRC-32 for GPT,
// CRC-32C / CRC-16 for ext4, the update-sequence fixup for NTFS records.
//
// The partition tables and filesystems are read in src/inspect by offset, without declarations;
// their field tables are declared here, with defineStruct, from the same specifications.
// Finders read leniently and bound every count, so they work on damaged inputs too.
import { defineStruct, u8, u16, u32, u64, u64big, guid, ascii, bytes as rawBytes } from '../dist/codec/struct.js';
import { HEADER } from '../dist/format/header.js';
import { REGION_TABLE_HEADER, REGION_TABLE_ENTRY } from '../dist/format/region-table.js';
import { METADATA_TABLE_HEADER, METADATA_TABLE_ENTRY, FILE_PARAMETERS, VIRTUAL_DISK_SIZE, VIRTUAL_DISK_ID, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE } from '../dist/format/metadata.js';
import { PARENT_LOCATOR_HEADER, PARENT_LOCATOR_ENTRY } from '../dist/format/parent-locator.js';
import { LOG_ENTRY_HEADER, LOG_ZERO_DESCRIPTOR, LOG_DATA_DESCRIPTOR, LOG_DATA_SECTOR } from '../dist/format/log.js';
import { REGION_BAT, REGION_METADATA, ITEM_FILE_PARAMETERS, ITEM_VIRTUAL_DISK_SIZE, ITEM_VIRTUAL_DISK_ID, ITEM_LOGICAL_SECTOR_SIZE, ITEM_PHYSICAL_SECTOR_SIZE, ITEM_PARENT_LOCATOR } from '../dist/format/constants.js';
import { encodeBatEntry } from '../dist/format/bat.js';
import { decodeGuid } from '../dist/codec/guid.js';
import { crc32cWithZeroField, crc32cUpdate } from '../dist/codec/crc32c.js';
import { crc32, crc32WithZeroField } from '../dist/codec/crc32.js';
import { crc16Update } from '../dist/codec/crc16.js';
import { FOOTER } from '../dist/vhd/footer.js';
import { DYNAMIC_HEADER } from '../dist/vhd/dynamic-header.js';
import { BAT_ENTRY as VHD_BAT_ENTRY } from '../dist/vhd/bat.js';
import { PARENT_LOCATOR_ENTRY as VHD_LOCATOR } from '../dist/vhd/parent-locator.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const dv = (b) => new DataView(b.buffer, b.byteOffset, b.byteLength);
const ascii4 = (b, at) => (at + 4 <= b.length ? String.fromCharCode(b[at], b[at + 1], b[at + 2], b[at + 3]) : '');
const sealer = (struct, at) => (b) => {
  if (at + struct.size <= b.length) struct.seal(b.subarray(at, at + struct.size));
};

// ---- VHDX --------------------------------------------------------------------------------------

/** Log entries resealed by CRC-32C over EntryLength bytes (the checksum spans the whole entry). */
function logEntrySealer(at) {
  return (b) => {
    if (at + 64 > b.length) return;
    const len = dv(b).getUint32(at + 8, true);
    if (len < 4 * KiB || len > 64 * MiB || at + len > b.length) return;
    dv(b).setUint32(at + 4, crc32cWithZeroField(b.subarray(at, at + len), 4), true);
  };
}

export function vhdxStructures(b) {
  const out = [];
  if (b.length < 320 * KiB) return out;
  const v = dv(b);
  for (const [i, at] of [64 * KiB, 128 * KiB].entries()) out.push({ name: `header ${i + 1}`, at, struct: HEADER, reseal: sealer(HEADER, at) });
  let batAt = -1;
  let batLen = 0;
  let mdAt = -1;
  for (const [i, at] of [192 * KiB, 256 * KiB].entries()) {
    const reseal = sealer(REGION_TABLE_HEADER, at);
    out.push({ name: `region table ${i + 1}`, at, struct: REGION_TABLE_HEADER, reseal });
    const count = Math.min(v.getUint32(at + 8, true), 8);
    for (let e = 0; e < count; e++) {
      const eAt = at + 16 + e * 32;
      out.push({ name: `region table ${i + 1} entry ${e}`, at: eAt, struct: REGION_TABLE_ENTRY, reseal });
      const g = decodeGuid(b, eAt);
      const off = Number(v.getBigUint64(eAt + 16, true));
      if (g === REGION_BAT && batAt < 0) [batAt, batLen] = [off, v.getUint32(eAt + 24, true)];
      if (g === REGION_METADATA && mdAt < 0) mdAt = off;
    }
  }
  if (mdAt >= 0 && mdAt + 64 * KiB <= b.length) {
    out.push({ name: 'metadata table', at: mdAt, struct: METADATA_TABLE_HEADER });
    const count = Math.min(v.getUint16(mdAt + 10, true), 16);
    const items = {
      [ITEM_FILE_PARAMETERS]: FILE_PARAMETERS,
      [ITEM_VIRTUAL_DISK_SIZE]: VIRTUAL_DISK_SIZE,
      [ITEM_VIRTUAL_DISK_ID]: VIRTUAL_DISK_ID,
      [ITEM_LOGICAL_SECTOR_SIZE]: LOGICAL_SECTOR_SIZE,
      [ITEM_PHYSICAL_SECTOR_SIZE]: PHYSICAL_SECTOR_SIZE,
    };
    for (let e = 0; e < count; e++) {
      const eAt = mdAt + 32 + e * 32;
      out.push({ name: `metadata entry ${e}`, at: eAt, struct: METADATA_TABLE_ENTRY });
      const id = decodeGuid(b, eAt);
      const itemAt = mdAt + v.getUint32(eAt + 16, true);
      if (itemAt + 64 > b.length) continue;
      if (items[id]) out.push({ name: `metadata item ${items[id].name}`, at: itemAt, struct: items[id] });
      if (id === ITEM_PARENT_LOCATOR) {
        out.push({ name: 'parent locator', at: itemAt, struct: PARENT_LOCATOR_HEADER });
        const kv = Math.min(v.getUint16(itemAt + 18, true), 8);
        for (let k = 0; k < kv && itemAt + 20 + (k + 1) * 12 <= b.length; k++) {
          out.push({ name: `parent locator entry ${k}`, at: itemAt + 20 + k * 12, struct: PARENT_LOCATOR_ENTRY });
        }
      }
    }
  }
  if (batAt >= 0 && batAt < b.length) {
    const entries = Math.min(Math.floor(Math.min(batLen, b.length - batAt) / 8), 4096);
    // Entries in use most of the time; any entry of the BAT's first sectors otherwise.
    const used = [];
    for (let e = 0; e < entries; e++) if (v.getUint32(batAt + e * 8, true) & 7) used.push(e);
    const pickEntry = (rng) => (used.length && rng.chance(0.7) ? rng.pick(used) : rng.int(Math.max(1, entries)));
    if (entries > 0) {
      out.push({
        name: 'BAT entry',
        at: batAt,
        mutate: (bb, rng) => {
          const e = pickEntry(rng);
          const state = rng.pick([0, 1, 2, 3, 4, 5, 6, 6, 6, 7]);
          const fileMB = Math.ceil(bb.length / MiB);
          const mb = rng.pick([0, 1, 2, 3, rng.int(fileMB + 2), fileMB, fileMB - 1, rng.int(2 ** 20), 2 ** 44 - 1]);
          encodeBatEntry(dv(bb), batAt + e * 8, { state, fileOffsetMB: Math.max(0, mb) });
          if (rng.chance(0.1)) bb[batAt + e * 8 + 1] |= 1 << rng.int(8); // a reserved bit
          return `BAT entry ${e} = state ${state} at ${mb} MiB`;
        },
      });
    }
  }
  // The log: entries found by signature at 4 KiB steps, their descriptors and data sectors.
  const logOffset = Number(v.getBigUint64(64 * KiB + 72, true));
  const logLength = v.getUint32(64 * KiB + 68, true);
  if (logOffset > 0 && logOffset < b.length && logLength <= 64 * MiB) {
    const end = Math.min(b.length, logOffset + logLength);
    let found = 0;
    for (let at = logOffset; at + 4 * KiB <= end && found < 8; at += 4 * KiB) {
      if (ascii4(b, at) !== 'loge') continue;
      found++;
      const reseal = logEntrySealer(at);
      out.push({ name: 'log entry header', at, struct: LOG_ENTRY_HEADER, reseal });
      const count = Math.min(v.getUint32(at + 24, true), 8);
      let dataAt = at + 4 * KiB;
      for (let d = 0; d < count && at + 64 + (d + 1) * 32 <= end; d++) {
        const dAt = at + 64 + d * 32;
        const sig = ascii4(b, dAt);
        if (sig === 'zero') out.push({ name: `log zero descriptor ${d}`, at: dAt, struct: LOG_ZERO_DESCRIPTOR, reseal });
        else if (sig === 'desc') {
          out.push({ name: `log data descriptor ${d}`, at: dAt, struct: LOG_DATA_DESCRIPTOR, reseal });
          if (dataAt + 4 * KiB <= end) out.push({ name: 'log data sector', at: dataAt, struct: LOG_DATA_SECTOR, reseal });
          dataAt += 4 * KiB;
        }
      }
    }
  }
  return out;
}

// ---- VHD ---------------------------------------------------------------------------------------

export function vhdStructures(b) {
  const out = [];
  if (b.length < 512) return out;
  const footAt = b.length - 512;
  out.push({ name: 'footer', at: footAt, struct: FOOTER, reseal: sealer(FOOTER, footAt) });
  if (ascii4(b, 0) === 'cone') out.push({ name: 'footer copy', at: 0, struct: FOOTER, reseal: sealer(FOOTER, 0) });
  const v = dv(b);
  const dataOffset = v.getBigUint64(footAt + 16, false);
  if (dataOffset > 0n && dataOffset + 1024n <= BigInt(b.length)) {
    const at = Number(dataOffset);
    const reseal = sealer(DYNAMIC_HEADER, at);
    out.push({ name: 'dynamic header', at, struct: DYNAMIC_HEADER, reseal });
    for (let i = 0; i < 8; i++) out.push({ name: `parent locator ${i}`, at: at + 576 + i * 24, struct: VHD_LOCATOR, reseal });
    const table = v.getBigUint64(at + 16, false);
    const entries = Math.min(v.getUint32(at + 28, false), 1024);
    if (table > 0n && table < BigInt(b.length)) {
      const t = Number(table);
      for (let e = 0; e < Math.min(entries, 16) && t + (e + 1) * 4 <= b.length; e++) out.push({ name: `BAT entry ${e}`, at: t + e * 4, struct: VHD_BAT_ENTRY });
    }
  }
  return out;
}

// ---- partition tables and filesystems (declared here: src/inspect reads them by offset) ---------

export const MBR_ENTRY = defineStruct('MBR partition entry', 16, {
  status: { at: 0, type: u8 },
  chsFirst: { at: 1, type: rawBytes(3) },
  type: { at: 4, type: u8 },
  chsLast: { at: 5, type: rawBytes(3) },
  firstLba: { at: 8, type: u32 },
  sectors: { at: 12, type: u32 },
});

export const GPT_HEADER = defineStruct('GPT header', 92, {
  signature: { at: 0, type: ascii(8), expect: 'EFI PART' },
  revision: { at: 8, type: u32 },
  headerSize: { at: 12, type: u32 },
  headerCrc: { at: 16, type: u32 },
  reserved: { at: 20, type: u32 },
  myLba: { at: 24, type: u64big },
  alternateLba: { at: 32, type: u64big },
  firstUsableLba: { at: 40, type: u64big },
  lastUsableLba: { at: 48, type: u64big },
  diskGuid: { at: 56, type: guid },
  entriesLba: { at: 72, type: u64big },
  entryCount: { at: 80, type: u32 },
  entrySize: { at: 84, type: u32 },
  entriesCrc: { at: 88, type: u32 },
});

export const GPT_ENTRY = defineStruct('GPT partition entry', 128, {
  type: { at: 0, type: guid },
  guid: { at: 16, type: guid },
  firstLba: { at: 32, type: u64big },
  lastLba: { at: 40, type: u64big },
  attributes: { at: 48, type: u64big },
  name: { at: 56, type: rawBytes(72) },
});

export const EXT_SUPERBLOCK = defineStruct('ext superblock', 1024, {
  inodesCount: { at: 0x0, type: u32 },
  blocksCountLo: { at: 0x4, type: u32 },
  freeBlocksLo: { at: 0xc, type: u32 },
  freeInodes: { at: 0x10, type: u32 },
  firstDataBlock: { at: 0x14, type: u32 },
  logBlockSize: { at: 0x18, type: u32 },
  logClusterSize: { at: 0x1c, type: u32 },
  blocksPerGroup: { at: 0x20, type: u32 },
  clustersPerGroup: { at: 0x24, type: u32 },
  inodesPerGroup: { at: 0x28, type: u32 },
  magic: { at: 0x38, type: u16 },
  state: { at: 0x3a, type: u16 },
  revLevel: { at: 0x4c, type: u32 },
  inodeSize: { at: 0x58, type: u16 },
  compat: { at: 0x5c, type: u32 },
  incompat: { at: 0x60, type: u32 },
  roCompat: { at: 0x64, type: u32 },
  uuid: { at: 0x68, type: rawBytes(16) },
  reservedGdtBlocks: { at: 0xce, type: u16 },
  descSize: { at: 0xfe, type: u16 },
  firstMetaBg: { at: 0x104, type: u32 },
  blocksCountHi: { at: 0x150, type: u32 },
  logGroupsPerFlex: { at: 0x174, type: u8 },
  checksumType: { at: 0x175, type: u8 },
  checksumSeed: { at: 0x270, type: u32 },
  checksum: { at: 0x3fc, type: u32 },
});

export const EXT_GROUP_DESC = defineStruct('ext group descriptor', 32, {
  blockBitmapLo: { at: 0x0, type: u32 },
  inodeBitmapLo: { at: 0x4, type: u32 },
  inodeTableLo: { at: 0x8, type: u32 },
  freeBlocksLo: { at: 0xc, type: u16 },
  freeInodesLo: { at: 0xe, type: u16 },
  usedDirsLo: { at: 0x10, type: u16 },
  flags: { at: 0x12, type: u16 },
  blockBitmapCsumLo: { at: 0x18, type: u16 },
  itableUnusedLo: { at: 0x1c, type: u16 },
  checksum: { at: 0x1e, type: u16 },
});

export const NTFS_BOOT = defineStruct('NTFS boot sector', 512, {
  oemId: { at: 3, type: ascii(8), expect: 'NTFS    ' },
  bytesPerSector: { at: 0x0b, type: u16 },
  sectorsPerCluster: { at: 0x0d, type: u8 },
  reservedSectors: { at: 0x0e, type: u16 },
  media: { at: 0x15, type: u8 },
  totalSectors: { at: 0x28, type: u64big },
  mftCluster: { at: 0x30, type: u64big },
  mftMirrCluster: { at: 0x38, type: u64big },
  clustersPerRecord: { at: 0x40, type: u8 },
  clustersPerIndex: { at: 0x44, type: u8 },
  serial: { at: 0x48, type: u64big },
});

export const NTFS_RECORD = defineStruct('NTFS MFT record', 48, {
  magic: { at: 0, type: ascii(4), expect: 'FILE' },
  usaOffset: { at: 4, type: u16 },
  usaCount: { at: 6, type: u16 },
  lsn: { at: 8, type: u64big },
  sequence: { at: 16, type: u16 },
  links: { at: 18, type: u16 },
  attrsOffset: { at: 20, type: u16 },
  flags: { at: 22, type: u16 },
  bytesInUse: { at: 24, type: u32 },
  bytesAllocated: { at: 28, type: u32 },
  baseRecord: { at: 32, type: u64big },
  nextAttrId: { at: 40, type: u16 },
  recordNumber: { at: 44, type: u32 },
});

/** An NTFS attribute header (resident or not: the non-resident fields after 16 are read as such). */
export const NTFS_ATTRIBUTE = defineStruct('NTFS attribute', 64, {
  type: { at: 0, type: u32 },
  length: { at: 4, type: u32 },
  nonResident: { at: 8, type: u8 },
  nameLength: { at: 9, type: u8 },
  nameOffset: { at: 10, type: u16 },
  flags: { at: 12, type: u16 },
  id: { at: 14, type: u16 },
  valueLengthOrStartVcn: { at: 16, type: u64 },
  lastVcn: { at: 24, type: u64big },
  runsOffset: { at: 32, type: u16 },
  allocatedSize: { at: 40, type: u64big },
  dataSize: { at: 48, type: u64big },
  initializedSize: { at: 56, type: u64big },
});

function gptResealer(ss, hAt) {
  return (b) => {
    if (hAt + ss > b.length) return;
    const v = dv(b);
    const size = v.getUint32(hAt + 12, true);
    const count = v.getUint32(hAt + 80, true);
    const esize = v.getUint32(hAt + 84, true);
    const arrAt = Number(v.getBigUint64(hAt + 72, true)) * ss;
    if (count * esize > 0 && count * esize <= MiB && Number.isSafeInteger(arrAt) && arrAt + count * esize <= b.length) {
      v.setUint32(hAt + 88, crc32(b.subarray(arrAt, arrAt + count * esize)), true);
    }
    if (size >= 92 && size <= ss) v.setUint32(hAt + 16, crc32WithZeroField(b.subarray(hAt, hAt + size), 16), true);
  };
}

/** ext4's crc32c: the raw register without the final inversion (as src/inspect/ext.ts). */
const extCrc = (seed, data) => ~crc32cUpdate(~seed >>> 0, data) >>> 0;

function extStructures(b, at, out) {
  const sbAt = at + 1024;
  if (sbAt + 1024 > b.length || dv(b).getUint16(sbAt + 0x38, true) !== 0xef53) return;
  const v = dv(b);
  const sealSb = (bb) => {
    if (dv(bb).getUint32(sbAt + 0x64, true) & 0x400) dv(bb).setUint32(sbAt + 0x3fc, extCrc(0xffffffff, bb.subarray(sbAt, sbAt + 0x3fc)), true);
  };
  out.push({ name: 'ext superblock', at: sbAt, struct: EXT_SUPERBLOCK, reseal: sealSb });
  const logBs = v.getUint32(sbAt + 0x18, true);
  if (logBs > 6) return;
  const bs = 1024 << logBs;
  const incompat = v.getUint32(sbAt + 0x60, true);
  const roCompat = v.getUint32(sbAt + 0x64, true);
  const descSize = incompat & 0x80 ? Math.max(32, v.getUint16(sbAt + 0xfe, true)) : 32;
  if (descSize > 1024) return;
  const gdAt = at + (Math.floor(1024 / bs) + 1) * bs;
  const uuid = b.slice(sbAt + 0x68, sbAt + 0x78);
  const seed = incompat & 0x2000 ? v.getUint32(sbAt + 0x270, true) : extCrc(0xffffffff, uuid);
  for (let g = 0; g < 4 && gdAt + (g + 1) * descSize <= b.length; g++) {
    const dAt = gdAt + g * descSize;
    const reseal = (bb) => {
      const d = bb.slice(dAt, dAt + descSize);
      d[0x1e] = 0;
      d[0x1f] = 0;
      const le = new Uint8Array(4);
      dv(le).setUint32(0, g, true);
      let c;
      if (roCompat & 0x400) c = extCrc(extCrc(seed, le), d) & 0xffff;
      else if (roCompat & 0x10) {
        c = crc16Update(crc16Update(crc16Update(0xffff, uuid), le), d.subarray(0, 0x1e));
        if (incompat & 0x80 && descSize > 0x20) c = crc16Update(c, d.subarray(0x20));
      } else return;
      dv(bb).setUint16(dAt + 0x1e, c, true);
    };
    out.push({ name: `ext group descriptor ${g}`, at: dAt, struct: EXT_GROUP_DESC, reseal });
  }
}

/** Redo an NTFS record's update-sequence fixup (the record at `at`, `size` bytes, in its fixed-up form on disk). */
function ntfsFixupResealer(at, size) {
  // The mutation edits the record as stored; resealing puts the USN back at each stride's end
  // after saving what the mutation left there into the update-sequence array.
  return (b) => {
    if (at + size > b.length) return;
    const v = dv(b);
    const usaAt = v.getUint16(at + 4, true);
    const count = v.getUint16(at + 6, true);
    if (count !== size / 512 + 1 || usaAt < 8 || usaAt + count * 2 > 510) return;
    const usn = v.getUint16(at + usaAt, true);
    for (let i = 1; i < count; i++) {
      const end = at + i * 512 - 2;
      if (v.getUint16(end, true) !== usn) v.setUint16(at + usaAt + i * 2, v.getUint16(end, true), true);
      v.setUint16(end, usn, true);
    }
  };
}

function ntfsStructures(b, at, out) {
  if (at + 512 > b.length || String.fromCharCode(...b.subarray(at + 3, at + 11)) !== 'NTFS    ') return;
  const v = dv(b);
  out.push({ name: 'NTFS boot sector', at, struct: NTFS_BOOT });
  const ss = v.getUint16(at + 0x0b, true);
  const spc = b[at + 0x0d];
  const cs = ss * (spc <= 0x80 ? spc : 2 ** (256 - spc));
  const cpr = v.getInt8(at + 0x40);
  const rs = cpr > 0 ? cpr * cs : 2 ** -cpr;
  if (!(rs >= 512 && rs <= 4096 && cs > 0 && cs <= 64 * KiB)) return;
  const mftAt = at + Number(v.getBigUint64(at + 0x30, true)) * cs;
  if (!Number.isSafeInteger(mftAt)) return;
  for (const rec of [0, 3, 5, 6]) {
    const rAt = mftAt + rec * rs;
    if (rAt + rs > b.length || ascii4(b, rAt) !== 'FILE') continue;
    const reseal = ntfsFixupResealer(rAt, rs);
    out.push({ name: `MFT record ${rec}`, at: rAt, struct: NTFS_RECORD, reseal });
    let aAt = rAt + v.getUint16(rAt + 20, true);
    for (let k = 0; k < 8 && aAt + 64 <= rAt + rs; k++) {
      const type = v.getUint32(aAt, true);
      const len = v.getUint32(aAt + 4, true);
      if (type === 0xffffffff || len < 16 || len > rs) break;
      out.push({ name: `MFT record ${rec} attribute 0x${type.toString(16)}`, at: aAt, struct: NTFS_ATTRIBUTE, reseal });
      aAt += len;
    }
  }
}

/** Structures of a raw disk: MBR (and EBR chain) or GPT, and the ext/NTFS filesystems in its partitions. */
export function diskStructures(b) {
  const out = [];
  if (b.length < 1024) return out;
  const v = dv(b);
  const parts = [];
  for (let e = 0; e < 4; e++) {
    const at = 446 + e * 16;
    out.push({ name: `MBR entry ${e}`, at, struct: MBR_ENTRY });
    const type = b[at + 4];
    const first = v.getUint32(at + 8, true);
    if (type === 0x05 || type === 0x0f) {
      // The EBR chain, bounded.
      let ebr = first;
      for (let k = 0; k < 8 && ebr > 0 && (ebr + 1) * 512 <= b.length; k++) {
        const eAt = ebr * 512;
        out.push({ name: `EBR ${k} entry 0`, at: eAt + 446, struct: MBR_ENTRY }, { name: `EBR ${k} entry 1`, at: eAt + 462, struct: MBR_ENTRY });
        parts.push((ebr + v.getUint32(eAt + 446 + 8, true)) * 512);
        const next = v.getUint32(eAt + 462 + 8, true);
        if (next === 0) break;
        ebr = first + next;
      }
    } else if (type !== 0 && type !== 0xee) parts.push(first * 512);
  }
  for (const ss of [512, 4096]) {
    if (ss + 512 > b.length || String.fromCharCode(...b.subarray(ss, ss + 8)) !== 'EFI PART') continue;
    for (const hAt of [ss, b.length - ss]) {
      if (String.fromCharCode(...b.subarray(hAt, hAt + 8)) !== 'EFI PART') continue;
      const reseal = gptResealer(ss, hAt);
      out.push({ name: `GPT header at ${hAt}`, at: hAt, struct: GPT_HEADER, reseal });
      const arrAt = Number(v.getBigUint64(hAt + 72, true)) * ss;
      const esize = v.getUint32(hAt + 84, true);
      if (!Number.isSafeInteger(arrAt) || esize < 128 || esize > 4096) continue;
      for (let e = 0; e < 8 && arrAt + (e + 1) * esize <= b.length; e++) {
        const eAt = arrAt + e * esize;
        if (b.subarray(eAt, eAt + 16).every((x) => x === 0)) continue;
        out.push({ name: `GPT entry ${e} at ${hAt}`, at: eAt, struct: GPT_ENTRY, reseal });
        if (hAt === ss) parts.push(Number(v.getBigUint64(eAt + 32, true)) * ss);
      }
    }
  }
  for (const p of parts) {
    if (!Number.isSafeInteger(p) || p <= 0 || p >= b.length) continue;
    extStructures(b, p, out);
    ntfsStructures(b, p, out);
  }
  return out;
}

/** GUID-sized values found in a VHDX input (header GUIDs, the log's), to copy between fields. */
export function vhdxGuids(b) {
  if (b.length < 128 * KiB + 64) return [];
  const out = [];
  for (const h of [64 * KiB, 128 * KiB]) for (const f of [16, 32, 48]) out.push(b.slice(h + f, h + f + 16));
  const logOffset = Number(dv(b).getBigUint64(64 * KiB + 72, true));
  if (logOffset > 0 && logOffset + 48 <= b.length) out.push(b.slice(logOffset + 32, logOffset + 48));
  return out;
}

