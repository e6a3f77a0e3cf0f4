// Test-side image builder over src/driver/layout.ts: small valid images in memory (optionally
// with allocated blocks and a dirty log), and the helpers corrupt/fuzz tests need to mutate them
// while keeping checksums valid.
import { MemorySource, type RandomAccessSource } from '../../src/io/source.js';
import { planLayout, writeNewImage, setBatEntry, batEntryBytes, type ImageIdentity, type ImagePlan, type LayoutOptions } from '../../src/driver/layout.js';
import { crc32cWithZeroField } from '../../src/codec/crc32c.js';
import { encodeGuid } from '../../src/codec/guid.js';
import { HEADER } from '../../src/format/header.js';
import { REGION_TABLE_HEADER } from '../../src/format/region-table.js';
import { encodeLogEntry, type LogWrite } from '../../src/format/log-entry.js';
import { payloadBatIndex, PayloadState, type BatEntry } from '../../src/format/bat.js';
import {
  ITEM_FILE_PARAMETERS,
  ITEM_LOGICAL_SECTOR_SIZE,
  ITEM_PHYSICAL_SECTOR_SIZE,
  ITEM_VIRTUAL_DISK_ID,
  ITEM_VIRTUAL_DISK_SIZE,
  REGION_BAT,
  REGION_METADATA,
} from '../../src/format/constants.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const HEADER_AT = [64 * KiB, 128 * KiB] as const;
export const REGION_TABLE_AT = [192 * KiB, 256 * KiB] as const;
export const ITEMS = {
  fileParameters: ITEM_FILE_PARAMETERS,
  virtualDiskSize: ITEM_VIRTUAL_DISK_SIZE,
  virtualDiskId: ITEM_VIRTUAL_DISK_ID,
  logicalSectorSize: ITEM_LOGICAL_SECTOR_SIZE,
  physicalSectorSize: ITEM_PHYSICAL_SECTOR_SIZE,
} as const;
export type ItemName = keyof typeof ITEMS;
export { REGION_BAT, REGION_METADATA, PayloadState };

/** The byte every sector of allocated block `b` is filled with (never 0). */
export const fillByte = (b: number): number => 0x11 + ((b * 37) % 0xe0);

/**
 * Build an image in memory and return its bytes with the plan.
 * - `allocate`: payload blocks stored FULLY_PRESENT (appended after the BAT in the order given),
 *   each filled with `fillByte(block)`.
 * - `states`: { blockIndex: state } for non-present states (ZERO, UNMAPPED, ...).
 * - `logAllocate`: blocks whose data is in the file but whose BAT entries only a dirty log holds:
 *   the image has a LogGuid and a log of two entries (a zero descriptor, then a data descriptor
 *   rewriting the BAT's first 4 KiB). They must have BAT indexes below 512.
 */
export interface BuildOptions extends Partial<LayoutOptions> {
  allocate?: readonly number[];
  states?: Readonly<Record<number, number>>;
  logAllocate?: readonly number[];
}

/** What buildImage made. */
export interface BuiltImage {
  bytes: Uint8Array;
  plan: ImagePlan;
  id: ImageIdentity;
  logGuid: string | null;
  /** File offset of each allocated block's data, by block index. */
  blockFileOffset: Record<number, number>;
}

