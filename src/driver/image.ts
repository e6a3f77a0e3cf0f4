/**
 * A VHDX image opened for reading: the layout validated at open, the BAT through a bounded
 * cache, reads at any offset and length, block status, and a streaming BAT scan for statistics.
 */
import { VhdxError, checkRequestRange, corrupt, type RequestKind } from '../errors.js';
import { readBytes, readExact, writableSource, type CopyHint, type RandomAccessSource, type WritableSource } from '../io/source.js';
import { METADATA_ENTRIES_AT, METADATA_ENTRY_SIZE, METADATA_FLAG_IS_USER, metadataEntries, placeMetadataItem, setMetadataItem } from '../format/metadata.js';
import { ITEM_PARENT_LOCATOR, METADATA_TABLE_SIZE } from '../format/constants.js';
import { MiB } from '../format/constants.js';
import { BAT_ENTRY_SIZE, PAYLOAD_STATE_NAMES, entryState, fragmentationPercentage, judgeBatEntry } from '../format/bat.js';
import { batWindowEntries, scanBat } from './bat-scan.js';
import type { BlockDevice, DeviceCapabilities, Extent, ProgressOptions } from '../device/block-device.js';
import type { BatCacheOptions } from './bat-cache.js';
import { openLayout, replayInPlace, type DiskType, type Layout } from './open.js';
import { Writer, entriesPerCommit, type BlockMove, type FreeSpaceOptions, type MovedBlock, type WriteOptions, type ZeroOptions } from './writer.js';
import type { CurrentHeader } from './headers.js';
import type { BitmapCacheOptions } from './bitmap-cache.js';
import { BlockMap, LOOKUP_PARENT, LOOKUP_ZERO, type PlacedBlock } from './mapping.js';
import { LOCATOR_TYPE_VHDX } from '../format/constants.js';
import { normalizeGuid, isGuid } from '../codec/guid.js';
import { encodeParentLocator, type ParentLocator } from '../format/parent-locator.js';

import { bytesEqual } from '../codec/bytes.js';

/** Options of {@link VhdxImage.open}: access, the parent, and the sizes of the caches. */
export interface OpenOptions extends BatCacheOptions, BitmapCacheOptions, FreeSpaceOptions {
  /**
   * Open for reading only (the default). A writable open needs a writable source; it replays a
   * dirty log into the file first.
   */
  readOnly?: boolean;
  /**
   * For a differencing image: opens its parent (read-only). Without one, a differencing image
   * opens for its metadata only, and reads and writes fail with NO_PARENT. The returned image is
   * checked against the locator (parent_linkage, sector size, virtual size) and is closed with
   * the child. `openFile` (Node) passes a resolver that follows the locator's paths by a policy.
   */
  parent?: ParentResolver;
  /** How deep this image sits in a chain (0: the image the caller opened). Set by resolvers. */
  depth?: number;
  /** A name for the image in error messages (openFile gives the path). */
  name?: string;
}

/** What a parent resolver is asked for. */
export interface ParentRequest {
  /** The child's parent locator (key/value pairs). */
  locator: ParentLocator;
  /** The child's layout. @internal */
  child: Layout;
  /** Depth the parent will have in the chain (1 = the opened image's parent). */
  depth: number;
  /**
   * Check a candidate against the locator as the open will (checkParent; throws PARENT_MISMATCH),
   * for resolvers that try several paths. A parent that passed here is not checked again.
   */
  verify(parent: VhdxImage): void;
}

/** Opens the parent a locator names; see OpenOptions.parent. */
export type ParentResolver = (request: ParentRequest) => Promise<VhdxImage>;

/** The deepest chain we open: a loop that escaped the resolver's checks ends here. */
export const MAX_CHAIN_DEPTH = 64;

/** The value of `key` in a locator, if present. */
export function locatorValue(loc: ParentLocator, key: string): string | undefined {
  return loc.entries.find((e) => e.key === key)?.value;
}

/** Bytes of the virtual disk per payload block state, and how scattered the allocated blocks are. */
export interface AllocationStats {
  /** Bytes of the virtual disk in each state (keys: notPresent, undefined, zero, unmapped, fullyPresent, partiallyPresent). */
  bytesByState: Record<string, number>;
  /** Payload blocks stored in the file (fully or partially present). */
  allocatedBlocks: number;
  /** Sector bitmap blocks present (differencing disks). */
  bitmapBlocks: number;
  /**
   * Percentage of allocated blocks, after the first in virtual-disk order, that do not directly
   * follow the previous allocated block in the file. 0 for a disk written front to back.
   */
  fragmentationPercentage: number;
}

