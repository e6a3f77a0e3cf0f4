/**
 * Opening an image: read each structure and hand its bytes to its parser in format/, in
 * dependency order (identifier, headers, log, region table, metadata, BAT size), so that no
 * number read from the file sizes a buffer or a loop before its parser has checked it. The
 * parsers give problems as data: `openLayout` throws the first fatal one, `check` reports them
 * all (`readLayout`). I/O only through the source.
 */
import { VhdxError } from '../errors.js';
import { NIL_GUID, isNilGuid, randomGuid } from '../codec/guid.js';
import { updateHeaders } from './headers.js';
import { viewOf } from '../codec/struct.js';
import { readBytes, writableSource, zeroInPlace, type RandomAccessSource } from '../io/source.js';
import { HEADER_OFFSETS, HEADER_SECTION_SIZE, LOG_SECTOR_SIZE, METADATA_TABLE_SIZE, MiB, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE } from '../format/constants.js';
import { FILE_IDENTIFIER } from '../format/file-identifier.js';
import { HEADER, parseHeaders, type HeaderCopy } from '../format/header.js';
import { REGION_TABLE_HEADER, chooseRegionTable, parseRegionEntries, type RegionTableEntry } from '../format/region-table.js';
import { parseDiskParameters, parseMetadataTable, systemItemsToRead, type DiskParameters, type MetadataItem } from '../format/metadata.js';
import { BAT_ENTRY_SIZE, batGeometry, judgeBatEntry, parseBatRegion, type BatGeometry } from '../format/bat.js';
import { findActiveSequence, parseLogPlacement, sequenceTargetProblem, type LogEntry, type LogSequence } from '../format/log-entry.js';
import { fatal, firstFatal, problemError, type Parsed, type Problem } from '../format/problem.js';
import { OverlaySource, RANGE_BYTES } from './overlay.js';

export type { MetadataItem } from '../format/metadata.js';

/** A VHDX disk's type: every block allocated at creation (fixed), allocated on write (dynamic), or over a parent (differencing). */
export type DiskType = 'fixed' | 'dynamic' | 'differencing';

export interface HeaderInfo extends HeaderCopy {
  valid: boolean;
}

export interface LogState {
  /** The current header's LogGuid is non-zero: the log must be replayed. */
  dirty: boolean;
  logOffset: number;
  logLength: number;
  /** Entries in the active sequence (0 when clean). */
  entries: number;
  /** Sequence number of the head entry, when dirty. */
  headSequenceNumber?: bigint;
  /**
   * The replay is held in memory over the file, which is untouched (`Layout.source`; a writable
   * open writes it to the file: replayInPlace).
   */
  replayedInMemory: boolean;
}

export interface Layout extends DiskParameters {
  creator: string;
  fileSize: number;
  headers: [HeaderInfo | null, HeaderInfo | null];
  current: HeaderInfo;
  /** Which region table copy was used (1 or 2), and whether the other is valid. */
  regionTableCopy: 1 | 2;
  regionTableCopiesValid: [boolean, boolean];
  regions: RegionTableEntry[];
  batRegion: RegionTableEntry;
  metadataRegion: RegionTableEntry;
  metadataItems: MetadataItem[];
  type: DiskType;
  geometry: BatGeometry;
  /** BAT entries we may index (those the geometry needs; the region holds at least these). */
  batEntries: number;
  log: LogState;
  /** The source reads go through: the file itself, or the file with a replayed log over it. */
  source: RandomAccessSource;
}

/** Largest log we replay in memory. Hyper-V and qemu make 1 MiB logs. */
export const MAX_LOG_REPLAY_BYTES = 64 * MiB;

/**
 * Most ranges a read-only open's in-memory replay holds (24 bytes each: 6 MiB), besides the
 * log's data sectors. A log that Hyper-V, qemu or this library writes needs one range per data
 * sector at most (256 for a 1 MiB log, 8,192 for the largest we replay); only a crafted log of
 * many scattered zero descriptors needs more, and is refused read-only. A writable open, and
 * check, resolve any log this size allows (at most two million descriptors: 96 MiB of ranges).
 */
export const MAX_OVERLAY_RANGES = 1 << 18;

export interface OpenLayoutOptions {
  /** Most ranges the in-memory replay of a dirty log may hold (default MAX_OVERLAY_RANGES). */
  maxOverlayRanges?: number;
}

/** Score a file by its first bytes: 100 when it carries the VHDX identifier, else 0. */
export function probe(firstBytes: Uint8Array): number {
  return FILE_IDENTIFIER.signatureOk(firstBytes) ? 100 : 0;
}

