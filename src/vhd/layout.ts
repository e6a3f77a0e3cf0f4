/**
 * Reading a VHD's structures from a file: which footer copy to use, the dynamic header, the BAT's
 * place, the parent locators, and the disk's size, every number checked against the file before
 * it sizes anything. What is wrong comes back as data (`readVhdLayout`), so that check can list
 * it; `openVhdLayout` throws the first corruption, for the readers.
 *
 * Where the footer is: a fixed disk has one footer, in the last 512 bytes (511 in files of
 * Virtual PC before 2004). A dynamic or differencing disk has it there too, with a copy at offset
 * 0. The copy at the end is used when it is valid; a dynamic disk whose end footer is missing or
 * damaged (an interrupted write leaves that: a new block is written over the old footer's place)
 * opens from the copy at offset 0, which `repairVhd` writes back to the end. A fixed disk's first
 * sector is the guest's data, never a footer copy.
 */
import { VhdxError, corrupt, formatOffset, type ErrorReason } from '../errors.js';
import { bytesEqual } from '../codec/bytes.js';
import { readBytes, type RandomAccessSource } from '../io/source.js';
import { DISK_TYPE_NAMES, FOOTER, creatorText, FOOTER_COOKIE, FOOTER_SIZE, footerProblems, type Footer, type Problem, type VhdDiskType } from './footer.js';
import { DYNAMIC_HEADER, DYNAMIC_HEADER_COOKIE, DYNAMIC_HEADER_SIZE, dynamicHeaderProblems, type DynamicHeader } from './dynamic-header.js';
import { MAX_LOCATOR_DATA, PlatformCode, decodeLocatorPath, locatorSpaceBytes, platformName } from './parent-locator.js';
import { BAT_ENTRY_SIZE, SECTOR, UNALLOCATED, batBytes, bitmapBytes, blockCount } from './bat.js';
import { MAX_DYNAMIC_VHD_SIZE, MAX_FIXED_VHD_SIZE, diskSizeOf, sizesByReader, type DiskSize, type SizeRule } from './geometry.js';

/** A problem found in a file's structures, with where it is. */
export interface LayoutProblem extends Problem {
  structure: string;
  offset: number;
  /** True when `repairVhd` can fix it (a footer copy rewritten from the other). */
  repairable?: boolean;
}

/** A parent locator entry in use, with its data read. */
export interface VhdLocator {
  /** Index of the entry in the dynamic header (0 to 7). */
  index: number;
  /** The entry's Platform Code field, as a number. */
  platformCode: number;
  /** "W2ru", "W2ku", "MacX"... */
  platform: string;
  /** The path it names, or null when its data is not a path (a "Mac " alias). */
  path: string | null;
  /** File offset of the entry's data, in bytes. */
  offset: number;
  /** Bytes of data the entry names. */
  length: number;
}

/** A piece of the file that holds a structure (blocks must not overlap one). */
export interface FileObject {
  name: string;
  start: number;
  end: number;
}

export interface DynamicLayout {
  headerOffset: number;
  header: DynamicHeader;
  tableOffset: number;
  /** Entries the BAT holds (Max Table Entries). */
  tableEntries: number;
  /** Bytes of the BAT in the file (padded to a sector). */
  tableBytes: number;
  /** Blocks of the disk: the BAT entries that are used. */
  blocks: number;
  blockSize: number;
  bitmapBytes: number;
  /** The structures blocks must not overlap: the footer copy, the header, the BAT, the locators' data. */
  objects: FileObject[];
  /** Where the last structure ends. */
  objectsEnd: number;
  locators: VhdLocator[];
}

export interface VhdLayout {
  fileSize: number;
  /** The footer in use, and its bytes. */
  footer: Footer;
  footerBytes: Uint8Array;
  /** Which copy is in use. */
  footerFrom: 'end' | 'head';
  /** Where the footer at the end is (fileSize − 512, or − 511 for the oldest Virtual PC files). */
  endFooterOffset: number;
  /** True when the footer at the end is valid (and, for dynamic disks, the same as the copy at 0). */
  endFooterOk: boolean;
  /** Dynamic and differencing disks: true when the copy at offset 0 is valid and the same as the one in use. */
  headFooterOk: boolean;
  type: VhdDiskType;
  /** The disk's size in bytes and which rule gave it. */
  size: number;
  sizeInfo: DiskSize;
  /**
   * Where blocks (or a fixed disk's data) must end: the end footer's place when it is valid, the
   * end of the file otherwise.
   */
  dataLimit: number;
  dynamic: DynamicLayout | null;
}