/** Bytes of the file read in one request at most. */
const MAX_READ = 64 * MiB;

/**
 * An open VHDX image, a {@link BlockDevice} over its virtual disk: reads at any offset and
 * length, block status, and (opened writable) writes, zeroing and discard through the log, so a
 * crash leaves the image as it was before or after each metadata change. Open with
 * {@link VhdxImage.open} (or `openFile` / `openUrl`); close it when done.
 */
export class VhdxImage implements BlockDevice {
  /** True unless opened writable. */
  readonly readOnly: boolean;
  /** All but `extents` false when read-only; `fastZero` false for a fixed disk (its zeros are written). */
  readonly can: DeviceCapabilities;
  /** The source's hint for long copies (see CopyHint). */
  readonly copyHint: CopyHint | undefined;
  /** The one translation of the virtual disk into the file (mapping.ts). */
  private readonly map: BlockMap;
  private readonly src: RandomAccessSource;
  private readonly writer: Writer | null;
  private closed = false;
  /** The parent image of a differencing disk, when it was opened with a resolver. */
  readonly parent: VhdxImage | null;
  /** Which locator key matched the parent's DataWriteGuid. */
  readonly linkedBy: 'parent_linkage' | 'parent_linkage2' | null;
  /** Depth in the chain: 0 for the image the caller opened. */
  readonly depth: number;
  /** The name given at open (a path, for openFile), for messages. */
  readonly name: string | undefined;

  private constructor(
    /** The layout read at open; the driver's own (its source and state change as it writes). @internal */
    readonly layout: Layout,
    private readonly file: RandomAccessSource,
    /** The file narrowed to a writable source (writable opens), else null. */
    out: WritableSource | null,
    private readonly opts: OpenOptions,
    parent: VhdxImage | null,
    linkedBy: VhdxImage['linkedBy'],
  ) {
    this.src = layout.source;
    this.parent = parent;
    this.linkedBy = linkedBy;
    this.depth = opts.depth ?? 0;
    this.name = opts.name;
    this.map = new BlockMap(layout, opts, parent?.size);
    this.readOnly = out === null;
    this.writer =
      out === null
        ? null
        : new Writer(out, layout, this.map, {
          parent,
          ...(opts.maxFreeBlocks !== undefined ? { maxFreeBlocks: opts.maxFreeBlocks } : {}),
          ...(opts.maxUnownedFreeBytes !== undefined ? { maxUnownedFreeBytes: opts.maxUnownedFreeBytes } : {}),
        });
    const w = !this.readOnly;
    this.can = { zero: w, fastZero: w && !layout.leaveBlocksAllocated, discard: w, extents: true, fua: w };
    this.copyHint = file.copyHint;
  }

  /**
   * Open and validate an image. Read-only (the default): a dirty log is replayed in memory and
   * the file is never written. Writable: everything is validated first, as replayed in memory
   * (the layout, the parent, every BAT entry, room in the log for a commit), and only then is a
   * dirty log replayed into the file; a writable open of a damaged image changes nothing.
   */
  static async open(source: RandomAccessSource, opts: OpenOptions = {}): Promise<VhdxImage> {
    const readOnly = opts.readOnly ?? true;
    const out = readOnly ? null : writableSource(source, 'a writable open needs a writable source');
    // A writable open replays the log into the file, so the in-memory cap of a read-only one does not apply.
    let layout = await openLayout(source, readOnly ? {} : { maxOverlayRanges: Infinity });
    let parent: VhdxImage | null = null;
    let linkedBy: VhdxImage['linkedBy'] = null;
    // Parents a resolver checked already, with the linkage that matched.
    const verified = new WeakMap<VhdxImage, 'parent_linkage' | 'parent_linkage2'>();
    if (layout.hasParent && opts.parent) {
      const depth = (opts.depth ?? 0) + 1;
      if (depth > MAX_CHAIN_DEPTH) throw new VhdxError('EINVAL', 'CHAIN_TOO_DEEP', `the chain of parents is deeper than ${MAX_CHAIN_DEPTH}`);
      const loc = layout.parentLocator!;
      parent = await opts.parent({ locator: loc, child: layout, depth, verify: (p) => void verified.set(p, checkParent(layout, p, opts.name)) });
    }
    try {
      if (parent) linkedBy = verified.get(parent) ?? checkParent(layout, parent, opts.name);
      if (!readOnly) {
        // A writer appends blocks at the end of the file: an entry pointing past it (a truncated
        // file) would come to share its place with the next new block.
        await scanAllocation(layout, layout.source, {});
        entriesPerCommit(layout);
        if (layout.log.dirty && out) {
          await replayInPlace(out);
          layout = await openLayout(source);
        }
      }
      return new VhdxImage(layout, source, out, opts, parent, linkedBy);
    } catch (e) {
      await parent?.close();
      throw e;
    }
  }

