/**
 * The master boot record and the extended boot records (EBRs) of its extended partition. The
 * MBR's four entries sit at byte 446 of sector 0, 16 bytes each, before the 0x55 0xAA signature;
 * LBAs count the disk's logical sectors. An extended partition holds a chain of EBRs: each
 * one's first entry is a logical partition relative to the EBR, its second entry the next EBR
 * relative to the extended partition's start. The chain is followed with a loop check and a
 * bound on its length, and never outside its extended partition.
 */
import type { BlockDevice } from '../device/block-device.js';
import { readAt, view } from './read.js';
import { MBR_EXTENDED_TYPES, MBR_GPT_PROTECTIVE, mbrTypeName, mbrTypeText } from './partition-types.js';
import type { Partition, PartitionFinding } from './partition-table.js';

/** Logical partitions read at most (Linux numbers up to 256 partitions per disk). */
export const MAX_LOGICAL_PARTITIONS = 256;

export interface MbrEntry {
  /** 0..3 */
  slot: number;
  status: number;
  type: number;
  firstLba: number;
  sectors: number;
}

export interface Mbr {
  /** The 0x55 0xAA signature is present. */
  signature: boolean;
  /** Every status byte is 0x00 or 0x80, as in any partition table (boot code rarely is). */
  statusesValid: boolean;
  diskSignature: number;
  /** Entries with a non-zero type and length. */
  entries: MbrEntry[];
}

/** Decode a boot record (the first 512 bytes of `sector`). */
export function decodeMbr(sector: Uint8Array): Mbr {
  const dv = view(sector);
  const entries: MbrEntry[] = [];
  let statusesValid = true;
  for (let slot = 0; slot < 4; slot++) {
    const at = 446 + slot * 16;
    const status = sector[at]!;
    if (status !== 0 && status !== 0x80) statusesValid = false;
    const type = sector[at + 4]!;
    const firstLba = dv.getUint32(at + 8, true);
    const sectors = dv.getUint32(at + 12, true);
    if (type !== 0 && sectors !== 0) entries.push({ slot, status, type, firstLba, sectors });
  }
  return { signature: sector[510] === 0x55 && sector[511] === 0xaa, statusesValid, diskSignature: dv.getUint32(440, true), entries };
}

/**
 * True when the MBR has entries and every one lies inside a disk of `diskSectors` sectors, after
 * sector 0, without overlapping another: a real partition table, which boot code seldom mimics.
 */
export function entriesPlausible(mbr: Mbr, diskSectors: number): boolean {
  if (mbr.entries.length === 0) return false;
  const sorted = [...mbr.entries].sort((a, b) => a.firstLba - b.firstLba);
  let end = 1;
  for (const e of sorted) {
    if (e.firstLba < end || e.firstLba + e.sectors > diskSectors) return false;
    end = e.firstLba + e.sectors;
  }
  return true;
}

/** True when the MBR holds a GPT-protective entry (type 0xEE). */
export function isProtective(mbr: Mbr): boolean {
  return mbr.entries.some((e) => e.type === MBR_GPT_PROTECTIVE);
}

function partitionOf(e: MbrEntry, index: number, kind: Partition['kind'], firstLba: number, sectorSize: number): Partition {
  return {
    index,
    kind,
    start: firstLba * sectorSize,
    length: e.sectors * sectorSize,
    type: mbrTypeText(e.type),
    typeName: mbrTypeName(e.type),
    name: null,
    guid: null,
    attributes: e.status === 0x80 ? ['bootable'] : [],
    attributeBits: `0x${e.status.toString(16).padStart(2, '0')}`,
  };
}

/**
 * The partitions of an MBR: primaries (index 1–4, by slot; extended ones with kind
 * 'extended'), then the logical partitions of the first extended partition (index 5 on).
 */
export async function readMbrPartitions(dev: BlockDevice, mbr: Mbr, sectorSize: number, findings: PartitionFinding[]): Promise<Partition[]> {
  const out: Partition[] = [];
  let extended: MbrEntry | null = null;
  for (const e of mbr.entries) {
    const isExtended = MBR_EXTENDED_TYPES.has(e.type);
    out.push(partitionOf(e, e.slot + 1, isExtended ? 'extended' : 'primary', e.firstLba, sectorSize));
    if (isExtended) {
      if (extended === null) extended = e;
      else findings.push({ severity: 'warning', reason: 'MBR_BAD_EBR', message: `MBR entry ${e.slot + 1} is a second extended partition; only entry ${extended.slot + 1} is followed`, offset: 446 + e.slot * 16 });
    }
  }
  if (extended) out.push(...(await readLogicalPartitions(dev, extended, sectorSize, findings)));
  return out;
}

async function readLogicalPartitions(dev: BlockDevice, ext: MbrEntry, sectorSize: number, findings: PartitionFinding[]): Promise<Partition[]> {
  const out: Partition[] = [];
  const extFirst = ext.firstLba;
  const extEnd = ext.firstLba + ext.sectors; // exclusive
  const visited = new Set<number>();
  let ebrLba: number | null = extFirst;
  let index = 5;
  while (ebrLba !== null) {
    const offset = ebrLba * sectorSize;
    if (visited.has(ebrLba)) {
      findings.push({ severity: 'error', reason: 'MBR_LOOP', message: `the EBR chain comes back to LBA ${ebrLba}; the logical partitions after it are not read`, offset });
      break;
    }
    if (visited.size >= MAX_LOGICAL_PARTITIONS) {
      findings.push({ severity: 'error', reason: 'LIMIT_EXCEEDED', message: `the EBR chain is longer than ${MAX_LOGICAL_PARTITIONS} records; the rest is not read`, offset });
      break;
    }
    visited.add(ebrLba);
    if (ebrLba < extFirst || ebrLba >= extEnd) {
      findings.push({ severity: 'error', reason: 'MBR_BAD_EBR', message: `an EBR at LBA ${ebrLba} is outside its extended partition (LBA ${extFirst}..${extEnd - 1})`, offset });
      break;
    }
    const sector = await readAt(dev, offset, 512);
    if (!sector) {
      findings.push({ severity: 'error', reason: 'PARTITION_PAST_END', message: `the EBR at LBA ${ebrLba} is past the end of the disk`, offset });
      break;
    }
    const ebr = decodeMbr(sector);
    if (!ebr.signature) {
      findings.push({ severity: 'error', reason: 'MBR_BAD_EBR', message: `the EBR at LBA ${ebrLba} has no 0x55 0xAA signature; the chain stops there`, offset });
      break;
    }
    // As fdisk reads an EBR: its first data entry is the logical partition, its first extended
    // entry the link to the next EBR, in whichever slots they are.
    let next: number | null = null;
    let data = false;
    for (const e of ebr.entries) {
      if (!data && !MBR_EXTENDED_TYPES.has(e.type)) {
        data = true;
        const first = ebrLba + e.firstLba;
        if (first < extFirst || first + e.sectors > extEnd) {
          findings.push({ severity: 'warning', reason: 'PARTITION_BAD_RANGE', message: `logical partition ${index} (LBA ${first}, ${e.sectors} sectors) leaves its extended partition (LBA ${extFirst}..${extEnd - 1})`, offset: offset + 446 });
        }
        out.push(partitionOf(e, index++, 'logical', first, sectorSize));
      } else if (next === null && MBR_EXTENDED_TYPES.has(e.type)) {
        next = extFirst + e.firstLba;
      }
    }
    ebrLba = next;
  }
  return out;
}