/** The bytes `recognize` looks at: the header section up to the end of region table copy 2. */
export const RECOGNIZE_BYTES = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE;

/**
 * What a file's first bytes (up to RECOGNIZE_BYTES of them) show: `vhdx` when they carry the
 * VHDX identifier; `damaged-vhdx` when they do not, but a header (signature and checksum) or a
 * region table copy is valid at its place, as in a VHDX whose first bytes were overwritten; null
 * when nothing of a VHDX is there. Taking a damaged VHDX for a raw disk would let a write destroy
 * what is left of its metadata, so probing callers refuse it.
 */
export function recognize(head: Uint8Array): 'vhdx' | 'damaged-vhdx' | null {
  if (probe(head) > 0) return 'vhdx';
  for (const [struct, offsets] of [
    [HEADER, HEADER_OFFSETS],
    [REGION_TABLE_HEADER, REGION_TABLE_OFFSETS],
  ] as const) {
    for (const off of offsets) {
      const b = head.subarray(off, off + struct.size);
      if (b.length === struct.size && struct.signatureOk(b) && struct.checksumOk(b)) return 'damaged-vhdx';
    }
  }
  return null;
}

/** What `readLayout` found. */
export interface LayoutRead {
  /** The layout, or null when a fatal problem (or `error`) stopped the read. */
  layout: Layout | null;
  /**
   * The parsers' problems in the order found. At most one is fatal: the one the open throws.
   * After it, the parsers that need only the header section's bytes still run, and what they
   * find short of fatal is kept (a check reports it).
   */
  problems: Problem[];
  /** An error that stopped the read outside the parsers (I/O, a log that cannot be replayed). */
  error: VhdxError | null;
  /** Header slots whose copy is damaged and not current. */
  damagedHeaders: (1 | 2)[];
  /** Region table copies to rewrite from `goodRegionTable` (the copy used). */
  badRegionTables: (1 | 2)[];
  goodRegionTable: Uint8Array | null;
}

/**
 * Read and validate the image's structures. Writes nothing: a dirty log is replayed into an
 * overlay (`layout.source`), and a writer that wants it in the file calls `replayInPlace`.
 */
export async function openLayout(file: RandomAccessSource, opts: OpenLayoutOptions = {}): Promise<Layout> {
  const read = await readLayout(file, opts);
  if (read.layout) return read.layout;
  throw read.error ?? problemError(firstFatal(read.problems)!);
}

/** Read the image's structures as `openLayout` does, giving every problem found instead of throwing the first. */
export async function readLayout(file: RandomAccessSource, opts: OpenLayoutOptions = {}): Promise<LayoutRead> {
  const out: LayoutRead = { layout: null, problems: [], error: null, damagedHeaders: [], badRegionTables: [], goodRegionTable: null };
  try {
    out.layout = await composeLayout(file, opts, out);
  } catch (e) {
    if (!(e instanceof VhdxError)) throw e;
    out.error = e;
  }
  return out;
}

