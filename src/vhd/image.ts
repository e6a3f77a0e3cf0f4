/**
 * A VHD (qemu's "vpc") image as a block device: fixed, dynamic and differencing disks, read and
 * written through any RandomAccessSource.
 *
 * - Fixed: the disk's bytes are the file's first `size` bytes; the footer follows.
 * - Dynamic: blocks through the BAT; an unallocated block reads as zeros (a hole), and inside an
 *   allocated block a sector whose bitmap bit is clear reads as zeros too (the specification's
 *   "never written"; every writer leaves zeros there, so readers that ignore the bitmap agree).
 * - Differencing: the same, but what is not in this file comes from the parent.
 *
 * Block status follows VHDX's Extent semantics: 'data' for sectors stored here, 'zero' for sectors
 * of an allocated dynamic block whose bit is clear, 'unallocated' for holes; a differencing disk
 * reports its own data at depth 0 and the parent's extents one level deeper.
 *
 * Writes: see writer.ts. Reads and in-place writes run concurrently; nothing holds a lock across
 * payload I/O except a block's own allocation (see writer.ts).
 */
import { VhdxError, checkRequestRange, type RequestKind } from '../errors.js';
import { readExact, writeZeros, type CopyHint, type RandomAccessSource } from '../io/source.js';
import type { DeviceCapabilities, Extent, WritableBlockDevice } from '../device/block-device.js';
import { MAX_CHAIN_DEPTH } from '../driver/image.js';
import { SECTOR, UNALLOCATED, bitRuns } from './bat.js';
import { scanVhdBat } from './bat-scan.js';
import { FOOTER_SIZE, vhdTimestamp, type Footer, type VhdDiskType } from './footer.js';
import { openVhdLayout, type LayoutOptions, type VhdLayout, type VhdLocator } from './layout.js';
import { VhdBat, VhdBitmaps, type VhdCacheOptions } from './tables.js';
import { VhdWriter } from './writer.js';

/** What a parent resolver is asked for. */
export interface VhdParentRequest {
  /** The child's parent locators in use, in header order (W2ru relative paths, W2ku absolute ones...). */
  locators: VhdLocator[];
  /** The parent's file name as the child's dynamic header stores it. */
  parentName: string;
  /** The parent's unique id and modification time the child was made against. */
  parentUniqueId: string;
  /** The parent's time stamp the child records (seconds since 2000-01-01 UTC). */
  parentTimestamp: number;
  /** The child's structures. @internal */
  child: VhdLayout;
  /** Depth the parent will have in the chain (1: the opened image's parent). Pass it to VhdImage.open. */
  depth: number;
  /** Unique ids of the images below the parent, the opened image first. Pass it to VhdImage.open as `chain`. */
  chain: readonly string[];
  /**
   * Check a candidate as the open will (checkVhdParent; throws PARENT_MISMATCH or PARENT_LOOP),
   * for resolvers that try several paths. A parent that passed here is not checked again.
   */
  verify(parent: VhdImage): void;
}

/** Opens the parent a differencing VHD names (read-only), like VHDX's ParentResolver. */
export type VhdParentResolver = (request: VhdParentRequest) => Promise<VhdImage>;

/** Options of {@link VhdImage.open}: access, the parent, the size rule and the caches. */
export interface VhdOpenOptions extends VhdCacheOptions, LayoutOptions {
  /** Open for reading only (the default). A writable open needs a writable source. */
  readOnly?: boolean;
  /**
   * For a differencing disk: opens its parent. The parent is checked (unique id, time stamp, size)
   * and closed with the child. Without one, a differencing disk opens for its metadata only, and
   * reads and writes fail with NO_PARENT.
   */
  parent?: VhdParentResolver;
  /** Depth of this image in a chain (set by resolvers from the request). */
  depth?: number;
  /** Unique ids of the images below this one in a chain (set by resolvers from the request): one seen twice is a loop. */
  chain?: readonly string[];
  /** A name for messages (a path). */
  name?: string;
  /**
   * The file's last modification time (milliseconds since 1970), when the opener knows it. A
   * child's Parent Time Stamp is the parent's modification time for VirtualBox, XenServer and
   * Windows; without it only the parent footer's time stamp can match.
   */
  modifiedTime?: number;
  /** Accept a parent whose time stamp matches neither its modification time nor its footer's (its unique id still must match). */
  ignoreParentTimestamp?: boolean;
}

