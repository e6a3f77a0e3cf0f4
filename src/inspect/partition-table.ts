/**
 * The partition table of a disk: GPT (with a protective or hybrid MBR), MBR with extended and
 * logical partitions, or none (a filesystem, or nothing, from sector 0). Damage is reported as
 * findings with stable reasons, never thrown: a table that cannot be read in full gives the
 * partitions it could read, and what lies outside them counts as used for every caller.
 */
import type { BlockDevice } from '../device/block-device.js';
import type { ErrorReason } from '../errors.js';
import { readGpt, type GptHeader } from './gpt.js';
import { decodeMbr, entriesPlausible, isProtective, readMbrPartitions } from './mbr.js';
import { readAt } from './read.js';

/** A disk's partition table kind: GPT, MBR, or none (a filesystem, or nothing, from sector 0). */
export type PartitionScheme = 'gpt' | 'mbr' | 'none';

/** 'gpt': a GPT entry; MBR: 'primary', 'extended' (a container of logical partitions), 'logical'; 'disk': the whole disk of a disk with no table. */
export type PartitionKind = 'gpt' | 'primary' | 'extended' | 'logical' | 'disk';

/** One partition as its table describes it. */
export interface Partition {
  /** GPT: the entry's number (1-based); MBR: 1–4 for primaries, 5 on for logical ones (as Linux numbers them); 0 for the whole disk. */
  index: number;
  /** Which kind of entry it is. */
  kind: PartitionKind;
  /** Byte offset on the disk. */
  start: number;
  /** Bytes, as the table says (the disk may end sooner: see PARTITION_PAST_END). */
  length: number;
  /** GPT: the type GUID; MBR: the type byte as "0x83"; null for the whole disk. */
  type: string | null;
  /** The type's well-known name ("Linux filesystem", "EFI System"), or null. */
  typeName: string | null;
  /** GPT partition name, or null. */
  name: string | null;
  /** GPT unique partition GUID, or null. */
  guid: string | null;
  /** Named attribute bits: GPT "required", "legacy-bios-bootable", "hidden", ...; MBR "bootable". */
  attributes: string[];
  /** The raw attribute bits in hex (GPT: 64 bits; MBR: the status byte). */
  attributeBits: string;
}

/** A problem found in a partition table (reported, never thrown). */
export interface PartitionFinding {
  /** 'error': part of the table could not be read; 'warning': a damaged copy or range, worked around; 'info': of note. */
  severity: 'error' | 'warning' | 'info';
  /** Stable identifier of the problem (GPT_*, MBR_*, PARTITION_* reasons). */
  reason: ErrorReason;
  /** For people: what is wrong, with the numbers involved. */
  message: string;
  /** Byte offset on the disk of the structure concerned. */
  offset?: number;
}

/** A disk's partition table as {@link readPartitions} reads it. */
export interface PartitionTable {
  /** The table's kind. */
  scheme: PartitionScheme;
  /** The logical sector size the table's LBAs count (the device's, or the one the GPT was found with). */
  sectorSize: number;
  /** GPT disk GUID, or the MBR disk signature as "0x1234abcd"; null when there is none. */
  diskId: string | null;
  /** The partitions that could be read, in table order. */
  partitions: Partition[];
  /** What was wrong with the table. */
  findings: PartitionFinding[];
  /** The GPT header used (null for other schemes, or when no copy was valid). */
  gpt: (GptHeader & { copy: 'primary' | 'backup'; hybridMbr: boolean }) | null;
}

export interface ReadPartitionTableOptions {
  /**
   * Whether a filesystem starts at sector 0 of the disk. Asked only when sector 0 carries the MBR
   * signature, no GPT, and no set of plausible entries: FAT, NTFS and exFAT boot sectors carry
   * the signature too. Without it, such a sector reads as an MBR.
   */
  filesystemAtStart?: (dev: BlockDevice) => Promise<boolean>;
}