async function composeLayout(file: RandomAccessSource, opts: OpenLayoutOptions, out: LayoutRead): Promise<Layout | null> {
  let stopped = false;
  /** Keep a parse's problems (a fatal one only when it is the first) and give its value, or null once stopped. */
  const take = <T>(parsed: Parsed<T>): T | null => {
    for (const p of parsed.problems) {
      if (p.severity !== 'fatal') out.problems.push(p);
      else if (!stopped) {
        out.problems.push(p);
        stopped = true;
      }
    }
    return stopped ? null : parsed.value;
  };
  const stop = (p: Problem): null => take({ value: null, problems: [p] });

  const fileSize = file.size;
  if (fileSize < 8) return stop({ ...fatal('NOT_VHDX', `file of ${fileSize} bytes is too small to be a VHDX`), fileOffset: 0 });
  // The header section holds everything up to the end of region table 2; read it at once.
  const head = await readHead(file);
  if (!FILE_IDENTIFIER.signatureOk(head)) return stop(fatal('NOT_VHDX', 'no "vhdxfile" signature: not a VHDX image', 'file identifier', 0));
  if (fileSize < HEADER_SECTION_SIZE) {
    stop({ ...fatal('TRUNCATED_FILE', `file of ${fileSize} bytes ends inside the 1 MiB header section`), fileOffset: fileSize });
  }
  const creator = stopped ? '' : FILE_IDENTIFIER.decode(head, { fileOffset: 0 }).creator;
  const section = take(parseHeaders(head));
  if (section) out.damagedHeaders = section.damaged;

  // Log placement, and a dirty log replayed in memory.
  let source: RandomAccessSource = file;
  let replay: Replay | null = null;
  const log: LogState = { dirty: false, logOffset: 0, logLength: 0, entries: 0, replayedInMemory: false };
  if (section) {
    const { current } = section;
    const placement = take(parseLogPlacement({ logOffset: current.logOffset, logLength: current.logLength, dirty: !isNilGuid(current.logGuid) }, fileSize));
    if (placement) {
      Object.assign(log, placement);
      if (placement.dirty) {
        replay = await replayLog(file, current.logGuid, placement.logOffset, placement.logLength, opts, take);
        if (replay) {
          source = replay.overlay;
          log.entries = replay.sequence.entries.length;
          log.headSequenceNumber = replay.sequence.head.header.sequenceNumber;
          log.replayedInMemory = true;
        }
      }
    }
  }

  // Region table: copy 1, else copy 2; read through the replay, which may rewrite it.
  const copies: [Uint8Array | null, Uint8Array | null] = [null, null];
  for (let i = 0; i < 2; i++) {
    const off = REGION_TABLE_OFFSETS[i]!;
    if (source !== file) copies[i] = await readBytes(source, off, REGION_TABLE_SIZE, `region table ${i + 1}`);
    else if (head.length >= off + REGION_TABLE_SIZE) copies[i] = head.subarray(off, off + REGION_TABLE_SIZE);
  }
  const choice = take(chooseRegionTable(copies));
  if (!choice || !section) return null;
  const table = copies[choice.copy - 1]!;
  out.goodRegionTable = table;
  out.badRegionTables = choice.bad;
  const regions = take(parseRegionEntries(table, choice.copy, { fileSize: source.size, logOffset: log.logOffset, logLength: log.logLength }));
  if (!regions) return null;

  // Metadata table and system items.
  const md = regions.metadata;
  // The table and the 64 KiB after it in one read (when the region holds them): Hyper-V, qemu and
  // this library put the system items right after the table, so an image read over HTTP costs
  // one request for its metadata, not two. Items elsewhere are read on their own, together.
  const mdHead = await readBytes(source, md.fileOffset, Math.max(METADATA_TABLE_SIZE, Math.min(md.length, 2 * METADATA_TABLE_SIZE)), 'metadata table');
  const items = take(parseMetadataTable(mdHead.subarray(0, METADATA_TABLE_SIZE), md.fileOffset, md.length));
  const toRead = items && take(systemItemsToRead(items, md.fileOffset));
  if (!items || !toRead) return null;
  const values = new Map<string, Uint8Array>(
    await Promise.all(
      toRead.map(async (it): Promise<[string, Uint8Array]> => [
        it.itemId,
        it.offset + it.length <= mdHead.length ? mdHead.slice(it.offset, it.offset + it.length) : await readBytes(source, md.fileOffset + it.offset, it.length, it.name),
      ]),
    ),
  );
  const disk = take(parseDiskParameters(items, values, md.fileOffset));
  if (!disk) return null;

  // BAT size: large enough for the entries we index, and not absurdly larger.
  const geometry = batGeometry(disk.virtualSize, disk.blockSize, disk.logicalSectorSize, disk.hasParent);
  const bat = take(parseBatRegion(regions.bat, geometry, disk.hasParent));
  if (!bat) return null;

  if (replay) {
    // Everything the replayed structures name is known: bound the replay by it.
    const limit = replayLimit(replay.overlay, fileSize, log.logOffset + log.logLength, regions.regions, regions.bat, bat.entries, geometry, disk.hasParent, disk.blockSize);
    const far = replay.furthest;
    if (far && far.end > limit) {
      return stop(
        fatal(
          'LOG_REPLAY_FAILED',
          `log entry ${far.entry.header.sequenceNumber} writes ${far.length} bytes at ${far.fileOffset}, past the ${limit} bytes the image's structures need (the file is ${fileSize} bytes)`,
          'log',
          log.logOffset + far.entry.logOffset,
        ),
      );
    }
    replay.overlay.capSize(limit);
  }

  const current: HeaderInfo = { ...section.current, valid: true };
  return {
    creator,
    fileSize,
    headers: section.headers.map((h) => (h === section.current ? current : h && { ...h, valid: true })) as Layout['headers'],
    current,
    regionTableCopy: choice.copy,
    regionTableCopiesValid: choice.valid,
    regions: regions.regions,
    batRegion: regions.bat,
    metadataRegion: md,
    metadataItems: items,
    type: disk.hasParent ? 'differencing' : disk.leaveBlocksAllocated ? 'fixed' : 'dynamic',
    ...disk,
    geometry,
    batEntries: bat.entries,
    log,
    source,
  };
}