/**
 * An open VHD (qemu's vpc: fixed, dynamic or differencing), a {@link BlockDevice} over its
 * virtual disk; opened writable, it writes in place with the footer and BAT kept consistent.
 * Open with {@link VhdImage.open} (or `openDevice`); close it when done.
 */
export class VhdImage implements WritableBlockDevice {
  /** True unless opened writable. */
  readonly readOnly: boolean;
  /** All false but `extents` when read-only; never `fastZero` (a VHD writes zeros as data). */
  readonly can: DeviceCapabilities;
  /** The source's hint for long copies (see CopyHint). */
  readonly copyHint: CopyHint | undefined;
  /** Always 512: VHD has no other sector size. */
  readonly logicalSectorSize = SECTOR;
  /** The parent of a differencing disk, when opened with a resolver; else null. */
  readonly parent: VhdImage | null;
  /** Depth in the chain: 0 for the image the caller opened. */
  readonly depth: number;
  /** The name given at open (a path), for messages. */
  readonly name: string | undefined;
  /** The footer's time stamp or the file's modification time, as a VHD time stamp, that children may name. */
  readonly modifiedTimestamp: number | null;
  private readonly bat: VhdBat | null;
  private readonly bitmaps: VhdBitmaps | null;
  private readonly writer: VhdWriter | null;
  private closed = false;

  private constructor(
    /** The structures read at open (the driver's own). @internal */
    readonly layout: VhdLayout,
    private readonly src: RandomAccessSource,
    opts: VhdOpenOptions,
    parent: VhdImage | null,
  ) {
    this.readOnly = opts.readOnly ?? true;
    this.parent = parent;
    this.depth = opts.depth ?? 0;
    this.name = opts.name;
    this.modifiedTimestamp = opts.modifiedTime !== undefined ? vhdTimestamp(opts.modifiedTime) : null;
    const d = layout.dynamic;
    let writer: VhdWriter | null = null;
    this.bat = d ? new VhdBat(src, layout, () => writer?.blocksEnd ?? layout.dataLimit, opts) : null;
    this.bitmaps = d && this.bat ? new VhdBitmaps(src, this.bat, d.bitmapBytes, d.blockSize, opts) : null;
    if (!this.readOnly && this.bat && this.bitmaps) {
      writer = new VhdWriter(src, layout, this.bat, this.bitmaps, parent);
    }
    this.writer = writer;
    const w = !this.readOnly;
    this.can = { zero: w, fastZero: false, discard: w, extents: true, fua: w };
    this.copyHint = src.copyHint;
  }

  /**
   * Open and validate a VHD. Read-only (the default): a dynamic disk whose end footer is missing
   * (an interrupted write) opens from its copy at offset 0. Writable: the image must be whole
   * (both footer copies good, every BAT entry inside the file, no blocks overlapping), else the
   * open changes nothing and fails (`repairVhd` fixes what an interruption leaves).
   */
  static async open(source: RandomAccessSource, opts: VhdOpenOptions = {}): Promise<VhdImage> {
    const readOnly = opts.readOnly ?? true;
    if (!readOnly && (source.readOnly || !source.write || !source.flush || !source.truncate)) {
      throw new VhdxError('EROFS', 'READ_ONLY', 'a writable open needs a writable source');
    }
    const { layout } = await openVhdLayout(source, opts);
    const chain = opts.chain ?? [];
    const id = layout.footer.uniqueId;
    if (chain.includes(id)) {
      throw new VhdxError('EINVAL', 'PARENT_LOOP', `${opts.name ?? 'the image'} (unique id ${id}) is already in the chain: the parents loop`);
    }
    if (!readOnly) await checkWritable(source, layout, opts.name);
    let parent: VhdImage | null = null;
    // Parents a resolver checked already.
    const verified = new WeakSet<VhdImage>();
    if (layout.type === 'differencing' && opts.parent) {
      const depth = (opts.depth ?? 0) + 1;
      if (depth > MAX_CHAIN_DEPTH) throw new VhdxError('EINVAL', 'CHAIN_TOO_DEEP', `the chain of parents is deeper than ${MAX_CHAIN_DEPTH}`);
      const h = layout.dynamic!.header;
      parent = await opts.parent({
        locators: layout.dynamic!.locators,
        parentName: h.parentUnicodeName,
        parentUniqueId: h.parentUniqueId,
        parentTimestamp: h.parentTimestamp,
        child: layout,
        depth,
        chain: [...chain, id],
        verify: (p) => {
          checkVhdParent(layout, p, { ...opts, chain: [...chain, id] });
          verified.add(p);
        },
      });
      try {
        if (!verified.has(parent)) checkVhdParent(layout, parent, { ...opts, chain: [...chain, id] });
      } catch (e) {
        await parent.close();
        throw e;
      }
    }
    return new VhdImage(layout, source, { ...opts, readOnly }, parent);
  }