/** The partition table of `dev`. Throws only for I/O errors of the device. */
export async function readPartitionTable(dev: BlockDevice, opts: ReadPartitionTableOptions = {}): Promise<PartitionTable> {
  const findings: PartitionFinding[] = [];
  const devSector = dev.logicalSectorSize;
  const whole = (): PartitionTable => ({
    scheme: 'none',
    sectorSize: devSector,
    diskId: null,
    partitions: dev.size > 0 ? [{ index: 0, kind: 'disk', start: 0, length: dev.size, type: null, typeName: null, name: null, guid: null, attributes: [], attributeBits: '0x0' }] : [],
    findings,
    gpt: null,
  });
  const sector0 = await readAt(dev, 0, 512);
  if (!sector0) return whole();
  const mbr = decodeMbr(sector0);
  const mbrTable = mbr.signature && mbr.statusesValid;
  const protective = mbr.signature && isProtective(mbr);

  // A GPT is looked for with the device's sector size, then with the other common one (a 4Kn
  // disk copied into a 512-byte image, or the reverse).
  let gptFindings: PartitionFinding[] = [];
  let gpt = null;
  let gptSector = devSector;
  for (const ss of devSector === 4096 ? [4096, 512] : [devSector, devSector === 512 ? 4096 : 512]) {
    const f: PartitionFinding[] = [];
    const g = await readGpt(dev, ss, f);
    if (g) {
      gpt = g;
      gptFindings = f;
      gptSector = ss;
      break;
    }
  }
  if (gpt && (protective || !mbrTable || mbr.entries.length === 0)) {
    findings.push(...gptFindings);
    const hybrid = protective && mbr.entries.length > 1;
    if (!protective) findings.push({ severity: 'warning', reason: 'GPT_NO_PROTECTIVE_MBR', message: 'a GPT without a protective MBR entry (type 0xEE) in sector 0', offset: 446 });
    if (hybrid) findings.push({ severity: 'info', reason: 'GPT_HYBRID_MBR', message: `hybrid MBR: ${mbr.entries.length - 1} MBR entries beside the protective one (the GPT is used)`, offset: 446 });
    const t: PartitionTable = {
      scheme: 'gpt',
      sectorSize: gptSector,
      diskId: gpt.header?.diskGuid ?? null,
      partitions: gpt.partitions,
      findings,
      gpt: gpt.header && gpt.copy ? { ...gpt.header, copy: gpt.copy, hybridMbr: hybrid } : null,
    };
    checkRanges(dev, t);
    return t;
  }
  if (gpt) {
    findings.push({ severity: 'warning', reason: 'GPT_NO_PROTECTIVE_MBR', message: 'a GPT header is ignored: the MBR holds partitions and no protective entry (type 0xEE)', offset: gptSector });
  } else if (protective) {
    findings.push({ severity: 'error', reason: 'GPT_NO_VALID_HEADER', message: 'the MBR protects a GPT, but neither LBA 1 nor the last LBA holds a GPT header', offset: devSector });
    return { scheme: 'gpt', sectorSize: devSector, diskId: null, partitions: [], findings, gpt: null };
  }
  // Plausible entries make it an MBR whatever else sector 0 looks like: taking a partitioned
  // disk for one filesystem would trust that filesystem's map over every partition's data.
  if (!mbrTable) return whole();
  if (!entriesPlausible(mbr, Math.floor(dev.size / devSector)) && opts.filesystemAtStart && (await opts.filesystemAtStart(dev))) return whole();
  const t: PartitionTable = {
    scheme: 'mbr',
    sectorSize: devSector,
    diskId: `0x${mbr.diskSignature.toString(16).padStart(8, '0')}`,
    partitions: await readMbrPartitions(dev, mbr, devSector, findings),
    findings,
    gpt: null,
  };
  checkRanges(dev, t);
  return t;
}

/** Partitions that hold data themselves (not the extended containers of logical partitions). */
export function leafPartitions(t: PartitionTable): Partition[] {
  return t.partitions.filter((p) => p.kind !== 'extended');
}

/** Report partitions past the disk's end, and partitions sharing sectors. */
function checkRanges(dev: BlockDevice, t: PartitionTable): void {
  for (const p of t.partitions) {
    if (p.start + p.length > dev.size) {
      t.findings.push({
        severity: 'error',
        reason: 'PARTITION_PAST_END',
        message: `partition ${p.index} (bytes ${p.start}..${p.start + p.length - 1}) ends past the end of the ${dev.size}-byte disk`,
        offset: p.start,
      });
    }
  }
  const leaves = leafPartitions(t).slice().sort((a, b) => a.start - b.start);
  let reach: { end: number; index: number } | null = null;
  for (const p of leaves) {
    if (reach && p.start < reach.end) {
      t.findings.push({ severity: 'error', reason: 'PARTITION_OVERLAP', message: `partition ${p.index} overlaps partition ${reach.index}`, offset: p.start });
    }
    if (!reach || p.start + p.length > reach.end) reach = { end: p.start + p.length, index: p.index };
  }
}