/** The file's first bytes, up to the end of region table copy 2 (fewer when the file is shorter). */
async function readHead(file: RandomAccessSource): Promise<Uint8Array> {
  const head = new Uint8Array(RECOGNIZE_BYTES);
  let got = 0;
  while (got < head.length) {
    const n = await file.read(got, head.subarray(got));
    if (n <= 0) break;
    got += n;
  }
  return head.subarray(0, got);
}

/**
 * Find the dirty log's active sequence and lay it over the file in memory. Problems of the log's
 * content go to `take`; a log too large to replay in memory, or one whose replay cannot be
 * held, throws.
 */
async function replayLog(
  file: RandomAccessSource,
  logGuid: string,
  logOffset: number,
  logLength: number,
  opts: OpenLayoutOptions,
  take: <T>(parsed: Parsed<T>) => T | null,
): Promise<Replay | null> {
  if (logLength > MAX_LOG_REPLAY_BYTES) {
    throw new VhdxError('ENOTSUP', 'LOG_REPLAY_FAILED', `log of ${logLength} bytes is larger than the ${MAX_LOG_REPLAY_BYTES} bytes replayed in memory`, {
      structure: 'log',
      offset: logOffset,
    });
  }
  const ring = await readBytes(file, logOffset, logLength, 'log');
  const seq = findActiveSequence(ring, logGuid);
  if (!seq) return take({ value: null, problems: [fatal('LOG_NO_VALID_SEQUENCE', `the log holds no valid sequence for LogGuid {${logGuid}}`, 'log', logOffset)] });
  const target = sequenceTargetProblem(seq, logOffset);
  if (target) return take({ value: null, problems: [target] });
  return replayInto(seq, file, logOffset, opts.maxOverlayRanges ?? MAX_OVERLAY_RANGES);
}

function checkNotTruncated(seq: LogSequence, file: RandomAccessSource, logOffset: number): void {
  const head = seq.head.header;
  if (file.size < head.flushedFileOffset) {
    throw new VhdxError('EINVAL', 'LOG_FILE_TRUNCATED', `file of ${file.size} bytes is shorter than the log's FlushedFileOffset ${head.flushedFileOffset}: it was truncated`, {
      structure: 'log',
      offset: logOffset + seq.head.logOffset,
    });
  }
}

interface Replay {
  sequence: LogSequence;
  overlay: OverlaySource;
  /** The write that reaches furthest into the file (null when the sequence writes nothing). */
  furthest: { entry: LogEntry; fileOffset: number; length: number; end: number } | null;
}

/**
 * Lay the sequence's writes over the file, in order, and extend to the head's LastFileOffset
 * (openLayout then caps that at what the replayed structures need). The overlay holds at most
 * `maxRanges` ranges; past that the replay is refused, with what to do instead.
 */
function replayInto(seq: LogSequence, file: RandomAccessSource, logOffset: number, maxRanges: number): Replay {
  checkNotTruncated(seq, file, logOffset);
  const head = seq.head.header;
  let dataBytes = 0;
  for (const e of seq.entries) dataBytes += e.dataSectors * LOG_SECTOR_SIZE;
  let furthest: Replay['furthest'] = null;
  try {
    const overlay = new OverlaySource(file, { maxRanges, dataBytes });
    for (const e of seq.entries) {
      e.forEachWrite((w) => {
        const length = w.kind === 'zero' ? w.length : w.data.length;
        overlay.put(w.fileOffset, length, w.kind === 'zero' ? null : w.data);
        if (length > 0 && (!furthest || w.fileOffset + length > furthest.end)) furthest = { entry: e, fileOffset: w.fileOffset, length, end: w.fileOffset + length };
      });
    }
    overlay.extendTo(head.lastFileOffset);
    return { sequence: seq, overlay, furthest };
  } catch (e) {
    if (e instanceof VhdxError && e.reason === 'LOG_REPLAY_FAILED') {
      throw new VhdxError(
        e.code,
        e.reason,
        `${e.message}, more than a read-only open holds (${maxRanges} ranges, ${maxRanges * RANGE_BYTES} bytes): replay the log into the file instead, with a writable open or \`vhdx check -r all\``,
        { structure: 'log', offset: logOffset + seq.head.logOffset, cause: e },
      );
    }
    throw e;
  }
}