  /** Size of the virtual disk in bytes, by the size rule in use. */
  get size(): number {
    return this.layout.size;
  }
  /** Fixed, dynamic or differencing. */
  get type(): VhdDiskType {
    return this.layout.type;
  }
  /** The footer as decoded (for info and check). @internal */
  get footer(): Footer {
    return this.layout.footer;
  }
  /** The footer's unique id (a GUID), which a child names its parent by. */
  get uniqueId(): string {
    return this.layout.footer.uniqueId;
  }
  /** Bytes per block (dynamic and differencing disks), or null for a fixed disk. */
  get blockSize(): number | null {
    return this.layout.dynamic?.blockSize ?? null;
  }

  /** The images of the chain from this one down to its last opened parent. */
  get chain(): VhdImage[] {
    const out: VhdImage[] = [];
    for (let i: VhdImage | null = this; i; i = i.parent) out.push(i);
    return out;
  }

  /**
   * Check a request in full without doing any of it: open, inside the disk, writable for a
   * change, and for a change the BAT pages that map the range valid here and down the chain.
   */
  async checkRequest(kind: RequestKind, offset: number, length: number): Promise<void> {
    this.checkOpenRange(kind, offset, length);
    if (kind === 'read' || kind === 'block status') return;
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'image is open read-only');
    if (this.layout.type === 'differencing') this.needParent();
    if (length > 0) await this.validateMapping(offset, length);
  }

  /** Fill `into` with the virtual disk's bytes at `offset` (through the parent where a differencing disk has none). */
  async read(offset: number, into: Uint8Array): Promise<void> {
    this.checkOpenRange('read', offset, into.length);
    if (into.length === 0) return;
    if (!this.bat) return readExact(this.src, offset, into, 'VHD data');
    const parent = this.layout.type === 'differencing' ? this.needParent() : null;
    const pending: Promise<void>[] = [];
    let parentStart = -1; // position in `into` of a run bound for the parent
    let parentLen = 0;
    const flushParent = (): void => {
      if (parentLen > 0) pending.push(parent!.read(offset + parentStart, into.subarray(parentStart, parentStart + parentLen)));
      parentLen = 0;
    };
    await this.mapRange(offset, into.length, (at, length, where, fileOffset) => {
      const pos = at - offset;
      if (where === 'data') {
        pending.push(readExact(this.src, fileOffset, into.subarray(pos, pos + length), 'VHD block'));
      } else if (parent) {
        if (parentLen > 0 && parentStart + parentLen === pos) parentLen += length;
        else {
          flushParent();
          parentStart = pos;
          parentLen = length;
        }
        return;
      } else into.fill(0, pos, pos + length);
      flushParent();
    });
    flushParent();
    await Promise.all(pending);
  }

  /**
   * Extents covering [offset, offset + length) in order, from the BAT and sector bitmaps (a fixed
   * disk is all data); a differencing disk's ranges say which image of the chain holds them.
   */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkOpenRange('block status', offset, length);
    const out: Extent[] = [];
    if (length === 0) return out;
    if (!this.bat) return [{ offset, length, type: 'data', fileOffset: offset }];
    const parent = this.layout.type === 'differencing' ? this.needParent() : null;
    const push = (x: Extent): void => {
      const last = out[out.length - 1];
      if (
        last &&
        last.type === x.type &&
        last.depth === x.depth &&
        last.offset + last.length === x.offset &&
        (x.type !== 'data' || (last.fileOffset !== undefined && last.fileOffset + last.length === x.fileOffset))
      ) {
        last.length += x.length;
      } else out.push(x);
    };
    // Ranges bound for the parent are gathered, then asked of it in one request each.
    const parentRanges: [number, number][] = [];
    const local: Extent[] = [];
    await this.mapRange(offset, length, (at, len, where, fileOffset) => {
      if (where === 'data') local.push({ offset: at, length: len, type: 'data', fileOffset, ...(parent ? { depth: 0 } : {}) });
      else if (parent) {
        const last = parentRanges[parentRanges.length - 1];
        if (last && last[0] + last[1] === at) last[1] += len;
        else parentRanges.push([at, len]);
        local.push({ offset: at, length: len, type: 'unallocated' });
      } else local.push({ offset: at, length: len, type: where === 'hole' ? 'unallocated' : 'zero' });
    });
    if (!parent) {
      local.forEach(push);
      return out;
    }
    const fromParent = await Promise.all(parentRanges.map(([at, len]) => parent.blockStatus(at, len)));
    let k = 0;
    for (const x of local) {
      if (x.type === 'data') {
        push(x);
        continue;
      }
      // This local piece lies inside parent range k (pieces and ranges are both in order).
      while (parentRanges[k]![0] + parentRanges[k]![1] <= x.offset) k++;
      const end = x.offset + x.length;
      for (const p of fromParent[k]!) {
        const from = Math.max(p.offset, x.offset);
        const to = Math.min(p.offset + p.length, end);
        if (to <= from) continue;
        const y: Extent = { offset: from, length: to - from, type: p.type, depth: (p.depth ?? 0) + 1 };
        if (p.fileOffset !== undefined) y.fileOffset = p.fileOffset + (from - p.offset);
        push(y);
      }
    }
    return out;
  }

  /** Write `data` at `offset`, allocating blocks as needed; with `fua`, durable when this returns. */
  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    await this.checkRequest('write', offset, data.length);
    if (data.length === 0) return;
    if (this.writer) return this.writer.write(offset, data, opts.fua ?? false);
    await this.src.write!(offset, data);
    if (opts.fua) await this.src.flush!();
  }

  /** Make the range read as zeros. A dynamic disk's holes stay holes; data is overwritten with zeros (VHD cannot free space). */
  async writeZeroes(offset: number, length: number, opts: { mayDiscard?: boolean; fast?: boolean } = {}): Promise<void> {
    await this.checkRequest('write zeroes', offset, length);
    if (opts.fast) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', 'a VHD cannot zero fast: it writes zeros as data');
    await this.zero(offset, length);
  }

  /** Make the range read as zeros (a VHD has no free-space map: allocated blocks keep their place). */
  async discard(offset: number, length: number): Promise<void> {
    await this.checkRequest('discard', offset, length);
    await this.zero(offset, length);
  }

  /** Make every completed write durable. */
  async flush(): Promise<void> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'image is closed');
    if (this.writer) await this.writer.flush();
    else if (!this.readOnly) await this.src.flush!();
  }

  /** Flush (writable), then close the source and the parent; a second call does nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.writer) await this.writer.flush();
      else if (!this.readOnly) await this.src.flush!();
    } finally {
      try {
        await this.src.close();
      } finally {
        await this.parent?.close();
      }
    }
  }

  private async zero(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    if (this.writer) return this.writer.writeZeroes(offset, length);
    await writeZeros((o, d) => this.src.write!(o, d), offset, length);
  }

  private checkOpenRange(kind: RequestKind, offset: number, length: number): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', `${kind} of ${length} bytes at offset ${offset}: the image is closed`);
    checkRequestRange(kind, offset, length, this.size);
  }

  private needParent(): VhdImage {
    if (!this.parent) {
      throw new VhdxError('EINVAL', 'NO_PARENT', `${this.name ?? 'the image'} is a differencing VHD opened without its parent (no parent resolver)`);
    }
    return this.parent;
  }

  /** Load, and so validate, the BAT pages mapping the range, here and in the parents. */
  private async validateMapping(offset: number, length: number): Promise<void> {
    const d = this.layout.dynamic;
    if (!d || !this.bat) return;
    await this.bat.validate(Math.floor(offset / d.blockSize), Math.floor((offset + length - 1) / d.blockSize));
    if (this.parent) await this.parent.validateMapping(offset, length);
  }

  /**
   * Walk [offset, offset + length) of a dynamic or differencing disk in order, calling `visit`
   * for each piece: 'data' (stored here, at `fileOffset`), 'hole' (its block is not allocated) or
   * 'clear' (an allocated block's sectors whose bit is clear).
   */
  private async mapRange(
    offset: number,
    length: number,
    visit: (at: number, length: number, where: 'data' | 'hole' | 'clear', fileOffset: number) => void,
  ): Promise<void> {
    const d = this.layout.dynamic!;
    const bat = this.bat!;
    const bitmaps = this.bitmaps!;
    const bs = d.blockSize;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const block = Math.floor(pos / bs);
      const blockStart = block * bs;
      const n = Math.min(blockStart + bs, end) - pos;
      const sector = bat.cached(block) ?? (await bat.entry(block));
      if (sector === UNALLOCATED) {
        visit(pos, n, 'hole', 0);
      } else {
        const data = sector * SECTOR + d.bitmapBytes - blockStart; // file offset of the block's data, minus its disk offset
        const bm = bitmaps.cached(block) ?? (await bitmaps.get(block));
        if (bm.full) visit(pos, n, 'data', data + pos);
        else {
          const first = Math.floor((pos - blockStart) / SECTOR);
          let at = pos;
          let s = first;
          for (const r of bitRuns(bm.bits, first, Math.ceil((pos + n - blockStart) / SECTOR) - first)) {
            s += r.count;
            const runEnd = Math.min(blockStart + s * SECTOR, pos + n);
            visit(at, runEnd - at, r.present ? 'data' : 'clear', data + at);
            at = runEnd;
          }
        }
      }
      pos += n;
    }
  }
}