/** How a VHD is read (exported as VhdLayoutOptions). */
export interface LayoutOptions {
  /** Which size to believe: see geometry.ts (default 'auto'). */
  sizeRule?: SizeRule;
}

export interface LayoutResult {
  /** Null when the file cannot be read as a VHD at all (then `problems` says why). */
  layout: VhdLayout | null;
  problems: LayoutProblem[];
}

/**
 * Read and validate a VHD's structures. Damage is reported in `problems`; only read errors of the
 * source throw.
 */
export async function readVhdLayout(src: RandomAccessSource, opts: LayoutOptions = {}): Promise<LayoutResult> {
  const problems: LayoutProblem[] = [];
  const add = (structure: string, offset: number, list: Problem[], repairable = false): void => {
    for (const p of list) problems.push({ ...p, structure, offset, ...(repairable ? { repairable } : {}) });
  };
  const bad = (structure: string, offset: number, reason: ErrorReason, message: string, repairable = false): LayoutResult => {
    add(structure, offset, [{ severity: 'corruption', reason, message }], repairable);
    return { layout: null, problems };
  };
  const fileSize = src.size;
  if (fileSize < FOOTER_SIZE) {
    return bad('file', 0, fileSize === 0 ? 'EMPTY_FILE' : 'NOT_VHD', `a VHD is at least ${FOOTER_SIZE} bytes (its footer); the file has ${fileSize}`);
  }

  // The footer at the end (512 bytes, or 511 in the oldest Virtual PC files).
  let endOffset = fileSize - FOOTER_SIZE;
  let endBytes = await readBytes(src, endOffset, FOOTER_SIZE, 'VHD footer');
  if (!hasCookie(endBytes) && fileSize >= FOOTER_SIZE + 1) {
    const b511 = new Uint8Array(FOOTER_SIZE);
    b511.set(endBytes.subarray(1));
    if (hasCookie(b511)) {
      endBytes = b511;
      endOffset = fileSize - (FOOTER_SIZE - 1);
    }
  }
  const end = readFooter(endBytes, endOffset, 'VHD footer');
  const endProblems = end?.problems ?? null;
  const endValid = end !== null && end.footer !== null && !end.problems.some((p) => p.severity === 'corruption');

  // The copy at offset 0, which only dynamic and differencing disks have.
  const headBytes = fileSize >= 2 * FOOTER_SIZE ? await readBytes(src, 0, FOOTER_SIZE, 'VHD footer copy') : null;
  const head = headBytes ? readFooter(headBytes, 0, 'VHD footer copy') : null;
  const headProblems = head?.problems ?? null;
  const headValid = head !== null && head.footer !== null && !head.problems.some((p) => p.severity === 'corruption');
  const headFooter = headValid ? head.footer : null;
  const headDynamic = headFooter !== null && headFooter.diskType !== 2;

  let footer: Footer;
  let footerBytes: Uint8Array;
  let footerFrom: VhdLayout['footerFrom'];
  if (endValid) {
    footer = end.footer!;
    footerBytes = endBytes;
    footerFrom = 'end';
    add('VHD footer', endOffset, endProblems ?? []);
  } else if (headDynamic) {
    footer = headFooter!;
    footerBytes = headBytes!;
    footerFrom = 'head';
    add('VHD footer copy', 0, headProblems ?? []);
    const what = endProblems === null ? 'has no footer at its end' : `has a damaged footer at its end (${endProblems.find((p) => p.severity === 'corruption')?.message})`;
    add('VHD footer', endOffset, [{ severity: 'corruption', reason: 'FOOTER_MISSING', message: `the ${DISK_TYPE_NAMES[footer.diskType]} disk ${what}; its copy at offset 0 is good` }], true);
  } else if (endProblems !== null) {
    add('VHD footer', endOffset, endProblems);
    return { layout: null, problems };
  } else if (headProblems !== null) {
    add('VHD footer copy', 0, headProblems);
    // A good footer at offset 0 alone, of a fixed disk (which has no copy there): nothing says
    // where the disk ends. Its warnings alone must not pass for the verdict (found by fuzzing).
    if (headValid) add('VHD footer', endOffset, [{ severity: 'corruption', reason: 'FOOTER_MISSING', message: 'no footer at the end of the file, and the one at offset 0 is of a fixed disk, which keeps none there' }]);
    return { layout: null, problems };
  } else {
    return bad('VHD footer', endOffset, 'NOT_VHD', `no VHD footer ("${FOOTER_COOKIE}") at the end of the file or at its start`);
  }

  const type = DISK_TYPE_NAMES[footer.diskType]!;
  let headFooterOk = true;
  if (type !== 'fixed') {
    if (footerFrom === 'end') {
      if (!headValid) {
        const why = headProblems === null ? 'is missing' : `is damaged (${headProblems.find((p) => p.severity === 'corruption')?.message})`;
        add('VHD footer copy', 0, [{ severity: 'corruption', reason: headProblems?.[0]?.reason ?? 'FOOTER_MISSING', message: `the footer copy at offset 0 ${why}` }], true);
        headFooterOk = false;
      } else if (!bytesEqual(headBytes!, footerBytes)) {
        add('VHD footer copy', 0, [{ severity: 'corruption', reason: 'FOOTER_MISMATCH', message: 'the footer copy at offset 0 differs from the footer at the end (the end one is used)' }], true);
        headFooterOk = false;
      }
    }
  }
  const endFooterOk = footerFrom === 'end';
  const dataLimit = endFooterOk ? endOffset : fileSize;

  // The disk's size.
  let sizeInfo: DiskSize;
  try {
    sizeInfo = diskSizeOf(footer, opts.sizeRule ?? 'auto');
  } catch (e) {
    if (e instanceof VhdxError) return bad('VHD footer', endOffset, e.reason, e.message);
    throw e;
  }
  const footerAt = footerFrom === 'end' ? endOffset : 0;
  const footerName = footerFrom === 'end' ? 'VHD footer' : 'VHD footer copy';
  if (footer.currentSize % SECTOR !== 0) {
    add(footerName, footerAt, [{ severity: 'warning', reason: 'BAD_VIRTUAL_SIZE', message: `current size ${footer.currentSize} is not a multiple of 512; the disk ends at ${Math.floor(footer.currentSize / SECTOR) * SECTOR}` }]);
  }
  const readers = sizesByReader(footer);
  if (new Set([readers.currentSize, readers.originalSize, readers.qemuLegacy, readers.qemu10, sizeInfo.size]).size > 1) {
    add(footerName, footerAt, [
      {
        severity: 'warning',
        reason: 'SIZE_RULES_DISAGREE',
        message:
          `readers disagree on this disk's size (creator "${creatorText(footer.creatorApplication)}"): Hyper-V, Azure and 7-Zip read ${readers.currentSize} bytes, ` +
          `libvhdi ${readers.originalSize} (the original size), qemu 2.6 to 9.2 ${readers.qemuLegacy}, qemu 10 ${readers.qemu10}; ${sizeInfo.size} is used (${sizeInfo.why})`,
      },
    ]);
  }
  const size = sizeInfo.size;
  const maxSize = type === 'fixed' ? MAX_FIXED_VHD_SIZE : MAX_DYNAMIC_VHD_SIZE;
  if (size > maxSize) {
    return bad(footerName, footerAt, 'BAD_VIRTUAL_SIZE', `a ${type} disk of ${size} bytes is larger than the ${maxSize}-byte limit`);
  }

  const layout: VhdLayout = { fileSize, footer, footerBytes, footerFrom, endFooterOffset: endOffset, endFooterOk, headFooterOk, type, size, sizeInfo, dataLimit, dynamic: null };
  if (type === 'fixed') {
    if (size > dataLimit) {
      const reason: ErrorReason = sizeInfo.from === 'chs' && footer.currentSize <= dataLimit ? 'BAD_VIRTUAL_SIZE' : 'TRUNCATED_FILE';
      return bad(footerName, footerAt, reason, `the fixed disk is ${size} bytes (${sizeInfo.from === 'chs' ? 'CHS geometry' : 'current size'}) but the file holds only ${dataLimit} bytes of data before its footer`);
    }
    if (size < dataLimit) {
      add('file', size, [{ severity: 'warning', reason: 'LEAKED_SPACE', message: `${dataLimit - size} bytes between the disk's data and the footer belong to nothing` }]);
    }
    return { layout, problems };
  }

  // Dynamic and differencing disks: the dynamic header.
  const dataOffset = footer.dataOffset;
  const headerLimit = BigInt(dataLimit - DYNAMIC_HEADER_SIZE);
  if (dataOffset < BigInt(FOOTER_SIZE) || dataOffset > headerLimit) {
    return bad(footerName, footerAt, 'REGION_OUT_OF_BOUNDS', `the dynamic header's offset 0x${dataOffset.toString(16)} is not inside the file (${fileSize} bytes) after the footer copy`);
  }
  const headerOffset = Number(dataOffset);
  const headerBytes = await readBytes(src, headerOffset, DYNAMIC_HEADER_SIZE, 'VHD dynamic header');
  let header: DynamicHeader;
  try {
    header = DYNAMIC_HEADER.decode(headerBytes, { lenient: true, fileOffset: headerOffset });
  } catch (e) {
    // A field too large for a number (a hostile BAT or locator offset).
    if (e instanceof VhdxError) return bad('VHD dynamic header', headerOffset, e.reason, e.summary);
    throw e;
  }
  const headerProblems = dynamicHeaderProblems(header, headerBytes);
  add('VHD dynamic header', headerOffset, headerProblems);
  if (header.cookie !== DYNAMIC_HEADER_COOKIE || headerProblems.some((p) => p.severity === 'corruption')) return { layout: null, problems };

  const blockSize = header.blockSize;
  const blocks = blockCount(size, blockSize);
  const tableEntries = header.maxTableEntries;
  if (tableEntries < blocks) {
    return bad('VHD dynamic header', headerOffset, 'BAT_TOO_SMALL', `the BAT has ${tableEntries} entries; a ${size}-byte disk of ${blockSize}-byte blocks needs ${blocks}`);
  }
  if (tableEntries !== blocks) {
    add('VHD dynamic header', headerOffset, [{ severity: 'warning', reason: 'BAT_SIZE_MISMATCH', message: `the BAT has ${tableEntries} entries for ${blocks} blocks (7-Zip refuses such a file)` }]);
  }
  const tableOffset = header.tableOffset;
  const tableBytes = batBytes(tableEntries);
  if (tableOffset + tableBytes > dataLimit) {
    return bad('VHD dynamic header', headerOffset, 'REGION_OUT_OF_BOUNDS', `the BAT (${tableEntries} entries at ${formatOffset(tableOffset)}, ${tableBytes} bytes) ends past the data of the ${fileSize}-byte file`);
  }
  if (tableOffset % SECTOR !== 0) {
    add('VHD dynamic header', headerOffset, [{ severity: 'warning', reason: 'REGION_MISALIGNED', message: `the BAT at ${formatOffset(tableOffset)} is not sector aligned` }]);
  }
  const objects: FileObject[] = [
    { name: 'the footer copy', start: 0, end: FOOTER_SIZE },
    { name: 'the dynamic header', start: headerOffset, end: headerOffset + DYNAMIC_HEADER_SIZE },
    { name: 'the BAT', start: tableOffset, end: tableOffset + tableBytes },
  ];

  // Parent locators: differencing disks only (a dynamic disk's entries are ignored).
  const locators: VhdLocator[] = [];
  if (type === 'differencing') {
    for (const [index, e] of header.parentLocators.entries()) {
      if (e.platformCode === PlatformCode.NONE) continue;
      const where = { structure: `VHD parent locator ${index}`, offset: headerOffset + 576 + index * 24 };
      const platform = platformName(e.platformCode);
      const fail = (message: string): LayoutResult => bad(where.structure, where.offset, 'BAD_PARENT_LOCATOR', `${platform} locator: ${message}`);
      if (e.platformDataLength > MAX_LOCATOR_DATA) return fail(`${e.platformDataLength} bytes of data, more than the ${MAX_LOCATOR_DATA} a path can take`);
      const start = e.platformDataOffset;
      if (start < FOOTER_SIZE || start + e.platformDataLength > dataLimit) {
        return fail(`its data (${e.platformDataLength} bytes at ${formatOffset(start)}) is not inside the file`);
      }
      if (e.reserved !== 0) add(where.structure, where.offset, [{ severity: 'warning', reason: 'RESERVED_NONZERO', message: `${platform} locator's reserved field is not zero` }]);
      let space = Math.max(locatorSpaceBytes(e), Math.ceil(e.platformDataLength / SECTOR) * SECTOR);
      if (start + space > dataLimit) space = e.platformDataLength;
      if (space > 0) objects.push({ name: `parent locator ${index} (${platform})`, start, end: start + space });
      const data = await readBytes(src, start, e.platformDataLength, `VHD parent locator ${index}`);
      locators.push({ index, platformCode: e.platformCode, platform, path: decodeLocatorPath(e.platformCode, data), offset: start, length: e.platformDataLength });
    }
  }

  // The structures must not overlap one another.
  objects.sort((a, b) => a.start - b.start);
  for (let i = 1; i < objects.length; i++) {
    const a = objects[i - 1]!;
    const b = objects[i]!;
    if (b.start < a.end) {
      return bad('VHD dynamic header', headerOffset, b.name.startsWith('parent locator') || a.name.startsWith('parent locator') ? 'BAD_PARENT_LOCATOR' : 'REGION_OVERLAP', `${a.name} (${formatOffset(a.start)}-${formatOffset(a.end)}) and ${b.name} (${formatOffset(b.start)}-${formatOffset(b.end)}) overlap`);
    }
  }
  const objectsEnd = Math.max(...objects.map((o) => o.end));
  layout.dynamic = { headerOffset, header, tableOffset, tableEntries, tableBytes, blocks, blockSize, bitmapBytes: bitmapBytes(blockSize), objects, objectsEnd, locators };
  return { layout, problems };
}