/**
 * The largest file a replay may leave: what the replayed image's own structures can need, so a
 * crafted log can neither grow the file without bound nor write where no structure lies.
 *
 * The file as it is stays: replay writes zeros only inside it. Past its end, a log can need room
 * only for what was allocated in the transactions it carries, and it carries the metadata that
 * names it (§2.3: every BAT, region table and metadata change goes through the log): a region
 * the replayed region table places there (a BAT moved to grow, say), or a payload or sector
 * bitmap block named by a BAT entry that the log itself writes (a writer appends a block, then
 * logs its BAT entry; Hyper-V's LastFileOffset covers such a block). BAT entries the log does not
 * write were in the file before its first entry, and so was the size holding their blocks (it was
 * flushed: FlushedFileOffset, checked against the file's size), so those blocks lie inside the
 * file, or the image is damaged whatever its log says. The region table and the BAT are read as
 * replayed, since the log may be what moves them.
 *
 * Hence the bound: the largest of the file's size, the header section, the log, every region of
 * the replayed table, and every block (taken whole: a writer allocates whole blocks, and a sector
 * bitmap block is no larger) named by a BAT entry in the ranges the log writes; rounded up to
 * 1 MiB, the unit files grow by.
 */
function replayLimit(
  overlay: OverlaySource,
  fileSize: number,
  logEnd: number,
  regions: readonly RegionTableEntry[],
  bat: RegionTableEntry,
  batEntries: number,
  geometry: BatGeometry,
  hasParent: boolean,
  blockSize: number,
): number {
  let end = Math.max(fileSize, HEADER_SECTION_SIZE, logEnd);
  for (const r of regions) end = Math.max(end, r.fileOffset + r.length);
  const batEnd = bat.fileOffset + batEntries * BAT_ENTRY_SIZE;
  for (const r of overlay.ranges()) {
    if (!r.data || r.end <= bat.fileOffset || r.start >= batEnd) continue;
    const view = viewOf(r.data);
    const first = Math.ceil((Math.max(r.start, bat.fileOffset) - bat.fileOffset) / BAT_ENTRY_SIZE);
    const last = Math.floor((Math.min(r.end, batEnd) - bat.fileOffset) / BAT_ENTRY_SIZE);
    for (let i = first; i < last; i++) {
      const at = bat.fileOffset + i * BAT_ENTRY_SIZE - r.start;
      const v = judgeBatEntry(geometry, hasParent, Infinity, i, view.getUint32(at, true), view.getUint32(at + 4, true));
      if (v.kind === 'present') end = Math.max(end, v.fileOffset + blockSize);
    }
  }
  return Math.ceil(end / MiB) * MiB;
}

/**
 * Apply a dirty log to the file itself (§2.3.3): a header update with a new FileWriteGuid (replay
 * is a change to the file), the replayed ranges written once each, a flush, then a header update
 * clearing LogGuid. Returns the entries applied (0 when the log was clean). Replaying twice is
 * harmless: the result is the same.
 *
 * Nothing is written that need not be: the ranges are the sequence's writes resolved (a sector
 * written by many descriptors is written once, with its last value); the file is extended first,
 * to the size the replay leaves (openLayout bounds it by what the image's structures need), so
 * zeros past its old end cost nothing; and zeros inside it are written only over bytes that are
 * not zero already.
 */
export async function replayInPlace(file: RandomAccessSource): Promise<number> {
  const layout = await openLayout(file, { maxOverlayRanges: Infinity });
  if (!layout.log.dirty) return 0;
  const out = writableSource(file, 'replaying the log needs the file open for writing');
  const overlay = layout.source;
  if (!(overlay instanceof OverlaySource)) throw new Error('a dirty log opens with its replay over the file');
  let header = await updateHeaders(out, layout.current, { fileWriteGuid: randomGuid() });
  const oldEnd = out.size;
  if (overlay.size > oldEnd) await out.truncate(overlay.size);
  for (const r of overlay.ranges()) {
    if (r.data) await out.write(r.start, r.data);
    else if (r.start < oldEnd) await zeroInPlace(out, r.start, Math.min(r.end, oldEnd) - r.start);
  }
  await out.flush();
  header = await updateHeaders(out, header, { logGuid: NIL_GUID });
  return layout.log.entries;
}