export async function buildImage({ allocate = [], states = {}, logAllocate = [], ...layoutOptions }: BuildOptions = {}): Promise<BuiltImage> {
  const plan = planLayout({ virtualSize: 64 * MiB, blockSize: MiB, ...layoutOptions });
  const src = new MemorySource();
  const id = await writeNewImage(src, plan);
  let next = plan.fileSize;
  const blockFileOffset: Record<number, number> = {};
  const g = plan.geometry;
  for (const b of [...allocate, ...logAllocate]) {
    const len = Math.min(plan.blockSize, plan.virtualSize - b * plan.blockSize);
    await src.write(next, new Uint8Array(plan.blockSize).fill(fillByte(b), 0, len));
    blockFileOffset[b] = next;
    next += plan.blockSize;
  }
  for (const b of allocate) {
    await setBatEntry(src, plan, payloadBatIndex(g, b), { state: PayloadState.FULLY_PRESENT, fileOffsetMB: blockFileOffset[b]! / MiB });
  }
  for (const [b, state] of Object.entries(states)) {
    await setBatEntry(src, plan, payloadBatIndex(g, Number(b)), { state, fileOffsetMB: 0 });
  }
  const bytes = src.bytes().slice();
  let logGuid: string | null = null;
  if (logAllocate.length > 0) {
    logGuid = '5b3a1f0e-7c2d-4e8f-9a6b-0c1d2e3f4a5b';
    const bat = bytes.slice(plan.bat.offset, plan.bat.offset + 4 * KiB);
    for (const b of logAllocate) {
      const i = payloadBatIndex(g, b);
      if (i >= 512) throw new Error(`block ${b} is not in the BAT's first sector`);
      bat.set(batEntryBytes({ state: PayloadState.FULLY_PRESENT, fileOffsetMB: blockFileOffset[b]! / MiB }), i * 8);
    }
    writeLog(bytes, plan, logGuid, [
      // Sequence 41: zero 4 KiB of the unused metadata region.
      [{ kind: 'zero', fileOffset: plan.metadata.offset + 512 * KiB, length: 4 * KiB }],
      // Sequence 42: the new BAT sector.
      [{ kind: 'data', fileOffset: plan.bat.offset, data: bat }],
    ]);
    setLogGuid(bytes, logGuid);
  }
  return { bytes, plan, id, logGuid, blockFileOffset };
}

/**
 * Write log entries (one array of writes each, encoded by the library's own encodeLogEntry) from
 * log offset 0, sequence numbers 41, 42, ..., every entry's Tail pointing at the first. Each write
 * is { kind: 'zero', fileOffset, length } or { kind: 'data', fileOffset, data: 4 KiB }.
 * FlushedFileOffset is the file's size rounded down to 1 MiB (what a writer flushed), unless given.
 */
export function writeLog(
  bytes: Uint8Array,
  plan: ImagePlan,
  logGuid: string,
  entries: readonly (readonly LogWrite[])[],
  { lastFileOffset, flushedFileOffset }: { lastFileOffset?: number; flushedFileOffset?: number } = {},
): void {
  let at = 0;
  const fileEnd = Math.ceil(bytes.length / MiB) * MiB;
  const last = lastFileOffset ?? fileEnd;
  const flushed = flushedFileOffset ?? fileEnd;
  entries.forEach((writes, n) => {
    const entry = encodeLogEntry({ sequenceNumber: 41n + BigInt(n), tail: 0, logGuid, flushedFileOffset: flushed, lastFileOffset: last, writes });
    bytes.set(entry, plan.log.offset + at);
    at += entry.length;
  });
}

/** Set LogGuid in both headers (and reseal them): the log is dirty when `logGuid` is not nil. */
export function setLogGuid(bytes: Uint8Array, logGuid: string): void {
  for (const at of HEADER_AT) {
    encodeGuid(logGuid, bytes, at + 48);
    HEADER.seal(bytes.subarray(at));
  }
}

function sealLogEntry(entry: Uint8Array): void {
  new DataView(entry.buffer, entry.byteOffset, entry.byteLength).setUint32(4, crc32cWithZeroField(entry, 4), true);
}

/** Recompute the checksums of every log entry chained from log offset 0 (as far as lengths allow). */
export function resealLog(bytes: Uint8Array, plan: ImagePlan): void {
  const dv = view(bytes);
  let at = 0;
  for (let n = 0; n < 64 && at < plan.log.length; n++) {
    const base = plan.log.offset + at;
    if (base + 64 > bytes.length) return;
    const length = dv.getUint32(base + 8, true);
    if (length < 4 * KiB || length % (4 * KiB) !== 0 || at + length > plan.log.length || base + length > bytes.length) return;
    sealLogEntry(bytes.subarray(base, base + length));
    at += length;
  }
}

