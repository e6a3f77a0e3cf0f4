/**
 * The GUID Partition Table (UEFI specification, "GUID Partition Table (GPT) Disk Layout"): a
 * header at LBA 1 and a backup at the last LBA, each with a CRC-32 over its first HeaderSize
 * bytes and over its partition-entry array. The primary is used when it and its array are valid;
 * otherwise the backup at the last LBA, and that is reported. Nothing is sized by the header's
 * numbers before they are checked: the entry array is at most MAX_GPT_ARRAY_BYTES.
 */
import { crc32, crc32WithZeroField } from '../codec/crc32.js';
import { decodeGuid } from '../codec/guid.js';
import type { BlockDevice } from '../device/block-device.js';
import type { ErrorReason } from '../errors.js';
import { hasMagic, inside, readAt, textField, u64, view } from './read.js';
import { gptTypeName } from './partition-types.js';
import type { Partition, PartitionFinding } from './partition-table.js';

/** No real GPT has a larger entry array (the usual one is 128 entries of 128 bytes, 16 KiB). */
export const MAX_GPT_ARRAY_BYTES = 1024 * 1024;
export const GPT_SIGNATURE = 'EFI PART';
const MIN_HEADER_SIZE = 92;

/** The fields of a GPT header (LBAs count the table's logical sectors). */
export interface GptHeader {
  /** The header's revision (0x00010000 for 1.0). */
  revision: number;
  /** Bytes the header's CRC-32 covers. */
  headerSize: number;
  /** LBA of this header. */
  myLba: number;
  /** LBA of the other header copy. */
  alternateLba: number;
  /** First LBA partitions may use. */
  firstUsableLba: number;
  /** Last LBA partitions may use. */
  lastUsableLba: number;
  /** The disk GUID. */
  diskGuid: string;
  /** LBA of the partition-entry array. */
  entriesLba: number;
  /** Entries in the array. */
  entryCount: number;
  /** Bytes per entry. */
  entrySize: number;
  /** CRC-32 of the entry array. */
  entriesCrc: number;
}

/** What a failed decode says, as a finding's reason and message. */
export interface GptProblem {
  reason: ErrorReason;
  message: string;
}

/**
 * Decode the header in `sector` (one logical sector read at `lba`) of a disk of `diskSectors`
 * sectors of `sectorSize` bytes: the header, null when there is no GPT signature, or the problem.
 */
export function decodeGptHeader(sector: Uint8Array, lba: number, sectorSize: number, diskSectors: number): GptHeader | GptProblem | null {
  if (!hasMagic(sector, 0, GPT_SIGNATURE)) return null;
  const dv = view(sector);
  const headerSize = dv.getUint32(12, true);
  if (headerSize < MIN_HEADER_SIZE || headerSize > sectorSize) {
    return { reason: 'GPT_BAD_HEADER', message: `header size ${headerSize} is outside ${MIN_HEADER_SIZE}..${sectorSize}` };
  }
  const stored = dv.getUint32(16, true);
  const computed = crc32WithZeroField(sector.subarray(0, headerSize), 16);
  if (stored !== computed) {
    return { reason: 'GPT_BAD_CRC', message: `header CRC-32 is 0x${stored.toString(16)}, the header sums to 0x${computed.toString(16)}` };
  }
  const myLba = u64(sector, 24);
  const alternateLba = u64(sector, 32);
  const firstUsableLba = u64(sector, 40);
  const lastUsableLba = u64(sector, 48);
  const entriesLba = u64(sector, 72);
  if (myLba === null || alternateLba === null || firstUsableLba === null || lastUsableLba === null || entriesLba === null) {
    return { reason: 'GPT_BAD_HEADER', message: 'an LBA field is beyond any disk' };
  }
  if (myLba !== lba) return { reason: 'GPT_BAD_HEADER', message: `header at LBA ${lba} says it is at LBA ${myLba}` };
  if (firstUsableLba > lastUsableLba + 1) {
    return { reason: 'GPT_BAD_HEADER', message: `first usable LBA ${firstUsableLba} is after last usable LBA ${lastUsableLba}` };
  }
  const entryCount = dv.getUint32(80, true);
  const entrySize = dv.getUint32(84, true);
  // 128 × 2^n, and no larger than a sector: no version of the specification defines more.
  if (entrySize < 128 || entrySize > Math.max(4096, sectorSize) || (entrySize & (entrySize - 1)) !== 0) {
    return { reason: 'GPT_BAD_HEADER', message: `partition entry size ${entrySize} is not 128 × 2^n` };
  }
  const arrayBytes = entryCount * entrySize;
  if (arrayBytes > MAX_GPT_ARRAY_BYTES) {
    return { reason: 'GPT_ENTRY_COUNT', message: `${entryCount} entries of ${entrySize} bytes (${arrayBytes} bytes) exceed the ${MAX_GPT_ARRAY_BYTES}-byte limit` };
  }
  const arraySectors = Math.ceil(arrayBytes / sectorSize);
  if (!inside(entriesLba, arraySectors, 0, diskSectors) || (lba >= entriesLba && lba < entriesLba + arraySectors)) {
    return { reason: 'GPT_BAD_HEADER', message: `the entry array (LBA ${entriesLba}, ${arraySectors} sectors) is outside the disk or over its header` };
  }
  return {
    revision: dv.getUint32(8, true),
    headerSize,
    myLba,
    alternateLba,
    firstUsableLba,
    lastUsableLba,
    diskGuid: decodeGuid(sector, 56),
    entriesLba,
    entryCount,
    entrySize,
    entriesCrc: dv.getUint32(88, true),
  };
}

