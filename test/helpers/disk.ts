// Helpers for the inspect tests: disks as block devices (files or bytes), GPTs built by hand
// (for 4096-byte sectors and damage that sfdisk will not write), images placed at an offset.
import { openSync, writeSync, readFileSync, closeSync, writeFileSync } from 'node:fs';
import { MemorySource } from '../../src/io/source.js';
import { RawDevice } from '../../src/device/raw.js';
import { NodeFileSource } from '../../src/io/node-file.js';
import { crc32 } from '../../src/codec/crc32.js';
import { encodeGuid } from '../../src/codec/guid.js';
import { must } from './tools.js';
import { run } from './env.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** A read-only raw device over a file; close it when done. */
export async function fileDevice(path: string, logicalSectorSize: 512 | 4096 = 512): Promise<RawDevice> {
  return new RawDevice(await NodeFileSource.open(path), { logicalSectorSize });
}

/** A raw device over bytes in memory. */
export function memDevice(bytes: Uint8Array, logicalSectorSize: 512 | 4096 = 512): RawDevice {
  return new RawDevice(new MemorySource(bytes, { readOnly: true }), { logicalSectorSize });
}

/** Copy the file `src` into `disk` at byte `offset` (the disk keeps its size). */
export function placeFile(disk: string, src: string, offset: number): void {
  const fd = openSync(disk, 'r+');
  try {
    const b = readFileSync(src);
    writeSync(fd, b, 0, b.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Overwrite bytes of a file at `offset`. */
export function patchFile(path: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Partition a file with sfdisk (a script of sfdisk's input format); returns `sfdisk -J`'s table. */
/** A partition as `sfdisk -J` lists it (sizes in sectors). */
export interface SfdiskPartition {
  node: string;
  start: number;
  size: number;
  type: string;
  uuid?: string;
  name?: string;
  attrs?: string;
  bootable?: boolean;
}

/** `sfdisk -J`'s partition table. */
export interface SfdiskTable {
  label: string;
  id: string;
  device: string;
  unit: string;
  sectorsize?: number;
  /** GPT only: the first and last usable LBA. */
  firstlba?: number;
  lastlba?: number;
  partitions: SfdiskPartition[];
}

export function sfdisk(path: string, script: string): SfdiskTable {
  run('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', path], { input: script });
  return (JSON.parse(run('sfdisk', ['-J', path])) as { partitiontable: SfdiskTable }).partitiontable;
}

/** Make a sparse file of `size` bytes. */
export function sparseFile(path: string, size: number): void {
  writeFileSync(path, '');
  const fd = openSync(path, 'r+');
  try {
    if (size > 0) writeSync(fd, new Uint8Array(1), 0, 1, size - 1);
  } finally {
    closeSync(fd);
  }
}

const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

/**
 * A whole disk's bytes with a protective MBR and both GPT copies, for `sectorSize`-byte sectors:
 * partitions [{ type, guid, first, last, name, attributes (bigint) }] in LBAs.
 */
/** A partition for buildGpt, in LBAs. */
export interface GptPartition {
  type: string;
  guid?: string;
  first: number;
  last: number;
  name?: string;
  attributes?: bigint;
}

export function buildGpt({
  sectorSize = 512,
  sectors,
  partitions,
  entryCount = 128,
  entrySize = 128,
  diskGuid = '11111111-2222-3333-4444-555555555555',
}: {
  sectorSize?: number;
  sectors: number;
  partitions: readonly GptPartition[];
  entryCount?: number;
  entrySize?: number;
  diskGuid?: string;
}): Uint8Array {
  const disk = new Uint8Array(sectorSize * sectors);
  const arrayBytes = entryCount * entrySize;
  const arraySectors = Math.ceil(arrayBytes / sectorSize);
  const lastLba = sectors - 1;
  // Protective MBR.
  disk[446 + 4] = 0xee;
  dv(disk).setUint32(446 + 8, 1, true);
  dv(disk).setUint32(446 + 12, Math.min(lastLba, 0xffffffff), true);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  const array = new Uint8Array(arrayBytes);
  partitions.forEach((p, i) => {
    const at = i * entrySize;
    encodeGuid(p.type, array, at);
    encodeGuid(p.guid ?? `00000000-0000-0000-0000-${String(i + 1).padStart(12, '0')}`, array, at + 16);
    dv(array).setBigUint64(at + 32, BigInt(p.first), true);
    dv(array).setBigUint64(at + 40, BigInt(p.last), true);
    dv(array).setBigUint64(at + 48, p.attributes ?? 0n, true);
    const name = p.name ?? '';
    for (let k = 0; k < name.length && k < 36; k++) dv(array).setUint16(at + 56 + 2 * k, name.charCodeAt(k), true);
  });
  const firstUsable = 2 + arraySectors;
  const lastUsable = lastLba - 1 - arraySectors;
  const put = (myLba: number, altLba: number, entriesLba: number): void => {
    disk.set(array, entriesLba * sectorSize);
    const h = disk.subarray(myLba * sectorSize, myLba * sectorSize + sectorSize);
    h.set(new TextEncoder().encode('EFI PART'), 0);
    dv(h).setUint32(8, 0x00010000, true);
    dv(h).setUint32(12, 92, true);
    dv(h).setBigUint64(24, BigInt(myLba), true);
    dv(h).setBigUint64(32, BigInt(altLba), true);
    dv(h).setBigUint64(40, BigInt(firstUsable), true);
    dv(h).setBigUint64(48, BigInt(lastUsable), true);
    encodeGuid(diskGuid, h, 56);
    dv(h).setBigUint64(72, BigInt(entriesLba), true);
    dv(h).setUint32(80, entryCount, true);
    dv(h).setUint32(84, entrySize, true);
    dv(h).setUint32(88, crc32(array), true);
    resealGptHeader(h);
  };
  put(1, lastLba, 2);
  put(lastLba, 1, lastLba - arraySectors);
  return disk;
}

/** Recompute the CRC-32 of the GPT header at the start of `h` (after editing a field). */
export function resealGptHeader(h: Uint8Array): void {
  const size = dv(h).getUint32(12, true);
  dv(h).setUint32(16, 0, true);
  dv(h).setUint32(16, crc32(h.subarray(0, size)), true);
}

/** A `sfdisk -J` partition's range in bytes. */
export function sfdiskRange(p: Pick<SfdiskPartition, 'start' | 'size'>, sectorSize = 512): { start: number; length: number } {
  return { start: p.start * sectorSize, length: p.size * sectorSize };
}

/** 7zz's list of partitions of an image (items with an extension; 7-Zip names gaps without one), ordered by offset. */
export async function sevenZipPartitions(path: string): Promise<{ start: number; length: number; fileSystem: string }[]> {
  const out = await must('7zz', ['l', '-slt', path]);
  const items: Record<string, string>[] = [];
  let cur: Record<string, string> | null = null;
  for (const line of out.split('\n')) {
    const m = /^(\w[\w ]*?) = (.*)$/.exec(line);
    if (!m) continue;
    const key = m[1]!;
    const value = m[2]!;
    if (key === 'Path') {
      cur = { path: value };
      items.push(cur);
    } else if (cur) cur[key] = value;
  }
  return items
    .filter((i) => i.Offset !== undefined && /\./.test(i.path ?? ''))
    .map((i) => ({ start: Number(i.Offset), length: Number(i.Size), fileSystem: i['File System'] ?? '' }))
    .sort((a, b) => a.start - b.start);
}