export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
export const getU32 = (bytes: Uint8Array, at: number): number => view(bytes).getUint32(at, true);
export const setU32 = (bytes: Uint8Array, at: number, v: number): void => view(bytes).setUint32(at, v >>> 0, true);
export const setU16 = (bytes: Uint8Array, at: number, v: number): void => view(bytes).setUint16(at, v, true);
export const getU64 = (bytes: Uint8Array, at: number): bigint => view(bytes).getBigUint64(at, true);
export const setU64 = (bytes: Uint8Array, at: number, v: number | bigint): void => view(bytes).setBigUint64(at, BigInt.asUintN(64, BigInt(v)), true);

/** Recompute both headers' checksums (whatever their content). */
export function resealHeaders(bytes: Uint8Array): void {
  for (const at of HEADER_AT) if (bytes.length >= at + HEADER.size) HEADER.seal(bytes.subarray(at));
}

/** Recompute both region tables' checksums. */
export function resealRegionTables(bytes: Uint8Array): void {
  for (const at of REGION_TABLE_AT) if (bytes.length >= at + REGION_TABLE_HEADER.size) REGION_TABLE_HEADER.seal(bytes.subarray(at));
}

/** Recompute every checksum the builder's structures carry. */
export function resealAll(bytes: Uint8Array, plan: ImagePlan): void {
  resealHeaders(bytes);
  resealRegionTables(bytes);
  resealLog(bytes, plan);
}

/** File offset of field `field` (0 guid, 16 offset, 24 length, 28 flags) of region table entry `i` in copy `copy` (0 or 1). */
export const regionEntryAt = (copy: 0 | 1, i: number, field = 0): number => REGION_TABLE_AT[copy] + 16 + i * 32 + field;

/** Index of the region entry with `guid` (the builder writes BAT first, metadata second). */
export const REGION_INDEX = { bat: 0, metadata: 1 } as const;

/** File offset of field `field` (0 id, 16 offset, 20 length, 24 flags) of metadata table entry `i`. */
export const metadataEntryAt = (plan: ImagePlan, i: number, field = 0): number => plan.metadata.offset + 32 + i * 32 + field;

/** Index in the metadata table of the system item named `name` (a key of ITEMS). */
export function itemIndex(plan: ImagePlan, name: ItemName): number {
  const i = plan.items.findIndex((it) => it.itemId === ITEMS[name]);
  if (i < 0) throw new Error(`no item ${name}`);
  return i;
}

/** File offset of the value of the system item named `name`. */
export const itemValueAt = (plan: ImagePlan, name: ItemName): number => plan.metadata.offset + plan.items[itemIndex(plan, name)]!.offset;

/** File offset of BAT entry `index`. */
export const batEntryAt = (plan: ImagePlan, index: number): number => plan.bat.offset + index * 8;

/** Payload block `block`'s BAT entry as the source holds it: { state, fileOffsetMB }. */
export async function readPayloadEntry(src: RandomAccessSource, plan: ImagePlan, block: number): Promise<BatEntry> {
  const b = new Uint8Array(8);
  await src.read(batEntryAt(plan, payloadBatIndex(plan.geometry, block)), b);
  const dv = new DataView(b.buffer);
  const lo = dv.getUint32(0, true);
  return { state: lo & 7, fileOffsetMB: dv.getUint32(4, true) * 4096 + (lo >>> 20) };
}

/** Set a BAT entry's raw bytes in `bytes` from { state, fileOffsetMB }. */
export function putBatEntry(bytes: Uint8Array, plan: ImagePlan, index: number, entry: BatEntry): void {
  bytes.set(batEntryBytes(entry), batEntryAt(plan, index));
}

/** Apply `fn` to region table copies 1 and 2 (fn gets the copy's base offset), then reseal them. */
export function editRegionTables(bytes: Uint8Array, fn: (base: number) => void): void {
  for (const base of REGION_TABLE_AT) fn(base);
  resealRegionTables(bytes);
}

/** Apply `fn` to both headers (fn gets the header's base offset), then reseal them. */
export function editHeaders(bytes: Uint8Array, fn: (base: number) => void): void {
  for (const base of HEADER_AT) fn(base);
  resealHeaders(bytes);
}

/** "0x..." as VhdxError messages print offsets. */
export const hex = (n: number): string => `0x${n.toString(16)}`;
