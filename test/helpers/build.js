// Test-side image builder over src/driver/layout.ts: small valid images in memory (optionally
// with allocated blocks and a dirty log), and the helpers corrupt/fuzz tests need to mutate them
// while keeping checksums valid.
import { MemorySource } from '../../dist/index.js';
import { planLayout, writeNewImage, setBatEntry, batEntryBytes } from '../../dist/driver/layout.js';
import { crc32cWithZeroField } from '../../dist/codec/crc32c.js';
import { encodeGuid } from '../../dist/codec/guid.js';
import { HEADER } from '../../dist/format/header.js';
import { REGION_TABLE_HEADER } from '../../dist/format/region-table.js';
import { encodeLogEntry } from '../../dist/format/log-entry.js';
import { payloadBatIndex, PayloadState } from '../../dist/format/bat.js';
import {
  ITEM_FILE_PARAMETERS,
  ITEM_LOGICAL_SECTOR_SIZE,
  ITEM_PHYSICAL_SECTOR_SIZE,
  ITEM_VIRTUAL_DISK_ID,
  ITEM_VIRTUAL_DISK_SIZE,
  REGION_BAT,
  REGION_METADATA,
} from '../../dist/format/constants.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const HEADER_AT = [64 * KiB, 128 * KiB];
export const REGION_TABLE_AT = [192 * KiB, 256 * KiB];
export const ITEMS = {
  fileParameters: ITEM_FILE_PARAMETERS,
  virtualDiskSize: ITEM_VIRTUAL_DISK_SIZE,
  virtualDiskId: ITEM_VIRTUAL_DISK_ID,
  logicalSectorSize: ITEM_LOGICAL_SECTOR_SIZE,
  physicalSectorSize: ITEM_PHYSICAL_SECTOR_SIZE,
};
export { REGION_BAT, REGION_METADATA, PayloadState };

/** The byte every sector of allocated block `b` is filled with (never 0). */
export const fillByte = (b) => 0x11 + ((b * 37) % 0xe0);

/**
 * Build an image in memory and return its bytes with the plan.
 * - `allocate`: payload blocks stored FULLY_PRESENT (appended after the BAT in the order given),
 *   each filled with `fillByte(block)`.
 * - `states`: { blockIndex: state } for non-present states (ZERO, UNMAPPED, ...).
 * - `logAllocate`: blocks whose data is in the file but whose BAT entries only a dirty log holds:
 *   the image has a LogGuid and a log of two entries (a zero descriptor, then a data descriptor
 *   rewriting the BAT's first 4 KiB). They must have BAT indexes below 512.
 */