/** What a writable open needs beyond a readable image: both footers good and a sound BAT. */
async function checkWritable(source: RandomAccessSource, layout: VhdLayout, name?: string): Promise<void> {
  const who = name ?? 'the image';
  if (layout.type !== 'fixed' && (!layout.endFooterOk || !layout.headFooterOk)) {
    throw new VhdxError(
      'EINVAL',
      layout.endFooterOk ? 'FOOTER_MISMATCH' : 'FOOTER_MISSING',
      `${who} has ${layout.endFooterOk ? 'a damaged or different footer copy at offset 0' : 'no good footer at its end'} (left by an interrupted write?): repair it first (repairVhd / check -r all)`,
    );
  }
  if (layout.endFooterOffset !== layout.fileSize - FOOTER_SIZE) {
    throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `${who} has a 511-byte footer (Virtual PC before 2004): it can be read, not written`);
  }
  if (!layout.dynamic) return;
  const scan = await scanVhdBat(source, layout, { stopAtFirst: true });
  const bad = scan.problems.find((p) => p.severity === 'corruption');
  if (bad) throw new VhdxError('EINVAL', bad.reason, bad.message, { structure: bad.structure, offset: bad.offset });
  if (!scan.sorted) throw new VhdxError('EINVAL', 'LIMIT_EXCEEDED', `${who} has more allocated blocks than a writable open checks for overlaps`);
}