/** Read a VHD's layout, throwing the first corruption as a typed error. */
export async function openVhdLayout(src: RandomAccessSource, opts: LayoutOptions = {}): Promise<{ layout: VhdLayout; warnings: LayoutProblem[] }> {
  const { layout, problems } = await readVhdLayout(src, opts);
  const first = problems.find((p) => p.severity === 'corruption' && !(layout && p.repairable));
  if (first || !layout) {
    const p = first ?? problems[0]!;
    throw new VhdxError(p.reason === 'NUMBER_TOO_LARGE' ? 'EOVERFLOW' : 'EINVAL', p.reason, p.message, { structure: p.structure, offset: p.offset });
  }
  return { layout, warnings: problems };
}

/** A footer's values and problems, or null when `bytes` do not start with the cookie (not a footer at all). */
function readFooter(bytes: Uint8Array, fileOffset: number, name: string): { footer: Footer | null; problems: Problem[] } | null {
  if (!hasCookie(bytes)) return null;
  try {
    const footer = FOOTER.decode(bytes, { lenient: true, fileOffset, name });
    return { footer, problems: footerProblems(footer, bytes) };
  } catch (e) {
    // A size too large for a number.
    if (e instanceof VhdxError) return { footer: null, problems: [{ severity: 'corruption', reason: e.reason, message: e.summary }] };
    throw e;
  }
}