export async function buildImage({ allocate = [], states = {}, logAllocate = [], ...layoutOptions } = {}) {
  const plan = planLayout({ virtualSize: 64 * MiB, blockSize: MiB, ...layoutOptions });
  const src = new MemorySource();
  const id = await writeNewImage(src, plan);
  let next = plan.fileSize;
  const blockFileOffset = {};
  const g = plan.geometry;
  for (const b of [...allocate, ...logAllocate]) {
    const len = Math.min(plan.blockSize, plan.virtualSize - b * plan.blockSize);
    await src.write(next, new Uint8Array(plan.blockSize).fill(fillByte(b), 0, len));
    blockFileOffset[b] = next;
    next += plan.blockSize;
  }
  for (const b of allocate) {
    await setBatEntry(src, plan, payloadBatIndex(g, b), { state: PayloadState.FULLY_PRESENT, fileOffsetMB: blockFileOffset[b] / MiB });
  }
  for (const [b, state] of Object.entries(states)) {
    await setBatEntry(src, plan, payloadBatIndex(g, Number(b)), { state, fileOffsetMB: 0 });
  }
  const bytes = src.bytes().slice();
  let logGuid = null;
  if (logAllocate.length > 0) {
    logGuid = '5b3a1f0e-7c2d-4e8f-9a6b-0c1d2e3f4a5b';
    const bat = bytes.slice(plan.bat.offset, plan.bat.offset + 4 * KiB);
    for (const b of logAllocate) {
      const i = payloadBatIndex(g, b);
      if (i >= 512) throw new Error(`block ${b} is not in the BAT's first sector`);
      bat.set(batEntryBytes({ state: PayloadState.FULLY_PRESENT, fileOffsetMB: blockFileOffset[b] / MiB }), i * 8);
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
export function writeLog(bytes, plan, logGuid, entries, { lastFileOffset, flushedFileOffset } = {}) {
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
export function setLogGuid(bytes, logGuid) {
  for (const at of HEADER_AT) {
    encodeGuid(logGuid, bytes, at + 48);
    HEADER.seal(bytes.subarray(at));
  }
}

function sealLogEntry(entry) {
  new DataView(entry.buffer, entry.byteOffset, entry.byteLength).setUint32(4, crc32cWithZeroField(entry, 4), true);
}

/** Recompute the checksums of every log entry chained from log offset 0 (as far as lengths allow). */
export function resealLog(bytes, plan) {
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

export function view(bytes) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
export const getU32 = (bytes, at) => view(bytes).getUint32(at, true);
export const setU32 = (bytes, at, v) => view(bytes).setUint32(at, v >>> 0, true);
export const setU16 = (bytes, at, v) => view(bytes).setUint16(at, v, true);
export const getU64 = (bytes, at) => view(bytes).getBigUint64(at, true);
export const setU64 = (bytes, at, v) => view(bytes).setBigUint64(at, BigInt.asUintN(64, BigInt(v)), true);

/** Recompute both headers' checksums (whatever their content). */
export function resealHeaders(bytes) {
  for (const at of HEADER_AT) if (bytes.length >= at + HEADER.size) HEADER.seal(bytes.subarray(at));
}

/** Recompute both region tables' checksums. */
export function resealRegionTables(bytes) {
  for (const at of REGION_TABLE_AT) if (bytes.length >= at + REGION_TABLE_HEADER.size) REGION_TABLE_HEADER.seal(bytes.subarray(at));
}

/** Recompute every checksum the builder's structures carry. */
export function resealAll(bytes, plan) {
  resealHeaders(bytes);
  resealRegionTables(bytes);
  resealLog(bytes, plan);
}

/** File offset of field `field` (0 guid, 16 offset, 24 length, 28 flags) of region table entry `i` in copy `copy` (0 or 1). */
export const regionEntryAt = (copy, i, field = 0) => REGION_TABLE_AT[copy] + 16 + i * 32 + field;

/** Index of the region entry with `guid` (the builder writes BAT first, metadata second). */
export const REGION_INDEX = { bat: 0, metadata: 1 };

/** File offset of field `field` (0 id, 16 offset, 20 length, 24 flags) of metadata table entry `i`. */
export const metadataEntryAt = (plan, i, field = 0) => plan.metadata.offset + 32 + i * 32 + field;

/** Index in the metadata table of the system item named `name` (a key of ITEMS). */
export function itemIndex(plan, name) {
  const i = plan.items.findIndex((it) => it.itemId === ITEMS[name]);
  if (i < 0) throw new Error(`no item ${name}`);
  return i;
}

/** File offset of the value of the system item named `name`. */
export const itemValueAt = (plan, name) => plan.metadata.offset + plan.items[itemIndex(plan, name)].offset;

/** File offset of BAT entry `index`. */
export const batEntryAt = (plan, index) => plan.bat.offset + index * 8;

/** Payload block `block`'s BAT entry as the source holds it: { state, fileOffsetMB }. */
export async function readPayloadEntry(src, plan, block) {
  const b = new Uint8Array(8);
  await src.read(batEntryAt(plan, payloadBatIndex(plan.geometry, block)), b);
  const dv = new DataView(b.buffer);
  const lo = dv.getUint32(0, true);
  return { state: lo & 7, fileOffsetMB: dv.getUint32(4, true) * 4096 + (lo >>> 20) };
}

/** Set a BAT entry's raw bytes in `bytes` from { state, fileOffsetMB }. */
export function putBatEntry(bytes, plan, index, entry) {
  bytes.set(batEntryBytes(entry), batEntryAt(plan, index));
}

/** Apply `fn` to region table copies 1 and 2 (fn gets the copy's base offset), then reseal them. */
export function editRegionTables(bytes, fn) {
  for (const base of REGION_TABLE_AT) fn(base);
  resealRegionTables(bytes);
}

/** Apply `fn` to both headers (fn gets the header's base offset), then reseal them. */
export function editHeaders(bytes, fn) {
  for (const base of HEADER_AT) fn(base);
  resealHeaders(bytes);
}

/** "0x..." as VhdxError messages print offsets. */
export const hex = (n) => `0x${n.toString(16)}`;