/**
 * Check that `parent` is the disk a differencing layout names: not a loop, its unique id, its
 * size, and its time stamp (its modification time or its footer's, unless ignored).
 */
export function checkVhdParent(
  child: VhdLayout,
  parent: VhdImage,
  opts: { name?: string; chain?: readonly string[]; ignoreParentTimestamp?: boolean } = {},
): void {
  const h = child.dynamic?.header;
  if (child.type !== 'differencing' || !h) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${opts.name ?? 'the image'} is not a differencing VHD`);
  const parentName = parent.name ?? 'the parent';
  const childName = opts.name ?? 'the child';
  if (parent.uniqueId === child.footer.uniqueId || (opts.chain ?? []).includes(parent.uniqueId)) {
    throw new VhdxError('EINVAL', 'PARENT_LOOP', `${parentName} (unique id ${parent.uniqueId}) is already in the chain: the parents loop`);
  }
  if (parent.uniqueId !== h.parentUniqueId) {
    throw new VhdxError('EINVAL', 'PARENT_MISMATCH', `${parentName} is not the parent of ${childName}: its unique id ${parent.uniqueId} is not ${h.parentUniqueId}`);
  }
  if (parent.size !== child.size) {
    throw new VhdxError('EINVAL', 'PARENT_MISMATCH', `${parentName} is ${parent.size} bytes, ${childName} ${child.size} bytes`);
  }
  const stamps = [parent.footer.timestamp, ...(parent.modifiedTimestamp !== null ? [parent.modifiedTimestamp] : [])];
  if (!opts.ignoreParentTimestamp && !stamps.includes(h.parentTimestamp)) {
    throw new VhdxError(
      'EINVAL',
      'PARENT_MISMATCH',
      `${parentName} has changed since ${childName} was made: ${childName} names time stamp ${h.parentTimestamp}, the parent has ${stamps.join(' (footer) and ')}${stamps.length > 1 ? ' (modified)' : ' (footer; its modification time is not known)'} — ignoreParentTimestamp opens it anyway`,
    );
  }
}