function hasCookie(b: Uint8Array): boolean {
  for (let i = 0; i < FOOTER_COOKIE.length; i++) if (b[i] !== FOOTER_COOKIE.charCodeAt(i)) return false;
  return true;
}

/** What a BAT entry says of block `index`. */
export type BlockVerdict =
  | { kind: 'unallocated' }
  | { kind: 'allocated'; fileOffset: number }
  | { kind: 'bad'; reason: ErrorReason; message: string };

/**
 * Judge the BAT entry `sector` of block `index`: its bitmap and the block's part of the disk must
 * lie inside the file's data (before `limit`, the data limit by default; a writer passes where
 * its blocks end) and overlap none of the structures. (Overlaps between blocks need the whole
 * table: see bat-scan.ts.)
 */
export function judgeBlock(layout: VhdLayout, index: number, sector: number, limit = layout.dataLimit): BlockVerdict {
  if (sector === UNALLOCATED) return { kind: 'unallocated' };
  const d = layout.dynamic!;
  const fileOffset = sector * SECTOR;
  const end = fileOffset + d.bitmapBytes + Math.min(d.blockSize, layout.size - index * d.blockSize);
  if (end > limit) {
    return { kind: 'bad', reason: 'BAT_ENTRY_OUT_OF_BOUNDS', message: `block ${index} at ${formatOffset(fileOffset)} ends at ${formatOffset(end)}, past the data of the ${layout.fileSize}-byte file` };
  }
  for (const o of d.objects) {
    if (fileOffset < o.end && o.start < end) {
      return { kind: 'bad', reason: 'BLOCK_OVERLAP', message: `block ${index} at ${formatOffset(fileOffset)} overlaps ${o.name}` };
    }
  }
  return { kind: 'allocated', fileOffset };
}

/** Throw the typed error for a bad BAT entry. */
export function badEntryError(layout: VhdLayout, index: number, v: { reason: ErrorReason; message: string }): VhdxError {
  return corrupt(v.reason, v.message, { structure: `VHD BAT entry ${index}`, offset: layout.dynamic!.tableOffset + index * BAT_ENTRY_SIZE });
}
