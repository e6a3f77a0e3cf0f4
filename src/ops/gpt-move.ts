/**
 * Moving a GPT's backup to the end of a disk whose size changed, as `sgdisk -e` does: the backup
 * entry array and header go to the last sectors, the primary header's AlternateLBA and
 * LastUsableLBA follow (with their CRCs), and a protective MBR that covered the whole disk
 * covers the new one. Partitions are left as they are. Reading goes through the partition layer
 * (src/inspect/gpt.ts), which checks every number before it sizes anything.
 */
import { crc32, crc32WithZeroField } from '../codec/crc32.js';
import type { WritableBlockDevice } from '../device/block-device.js';
import { decodeGptHeader, type GptHeader } from '../inspect/gpt.js';
import { readAt } from '../inspect/read.js';
import type { PartitionTable } from '../inspect/partition-table.js';

/** Where a GPT's backup goes on a disk of `diskSectors` sectors. */
export interface GptPlacement {
  /** LBA of the backup header (the last LBA). */
  backupLba: number;
  /** LBA of the backup entry array. */
  entriesLba: number;
  /** The last LBA a partition may use. */
  lastUsableLba: number;
}

/** Sectors the entry array of `h` takes. */
export function gptArraySectors(h: GptHeader, sectorSize: number): number {
  return Math.ceil((h.entryCount * h.entrySize) / sectorSize);
}

/** Where the backup of the GPT `h` goes on a disk of `diskSectors` sectors of `sectorSize` bytes. */
export function gptPlacement(h: GptHeader, sectorSize: number, diskSectors: number): GptPlacement {
  const backupLba = diskSectors - 1;
  const entriesLba = backupLba - gptArraySectors(h, sectorSize);
  return { backupLba, entriesLba, lastUsableLba: entriesLba - 1 };
}

/** The bytes past the last partition a GPT needs at the end of the disk: its backup array and header. */
export function gptBackupBytes(h: GptHeader, sectorSize: number): number {
  return (gptArraySectors(h, sectorSize) + 1) * sectorSize;
}

/** What a move of the GPT's backup did, for reports. */
export interface GptMove {
  /** LBA of the backup header before the move. */
  fromLba: number;
  /** LBA of the backup header after it (the disk's new last sector). */
  toLba: number;
  /** The last LBA partitions may use on the resized disk. */
  lastUsableLba: number;
}

/**
 * Write the backup of `table`'s GPT (read from `dev` with its primary valid) for a disk of
 * `newSize` bytes (the table was made for `oldSize`): entry array and header at the new end, then the primary header, then the
 * protective MBR's size. `dev` must already be large enough to hold the new end (before a
 * shrink, or after a grow). The old backup is left where it was, as `sgdisk -e` and `sfdisk
 * --relocate gpt-bak-std` leave it (after a grow it is free space inside the usable range).
 * Returns null when there is no valid primary GPT to follow (nothing is written).
 */
export async function moveGptBackup(dev: WritableBlockDevice, table: PartitionTable, oldSize: number, newSize: number): Promise<GptMove | null> {
  const gpt = table.gpt;
  if (table.scheme !== 'gpt' || !gpt || gpt.copy !== 'primary') return null;
  const ss = table.sectorSize;
  const oldSectors = Math.floor(oldSize / ss);
  const newSectors = Math.floor(newSize / ss);
  const primary = await readAt(dev, ss, ss);
  if (!primary) return null;
  const h = decodeGptHeader(primary, 1, ss, Math.floor(dev.size / ss));
  if (h === null || 'reason' in h) return null;
  const array = await readAt(dev, h.entriesLba * ss, h.entryCount * h.entrySize);
  if (!array || crc32(array) !== h.entriesCrc) return null;
  const to = gptPlacement(h, ss, newSectors);
  if (to.entriesLba <= h.entriesLba + gptArraySectors(h, ss)) return null; // no room for a backup after the primary's array

  const backup = primary.slice();
  const dv = new DataView(backup.buffer, backup.byteOffset, backup.byteLength);
  dv.setBigUint64(24, BigInt(to.backupLba), true); // MyLBA
  dv.setBigUint64(32, 1n, true); // AlternateLBA
  dv.setBigUint64(48, BigInt(to.lastUsableLba), true);
  dv.setBigUint64(72, BigInt(to.entriesLba), true); // PartitionEntryLBA
  seal(backup, h.headerSize);
  const pv = new DataView(primary.buffer, primary.byteOffset, primary.byteLength);
  pv.setBigUint64(32, BigInt(to.backupLba), true);
  pv.setBigUint64(48, BigInt(to.lastUsableLba), true);
  seal(primary, h.headerSize);

  const padded = new Uint8Array(gptArraySectors(h, ss) * ss);
  padded.set(array);
  await dev.write(to.entriesLba * ss, padded);
  await dev.write(to.backupLba * ss, backup);
  await dev.flush();
  await dev.write(ss, primary);
  await protectiveMbrFollows(dev, ss, oldSectors, newSectors);
  await dev.flush();
  return { fromLba: h.alternateLba, toLba: to.backupLba, lastUsableLba: to.lastUsableLba };
}

/** The header's CRC-32 over its first `headerSize` bytes (the field itself counted as zero). */
function seal(sector: Uint8Array, headerSize: number): void {
  new DataView(sector.buffer, sector.byteOffset, sector.byteLength).setUint32(16, crc32WithZeroField(sector.subarray(0, headerSize), 16), true);
}

/** A protective MBR entry (type 0xEE from LBA 1) sized to the old disk is sized to the new one. */
async function protectiveMbrFollows(dev: WritableBlockDevice, ss: number, oldSectors: number, newSectors: number): Promise<void> {
  const mbr = await readAt(dev, 0, 512);
  if (!mbr || mbr[510] !== 0x55 || mbr[511] !== 0xaa) return;
  const dv = new DataView(mbr.buffer, mbr.byteOffset, mbr.byteLength);
  const cap = (n: number): number => Math.min(n - 1, 0xffffffff);
  for (let i = 0; i < 4; i++) {
    const at = 446 + i * 16;
    if (mbr[at + 4] !== 0xee || dv.getUint32(at + 8, true) !== 1 || dv.getUint32(at + 12, true) !== cap(oldSectors)) continue;
    dv.setUint32(at + 12, cap(newSectors), true);
    const sector = (await readAt(dev, 0, ss)) ?? mbr;
    sector.set(mbr.subarray(0, 512));
    await dev.write(0, sector);
    return;
  }
}