function isProblem<T extends object>(h: T | GptProblem): h is GptProblem {
  return 'reason' in h;
}

/** Attribute bits (UEFI), and those of Microsoft basic data partitions (type-specific bits 60–63). */
const ATTRIBUTE_NAMES: [bit: number, name: string][] = [
  [0, 'required'],
  [1, 'no-block-io'],
  [2, 'legacy-bios-bootable'],
];
const BASIC_DATA_ATTRIBUTE_NAMES: [bit: number, name: string][] = [
  [60, 'read-only'],
  [61, 'shadow-copy'],
  [62, 'hidden'],
  [63, 'no-drive-letter'],
];
const BASIC_DATA = 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7';

function attributeNames(bits: bigint, type: string): string[] {
  const names = ATTRIBUTE_NAMES.filter(([b]) => (bits >> BigInt(b)) & 1n).map(([, n]) => n);
  if (type === BASIC_DATA) for (const [b, n] of BASIC_DATA_ATTRIBUTE_NAMES) if ((bits >> BigInt(b)) & 1n) names.push(n);
  return names;
}

/**
 * The used entries of an entry array (`array` holds header.entryCount entries), as partitions in
 * bytes, with a finding for each entry whose range is impossible (and which is then left out).
 */
export function decodeGptEntries(array: Uint8Array, header: GptHeader, sectorSize: number, findings: PartitionFinding[], arrayOffset: number): Partition[] {
  const out: Partition[] = [];
  for (let i = 0; i < header.entryCount; i++) {
    const at = i * header.entrySize;
    const e = array.subarray(at, at + 128);
    const type = decodeGuid(e, 0);
    if (type === '00000000-0000-0000-0000-000000000000') continue;
    const firstLba = u64(e, 32);
    const lastLba = u64(e, 40);
    const where = { offset: arrayOffset + at };
    if (firstLba === null || lastLba === null || lastLba < firstLba || (lastLba + 1) * sectorSize > Number.MAX_SAFE_INTEGER) {
      findings.push({ severity: 'error', reason: 'PARTITION_BAD_RANGE', message: `GPT entry ${i + 1}: LBA range ${view(e).getBigUint64(32, true)}..${view(e).getBigUint64(40, true)} is impossible; left out`, ...where });
      continue;
    }
    if (firstLba < header.firstUsableLba || lastLba > header.lastUsableLba) {
      findings.push({ severity: 'warning', reason: 'PARTITION_BAD_RANGE', message: `GPT entry ${i + 1}: LBA ${firstLba}..${lastLba} is outside the usable LBAs ${header.firstUsableLba}..${header.lastUsableLba}`, ...where });
    }
    const bits = view(e).getBigUint64(48, true);
    out.push({
      index: i + 1,
      kind: 'gpt',
      start: firstLba * sectorSize,
      length: (lastLba - firstLba + 1) * sectorSize,
      type,
      typeName: gptTypeName(type),
      name: textField(e, 56, 72, 'utf-16le'),
      guid: decodeGuid(e, 16),
      attributes: attributeNames(bits, type),
      attributeBits: `0x${bits.toString(16).padStart(16, '0')}`,
    });
  }
  return out;
}