  /**
   * Give the image this DataWriteGuid at its first data change in this session, instead of a
   * random one (writable images; before any write).
   */
  setNextDataWriteGuid(guid: string): void {
    this.writable().setNextDataWriteGuid(normalizeGuid(guid));
  }

  /**
   * Replace a differencing image's parent locator, through the log (writable images). The item
   * stays in place when it fits there, else it moves after the last item of the metadata region.
   * Durable when this returns.
   */
  async setParentLocator(loc: ParentLocator): Promise<void> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    const w = this.writable();
    if (!this.layout.hasParent) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${this.name ?? 'the image'} is not a differencing image`);
    const bytes = encodeParentLocator(loc);
    const region = this.layout.metadataRegion;
    const table = await readBytes(this.file, region.fileOffset, METADATA_TABLE_SIZE, 'metadata table');
    const entries = metadataEntries(table);
    const k = entries.findIndex((e) => e.itemId === ITEM_PARENT_LOCATOR && (e.flags & METADATA_FLAG_IS_USER) === 0);
    const old = entries[k];
    if (!old) throw corrupt('MISSING_REQUIRED_ITEM', 'the metadata table has no parent locator', { structure: 'metadata table', offset: region.fileOffset });
    const at = placeMetadataItem(entries, ITEM_PARENT_LOCATOR, bytes.length, region.length);
    if (at === null) throw new VhdxError('ENOSPC', 'BAD_ARGUMENT', `a parent locator of ${bytes.length} bytes does not fit in the metadata region`);
    const newTable = setMetadataItem(table, ITEM_PARENT_LOCATOR, { offset: at, length: bytes.length });
    // The changed 4 KiB sectors of the region, read once and patched in memory.
    const sectors = new Map<number, Uint8Array>();
    const patch = async (offset: number, data: Uint8Array): Promise<void> => {
      for (let pos = 0; pos < data.length; ) {
        const sector = Math.floor((offset + pos) / 4096) * 4096;
        let buf = sectors.get(sector);
        if (!buf) {
          buf = await readBytes(this.file, region.fileOffset + sector, 4096, 'metadata region');
          sectors.set(sector, buf);
        }
        const n = Math.min(data.length - pos, sector + 4096 - (offset + pos));
        buf.set(data.subarray(pos, pos + n), offset + pos - sector);
        pos += n;
      }
    };
    await patch(old.offset, new Uint8Array(old.length));
    await patch(at, bytes);
    const entryAt = METADATA_ENTRIES_AT + k * METADATA_ENTRY_SIZE;
    await patch(entryAt, newTable.subarray(entryAt, entryAt + METADATA_ENTRY_SIZE));
    await w.writeMetadataSectors([...sectors].map(([off, data]) => ({ fileOffset: region.fileOffset + off, data })));
    await w.flush();
    this.layout.parentLocator = loc;
  }

  /**
   * Make every block NOT_PRESENT so that a differencing image shows its parent everywhere, and
   * cut the file back to its static structures (writable images; `commitChild` uses it).
   * `contentUnchanged`: the parent already reads as this image did, so its DataWriteGuid is kept.
   */
  async clearAllBlocks(opts: ProgressOptions & { contentUnchanged?: boolean } = {}): Promise<void> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    await this.writable().clearAllBlocks(opts);
  }

  /**
   * Move blocks to other places in the file (writable images): the disk reads the same
   * throughout and after. Durable when this returns. The crash-ordering contract is at
   * `Writer.moveBlocks`; compact and resize stand on it.
   */
  async moveBlocks(moves: readonly BlockMove[], opts: ProgressOptions = {}): Promise<MovedBlock[]> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.writable().moveBlocks(moves, opts);
  }

  /** File offsets of the free places a move may take (writable images), lowest first. */
  async freePlaces(): Promise<number[]> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.writable().freePlaces();
  }

  /**
   * Release whole payload blocks (writable dynamic and differencing images): each block that
   * holds data becomes ZERO with no place (never NOT_PRESENT, which would show a parent). Stops
   * when the writer's record of free space is full and returns how many of `blocks` it dealt
   * with; committing, moving and `trimEnd` make room. See Writer.releaseBlocks.
   */
  async releaseBlocks(blocks: readonly number[], opts: ProgressOptions = {}): Promise<number> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.writable().releaseBlocks(blocks, opts);
  }

  /** Record the holes of the file that nothing names as free places (writable images); returns how many. */
  async recordHoles(): Promise<number> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.writable().recordHoles();
  }

  /** Commit and cut the file after its last object, never below a region (writable images); returns the file size. */
  async trimEnd(): Promise<number> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.writable().trimEnd();
  }

  /** Every BAT entry that names a place in the file (payload and sector bitmap blocks), in BAT order. */
  placedBlocks(opts: ProgressOptions = {}): AsyncGenerator<PlacedBlock> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.map.places(opts);
  }

  /** The file's size now. */
  get fileSize(): number {
    return this.src.size;
  }

  /**
   * The writer, for whole-image operations that change the layout (src/ops/resize.ts) through
   * its layout-change methods. Not for general use: the image must be reopened after.
   * @internal
   */
  layoutWriter(): Writer {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return this.writable();
  }

  /**
   * End this session (as close does) but keep the file, its lock and the parent, and open the
   * image again from what the file now says: after its layout changed. This object is closed.
   * `parent` replaces the parent (one reopened after its own layout changed: commit grows it).
   */
  async reopen(parent: VhdxImage | null = this.parent): Promise<VhdxImage> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    this.closed = true;
    try {
      await this.writer?.close();
      return await VhdxImage.open(this.file, { ...this.opts, readOnly: this.readOnly, ...(parent ? { parent: async () => parent } : {}) });
    } catch (e) {
      try {
        await this.file.close();
      } finally {
        await parent?.close();
      }
      throw e;
    }
  }

  /** The images of the chain from this one down to its last opened parent. */
  get chain(): VhdxImage[] {
    const out: VhdxImage[] = [];
    for (let i: VhdxImage | null = this; i; i = i.parent) out.push(i);
    return out;
  }

  /** The current header: after writes, the one this session last wrote. @internal */
  get header(): CurrentHeader {
    return this.writer ? { ...this.writer.currentHeader } : this.layout.current;
  }

  /**
   * Check a request in full without doing any of it: the image is open, writable for a change,
   * and [offset, offset + length) lies inside the disk; for a change, a differencing image has
   * its parent, and the BAT pages that map the range, here and down the chain, are valid. Every
   * request runs this before it touches anything, so a refused request changes nothing; a caller
   * that does one request in pieces (the io command) runs it first for the whole request. Errors
   * name the request as given.
   */
  async checkRequest(kind: RequestKind, offset: number, length: number): Promise<void> {
    this.checkOpenRange(kind, offset, length);
    if (kind === 'read' || kind === 'block status') return;
    this.writable();
    if (this.layout.hasParent) this.needParent();
    if (length > 0) await this.validateMapping(offset, length);
  }

  /** Write `data` at `offset`. With `fua`, durable when this returns. */
  async write(offset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    await this.checkRequest('write', offset, data.length);
    await this.writable().write(offset, data, opts);
  }

  /** Make [offset, offset + length) read as zeros: whole blocks become ZERO blocks, no data written. */
  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    await this.checkRequest('write zeroes', offset, length);
    await this.writable().writeZeroes(offset, length, opts);
  }

  /** Deallocate [offset, offset + length): whole blocks become UNMAPPED; the range reads as zeros after. */
  async discard(offset: number, length: number): Promise<void> {
    await this.checkRequest('discard', offset, length);
    await this.writable().discard(offset, length);
  }

  /** Size of the virtual disk in bytes. */
  get size(): number {
    return this.layout.virtualSize;
  }
  /** Logical sector size in bytes (512 or 4096). */
  get logicalSectorSize(): number {
    return this.layout.logicalSectorSize;
  }
  /** Physical sector size in bytes (512 or 4096). */
  get physicalSectorSize(): number {
    return this.layout.physicalSectorSize;
  }
  /** Payload block size in bytes (1 MiB to 256 MiB). */
  get blockSize(): number {
    return this.layout.blockSize;
  }
  /** Fixed, dynamic or differencing. */
  get type(): DiskType {
    return this.layout.type;
  }

  /** Fill `into` with the virtual disk's bytes at `offset`. */
  async read(offset: number, into: Uint8Array): Promise<void> {
    this.checkOpenRange('read', offset, into.length);
    const parent = this.layout.hasParent ? this.needParent() : null;
    if (into.length === 0) return;
    // A block that moves under the read may leave other bytes in its old place: read again.
    for (let gen = -1; gen !== this.map.generation; ) {
      gen = this.map.generation;
      // Fast path: a request inside one block whose BAT page is cached (small random I/O).
      const at = this.map.fastLookup(offset, into.length);
      if (at >= 0) await readExact(this.src, at, into, 'payload block');
      else if (at === LOOKUP_ZERO) into.fill(0);
      else if (at === LOOKUP_PARENT && parent) await parent.read(offset, into);
      else await this.readRuns(offset, into, parent);
    }
  }

  /**
   * Read through the mapping's runs: data from this file (runs contiguous in the file as one
   * read, up to MAX_READ), the parent's ranges from the parent, zeros for the rest.
   */
  private async readRuns(offset: number, into: Uint8Array, parent: VhdxImage | null): Promise<void> {
    const end = offset + into.length;
    const pending: Promise<void>[] = [];
    for (const r of await this.map.runs(offset, into.length)) {
      const from = r.offset - offset;
      const to = Math.min(r.offset + r.length, end) - offset;
      if (r.kind === 'data') {
        for (let p = from; p < to; p += MAX_READ) {
          pending.push(readExact(this.src, r.fileOffset + p - from, into.subarray(p, Math.min(to, p + MAX_READ)), 'payload block'));
        }
      } else if (r.kind === 'parent' && parent) {
        pending.push(parent.read(offset + from, into.subarray(from, to)));
      } else into.fill(0, from, to);
    }
    await Promise.all(pending);
  }

  /**
   * Extents of [offset, offset + length), merged, from the BAT (and sector bitmaps) alone. For a
   * differencing disk: this image's data and zero extents at depth 0, and for what it leaves to
   * its parent, the parent's extents one level deeper; `unallocated` remains only where no image
   * of the chain has the range.
   */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkOpenRange('block status', offset, length);
    const parent = this.layout.hasParent ? this.needParent() : null;
    const out: Extent[] = [];
    for (const r of await this.map.runs(offset, length)) {
      if (r.kind !== 'parent') {
        const x: Extent = { offset: r.offset, length: r.length, type: r.kind };
        if (r.kind === 'data') x.fileOffset = r.fileOffset;
        else if (r.stored) x.stored = true;
        if (parent) x.depth = 0;
        pushExtent(out, x);
        continue;
      }
      if (!parent) continue;
      const to = r.offset + r.length;
      for (const x of await parent.blockStatus(r.offset, r.length)) {
        const xEnd = Math.min(x.offset + x.length, to);
        pushExtent(out, { ...x, length: xEnd - x.offset, depth: (x.depth ?? 0) + 1 });
        if (xEnd >= to) break;
      }
    }
    return out;
  }

  /**
   * Scan the whole BAT once, streaming (bounded memory), and count bytes per block state.
   * Validates every entry as the cache does. Runs of identical chunks are counted in bulk.
   */
  async allocationStats(opts: ProgressOptions = {}): Promise<AllocationStats> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    return scanAllocation(this.layout, this.src, opts);
  }

  /** Make every completed write durable. */
  async flush(): Promise<void> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    await this.writer?.flush();
  }

  /** Commit pending changes (writable), mark the log empty, and close the source. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.writer?.close();
    } finally {
      try {
        await this.file.close();
      } finally {
        await this.parent?.close();
      }
    }
  }

  private writable(): Writer {
    if (!this.writer) throw new VhdxError('EROFS', 'READ_ONLY', 'image is open read-only');
    return this.writer;
  }

  /** The part of checkRequest that needs no I/O (reads run it on their fast path). */
  private checkOpenRange(kind: RequestKind, offset: number, length: number): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', `${kind} of ${length} bytes at offset ${offset}: the image is closed`);
    checkRequestRange(kind, offset, length, this.size);
  }

  /**
   * Load, and so validate, the BAT pages that map [offset, offset + length) (with the sector
   * bitmap entries of a differencing image), and those of its parents, which its writes read.
   */
  private async validateMapping(offset: number, length: number): Promise<void> {
    await this.map.validate(offset, length);
    if (this.layout.hasParent) await this.needParent().validateMapping(offset, length);
  }

  private needParent(): VhdxImage {
    if (!this.parent) {
      throw new VhdxError('EINVAL', 'NO_PARENT', `${this.name ?? 'the image'} is a differencing image opened without its parent (parents 'none' / --parents=none, or no parent resolver)`);
    }
    return this.parent;
  }
}

/** Append an extent, merged into the last one when it continues it (one kind, depth and storage; data contiguous in the file). */
function pushExtent(out: Extent[], x: Extent): void {
  const last = out[out.length - 1];
  if (
    last &&
    last.type === x.type &&
    last.depth === x.depth &&
    last.stored === x.stored &&
    last.offset + last.length === x.offset &&
    (x.type !== 'data' || (last.fileOffset !== undefined && last.fileOffset + last.length === x.fileOffset))
  ) {
    last.length += x.length;
  } else out.push(x);
}

/**
 * The allocation statistics of the image `layout` describes, read through `src`: one streaming
 * pass over the BAT that validates every entry as the cache does (a writable open runs it to
 * refuse a damaged BAT before anything is written).
 */
async function scanAllocation(layout: Layout, src: RandomAccessSource, opts: ProgressOptions): Promise<AllocationStats> {
  const g = layout.geometry;
  const period = g.chunkRatio + 1; // entries per chunk, bitmap entry included
  const bytesByState: Record<string, number> = {};
  const add = (state: number, bytes: number): void => {
    const k = PAYLOAD_STATE_NAMES[state] ?? `state${state}`;
    bytesByState[k] = (bytesByState[k] ?? 0) + bytes;
  };
  let allocatedBlocks = 0;
  let bitmapBlocks = 0;
  let breaks = 0;
  let prevEnd = -1;
  const total = layout.batEntries;
  const windowEntries = batWindowEntries(period);
  const chunkBytes = period * BAT_ENTRY_SIZE;
  const fileSize = src.size;
  await scanBat(src, layout.batRegion.fileOffset, total, period, opts, (view, bytes, first, count) => {
    // Fast path: a window made of one chunk repeated, whose payload entries all hold one
    // non-present state and no file offset (fresh dynamic disks of any size).
    if (count === windowEntries && count > period && uniformWindow(bytes, view, chunkBytes, g.chunkRatio)) {
      const firstBlock = (first / period) * g.chunkRatio;
      const blocks = Math.min(count - count / period, g.payloadBlocks - firstBlock);
      if (blocks > 0) add(entryState(view.getUint32(0, true)), Math.min(layout.virtualSize, (firstBlock + blocks) * g.blockSize) - firstBlock * g.blockSize);
      return;
    }
    for (let i = 0; i < count; i++) {
      const index = first + i;
      const lo = view.getUint32(i * BAT_ENTRY_SIZE, true);
      const hi = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
      const v = judgeBatEntry(g, layout.hasParent, fileSize, index, lo, hi);
      if (v.kind === 'bad') {
        throw corrupt(v.reason, `block ${v.message}`, { structure: `BAT entry ${index}`, offset: layout.batRegion.fileOffset + index * BAT_ENTRY_SIZE });
      }
      if (v.kind === 'unused') continue;
      if ((index + 1) % period === 0) {
        if (v.kind === 'present') bitmapBlocks++;
        continue;
      }
      const blockIndex = index - Math.floor(index / period);
      add(v.state, Math.min(g.blockSize, layout.virtualSize - blockIndex * g.blockSize));
      if (v.kind === 'present') {
        if (allocatedBlocks > 0 && v.fileOffset !== prevEnd) breaks++;
        prevEnd = v.fileOffset + g.blockSize;
        allocatedBlocks++;
      }
    }
  });
  const fragmentation = fragmentationPercentage(breaks, allocatedBlocks);
  return { bytesByState, allocatedBlocks, bitmapBlocks, fragmentationPercentage: fragmentation };
}

/**
 * True when `bytes` is one chunk of entries repeated, and that chunk's payload entries all equal
 * its first entry, which is a non-present state with a zero offset field and clear reserved bits,
 * and its bitmap entry is zero.
 */
function uniformWindow(bytes: Uint8Array, view: DataView, chunkBytes: number, chunkRatio: number): boolean {
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const state = entryState(lo);
  if (hi !== 0 || lo !== state || !(state <= 3 || state === 5)) return false;
  for (let i = 1; i < chunkRatio; i++) {
    if (view.getUint32(i * 8, true) !== lo || view.getUint32(i * 8 + 4, true) !== 0) return false;
  }
  if (view.getUint32(chunkRatio * 8, true) !== 0 || view.getUint32(chunkRatio * 8 + 4, true) !== 0) return false;
  return bytesEqual(bytes.subarray(chunkBytes), bytes.subarray(0, bytes.length - chunkBytes));
}

/** The locator keys that name the parent's file, in the order a resolver tries them. */
export const PARENT_PATH_KEYS = ['relative_path', 'volume_path', 'absolute_win32_path'] as const;

/**
 * What every reader needs of a parent locator before it looks for the parent: the VHDX locator
 * type and a parent_linkage GUID. Returns parent_linkage and parent_linkage2 (when present).
 */
export function locatorLinkage(loc: ParentLocator): { linkage: string; linkage2: string | undefined } {
  const where = { structure: 'parent locator' };
  if (loc.locatorType !== LOCATOR_TYPE_VHDX) {
    throw new VhdxError('ENOTSUP', 'BAD_PARENT_LOCATOR', `parent locator type {${loc.locatorType}} is not the VHDX locator type`, where);
  }
  const linkage = locatorValue(loc, 'parent_linkage');
  if (linkage === undefined || !isGuid(linkage)) {
    throw corrupt('BAD_PARENT_LOCATOR', `parent_linkage is ${linkage === undefined ? 'missing' : `not a GUID (${JSON.stringify(linkage)})`}`, where);
  }
  return { linkage, linkage2: locatorValue(loc, 'parent_linkage2') };
}

/**
 * Check that `parent` is the image the child's locator names: the VHDX locator type, a
 * DataWriteGuid equal to parent_linkage (or parent_linkage2), the child's logical sector
 * size, and a virtual size no larger than the child's. Returns the key that matched.
 */
export function checkParent(child: Layout, parent: VhdxImage, childName?: string): 'parent_linkage' | 'parent_linkage2' {
  const loc = child.parentLocator;
  if (!loc) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${childName ?? 'the image'} is not a differencing image`);
  const { linkage, linkage2 } = locatorLinkage(loc);
  const parentName = parent.name ?? 'the parent';
  const dwg = parent.header.dataWriteGuid;
  let linkedBy: 'parent_linkage' | 'parent_linkage2';
  if (normalizeGuid(linkage) === dwg) linkedBy = 'parent_linkage';
  else if (linkage2 !== undefined && isGuid(linkage2) && normalizeGuid(linkage2) === dwg) linkedBy = 'parent_linkage2';
  else {
    throw new VhdxError(
      'EINVAL',
      'PARENT_MISMATCH',
      `${parentName} is not the parent ${childName ?? 'the child'} was made from: its DataWriteGuid {${dwg}} is not the child's parent_linkage ${linkage}` +
        `${linkage2 !== undefined ? ` or parent_linkage2 ${linkage2}` : ''} (the parent was written to after the child was made, or it is another disk)`,
    );
  }
  if (parent.logicalSectorSize !== child.logicalSectorSize) {
    throw new VhdxError('EINVAL', 'PARENT_MISMATCH', `${parentName} has ${parent.logicalSectorSize}-byte logical sectors, the child ${child.logicalSectorSize}-byte`);
  }
  // A child grown past its parent (resize) reads zeros past the parent's end; a smaller one
  // would hide part of its parent, which nothing makes: refused.
  if (parent.size > child.virtualSize) {
    throw new VhdxError('EINVAL', 'PARENT_MISMATCH', `${parentName} is ${parent.size} bytes, more than the child's ${child.virtualSize} bytes`);
  }
  return linkedBy;
}