/** A GPT found and read: the header used and its partitions. */
export interface GptRead {
  /** Null when neither copy is usable (a GPT_NO_VALID_HEADER finding says why). */
  header: GptHeader | null;
  copy: 'primary' | 'backup' | null;
  partitions: Partition[];
}

type CopyResult = { header: GptHeader; array: Uint8Array } | GptProblem | null;

/** Read and check one header copy at `lba` and its entry array. */
async function readCopy(dev: BlockDevice, lba: number, sectorSize: number): Promise<CopyResult> {
  const diskSectors = Math.floor(dev.size / sectorSize);
  const sector = await readAt(dev, lba * sectorSize, sectorSize);
  if (!sector) return null;
  const h = decodeGptHeader(sector, lba, sectorSize, diskSectors);
  if (h === null || isProblem(h)) return h;
  const array = await readAt(dev, h.entriesLba * sectorSize, h.entryCount * h.entrySize);
  if (!array) return { reason: 'GPT_BAD_HEADER', message: 'the entry array cannot be read' };
  const sum = crc32(array);
  if (sum !== h.entriesCrc) {
    return { reason: 'GPT_BAD_CRC', message: `entry array CRC-32 is 0x${h.entriesCrc.toString(16)}, the array sums to 0x${sum.toString(16)}` };
  }
  return { header: h, array };
}

/**
 * Look for a GPT with `sectorSize`-byte logical sectors: null when neither LBA 1 nor the last LBA
 * holds a GPT signature; otherwise the copy used (the primary when valid), with findings for a
 * damaged copy. When neither copy is valid: a GPT_NO_VALID_HEADER finding and no partitions.
 */
export async function readGpt(dev: BlockDevice, sectorSize: number, findings: PartitionFinding[]): Promise<GptRead | null> {
  const lastLba = Math.floor(dev.size / sectorSize) - 1;
  if (lastLba < 2) return null;
  const primary = await readCopy(dev, 1, sectorSize);
  const usable = (c: CopyResult): c is { header: GptHeader; array: Uint8Array } => c !== null && !isProblem(c);
  if (usable(primary)) {
    const h = primary.header;
    // The backup should be where the primary says, at the last LBA; only report what is wrong.
    const backupLba = h.alternateLba;
    const backup = backupLba > 1 && backupLba <= lastLba ? await readCopy(dev, backupLba, sectorSize) : null;
    if (!usable(backup)) {
      findings.push({
        severity: 'warning',
        reason: 'GPT_BAD_BACKUP',
        message: `backup GPT header at LBA ${backupLba}: ${backup === null ? (backupLba > lastLba ? `past the last LBA ${lastLba}` : 'no GPT signature') : backup.message}`,
        offset: backupLba * sectorSize,
      });
    } else if (backupLba !== lastLba) {
      findings.push({ severity: 'warning', reason: 'GPT_BAD_BACKUP', message: `backup GPT header is at LBA ${backupLba}, not at the last LBA ${lastLba} (the disk was resized?)`, offset: backupLba * sectorSize });
    }
    return { header: h, copy: 'primary', partitions: decodeGptEntries(primary.array, h, sectorSize, findings, h.entriesLba * sectorSize) };
  }
  const backup = await readCopy(dev, lastLba, sectorSize);
  if (primary === null && backup === null) return null;
  if (usable(backup)) {
    const why = primary === null ? { reason: 'GPT_BAD_HEADER' as const, message: 'no GPT signature' } : primary;
    findings.push({ severity: 'warning', reason: why.reason, message: `primary GPT at LBA 1 is unusable (${why.message}); the backup at LBA ${lastLba} is used`, offset: sectorSize });
    const h = backup.header;
    return { header: h, copy: 'backup', partitions: decodeGptEntries(backup.array, h, sectorSize, findings, h.entriesLba * sectorSize) };
  }
  const say = (c: CopyResult): string => (c === null ? 'no GPT signature' : isProblem(c) ? c.message : 'valid');
  findings.push({
    severity: 'error',
    reason: 'GPT_NO_VALID_HEADER',
    message: `no usable GPT: primary at LBA 1: ${say(primary)}; backup at LBA ${lastLba}: ${say(backup)}`,
    offset: sectorSize,
  });
  return { header: null, copy: null, partitions: [] };
}
