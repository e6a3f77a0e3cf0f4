/** Region table (§2.2.3): 64 KiB, two copies at 192 KiB and 256 KiB. */
import { defineStruct, ascii, u32, u64, guid, viewOf, type Decoded } from '../codec/struct.js';
import { bytesEqual } from '../codec/bytes.js';
import {
  HEADER_SECTION_SIZE,
  MAX_REGION_ENTRIES,
  OBJECT_ALIGNMENT,
  REGION_BAT,
  REGION_METADATA,
  REGION_TABLE_OFFSETS,
  REGION_TABLE_SIZE,
} from './constants.js';
import { fatal, tryDecode, type Parsed, type Problem } from './problem.js';

/** The table's header; its checksum covers the whole 64 KiB table. */
export const REGION_TABLE_HEADER = defineStruct('region table', REGION_TABLE_SIZE, {
  signature: { at: 0, type: ascii(4), expect: 'regi' },
  checksum: { at: 4, type: u32, crc32c: true },
  entryCount: { at: 8, type: u32 },
});

export const REGION_TABLE_ENTRY = defineStruct('region table entry', 32, {
  guid: { at: 0, type: guid },
  fileOffset: { at: 16, type: u64 },
  length: { at: 24, type: u32 },
  flags: { at: 28, type: u32 },
});
export type RegionTableEntry = Decoded<typeof REGION_TABLE_ENTRY.fields>;

export const REGION_FLAG_REQUIRED = 1;
export const REGION_ENTRIES_AT = 16;
export const REGION_ENTRY_SIZE = 32;

/** Build a complete 64 KiB region table with a valid checksum. */
export function encodeRegionTable(entries: readonly RegionTableEntry[]): Uint8Array {
  const b = REGION_TABLE_HEADER.encode({ entryCount: entries.length });
  entries.forEach((e, i) => REGION_TABLE_ENTRY.encode(e, b, REGION_ENTRIES_AT + i * REGION_ENTRY_SIZE));
  REGION_TABLE_HEADER.seal(b);
  return b;
}

/** The regions the format defines, by GUID, with the short name `vhdx info` prints: the one table of them. */
export const KNOWN_REGIONS: Readonly<Record<string, 'BAT' | 'metadata'>> = { [REGION_BAT]: 'BAT', [REGION_METADATA]: 'metadata' };

/** What messages call region `guid`: "BAT region", "metadata region", or "region {guid}" for one the format does not define. */
export function regionName(guid: string): string {
  const known = KNOWN_REGIONS[guid];
  return known ? `${known} region` : `region {${guid}}`;
}

/** Which region table copy the image uses. */
export interface RegionTableChoice {
  /** Copy 1 when it is valid, else copy 2. */
  copy: 1 | 2;
  /** Each copy has its signature and a matching checksum. */
  valid: [boolean, boolean];
  /** Copies to rewrite from the one used: invalid, or valid but different. */
  bad: (1 | 2)[];
}

/**
 * Choose between the two copies (null where the file does not reach one): the first valid one
 * (signature and checksum). A damaged copy, or a valid one that differs from the copy used, is
 * damage the readers work around; neither valid stops the open.
 */
export function chooseRegionTable(copies: readonly [Uint8Array | null, Uint8Array | null]): Parsed<RegionTableChoice> {
  const problems: Problem[] = [];
  let failure1: Problem | null = null;
  const validate = (i: 0 | 1): boolean => {
    const b = copies[i];
    if (!b) return false;
    const name = `region table ${i + 1}`;
    const off = REGION_TABLE_OFFSETS[i];
    const r = tryDecode(() => REGION_TABLE_HEADER.decode(b, { fileOffset: off, name }), 'corruption');
    if (!('problem' in r)) return true;
    const e = r.problem;
    const what = e.reason === 'BAD_SIGNATURE' ? 'has no "regi" signature' : e.reason === 'BAD_CHECKSUM' ? 'fails its checksum' : `is invalid (${e.reason})`;
    const p: Problem = { ...e, message: `${name} ${what}`, structure: name, fileOffset: off };
    problems.push(p);
    if (i === 0) failure1 = p;
    return false;
  };
  const valid1 = validate(0);
  // Identical copies (the usual case) share their verdict: one native compare instead of a
  // second 64 KiB checksum.
  const same = copies[0] !== null && copies[1] !== null && bytesEqual(copies[0], copies[1]);
  const valid: [boolean, boolean] = [valid1, same ? valid1 : validate(1)];
  if (same && failure1) {
    const f: Problem = failure1;
    problems.push({ ...f, message: f.message.replace('region table 1', 'region table 2'), structure: 'region table 2', fileOffset: REGION_TABLE_OFFSETS[1] });
  }
  if (!valid[0] && !valid[1]) {
    // A copy that has its signature but a wrong checksum is the precise finding, as for headers.
    const signed = copies.findIndex((c) => c !== null && REGION_TABLE_HEADER.signatureOk(c));
    if (signed >= 0) {
      problems.push(
        fatal(
          'BAD_CHECKSUM',
          `neither region table copy is valid; region table ${signed + 1} has its signature but its checksum does not match`,
          `region table ${signed + 1}`,
          REGION_TABLE_OFFSETS[signed],
        ),
      );
    } else {
      problems.push(fatal('NO_VALID_REGION_TABLE', 'neither region table copy has the "regi" signature', 'region table 1', REGION_TABLE_OFFSETS[0]));
    }
    return { value: null, problems };
  }
  const used = valid[0] ? 0 : 1;
  const other = 1 - used;
  const bad: (1 | 2)[] = [];
  if (!valid[other]) bad.push((other + 1) as 1 | 2);
  else if (!same && !bytesEqual(copies[used]!, copies[other]!)) {
    bad.push((other + 1) as 1 | 2);
    problems.push({
      severity: 'corruption',
      reason: 'REGION_TABLE_MISMATCH',
      message: `region table ${other + 1} is valid but differs from region table ${used + 1}, which is the one used`,
      structure: `region table ${other + 1}`,
      fileOffset: REGION_TABLE_OFFSETS[other],
    });
  }
  return { value: { copy: (used + 1) as 1 | 2, valid, bad }, problems };
}

/** The regions of a valid region table copy. */
export interface Regions {
  regions: RegionTableEntry[];
  bat: RegionTableEntry;
  metadata: RegionTableEntry;
}

/** What the regions must stay clear of: the file's end and the log. */
export interface RegionLimits {
  fileSize: number;
  logOffset: number;
  logLength: number;
}

/** Offset of the table header's reserved field, and of an entry's flags. */
const RESERVED_AT = 12;
const ENTRY_FLAGS_AT = 28;

/**
 * Parse the entries of a valid region table copy (`table`, copy `copy`): at most 2047; each
 * region once, known unless optional, 1 MiB aligned, after the header section, inside the file,
 * clear of the log and of the other regions; the BAT and metadata regions present. Reserved
 * fields set are warnings.
 */
export function parseRegionEntries(table: Uint8Array, copy: 1 | 2, limits: RegionLimits): Parsed<Regions> {
  const problems: Problem[] = [];
  const name = `region table ${copy}`;
  const offset = copy === 1 ? REGION_TABLE_OFFSETS[0] : REGION_TABLE_OFFSETS[1];
  const stop = (p: Problem): Parsed<Regions> => {
    problems.push(p);
    return { value: null, problems };
  };
  const header = REGION_TABLE_HEADER.decode(table, { fileOffset: offset, name, lenient: true });
  if (header.entryCount > MAX_REGION_ENTRIES) {
    return stop(fatal('REGION_ENTRY_COUNT', `${header.entryCount} entries, more than ${MAX_REGION_ENTRIES}`, name, offset));
  }
  if (viewOf(table).getUint32(RESERVED_AT, true) !== 0) {
    problems.push({ severity: 'warning', reason: 'RESERVED_NONZERO', message: `${name} has a non-zero reserved field`, structure: name, fileOffset: offset + RESERVED_AT });
  }
  const { fileSize, logOffset, logLength } = limits;
  const regions: RegionTableEntry[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < header.entryCount; i++) {
    const at = REGION_ENTRIES_AT + i * REGION_ENTRY_SIZE;
    const where = [`${name} entry ${i}`, offset + at] as const;
    const r = tryDecode(() => REGION_TABLE_ENTRY.decode(table.subarray(at), { fileOffset: where[1], name: where[0] }), 'fatal');
    if ('problem' in r) return stop(r.problem);
    const e = r.value;
    const region = regionName(e.guid);
    if (seen.has(e.guid)) return stop(fatal('REGION_DUPLICATE', `${region} appears twice`, ...where));
    seen.add(e.guid);
    if (KNOWN_REGIONS[e.guid] === undefined && e.flags & REGION_FLAG_REQUIRED) {
      return stop(fatal('UNKNOWN_REQUIRED_REGION', `unknown region {${e.guid}} is marked required`, ...where));
    }
    if (e.fileOffset % OBJECT_ALIGNMENT !== 0 || e.length % OBJECT_ALIGNMENT !== 0 || e.length === 0) {
      return stop(fatal('REGION_MISALIGNED', `${region} at ${e.fileOffset} of ${e.length} bytes is not 1 MiB aligned`, ...where));
    }
    if (e.fileOffset < HEADER_SECTION_SIZE) return stop(fatal('REGION_OVERLAP', `${region} at ${e.fileOffset} overlaps the header section`, ...where));
    if (e.fileOffset + e.length > fileSize) {
      return stop(fatal('REGION_OUT_OF_BOUNDS', `${region} at ${e.fileOffset} of ${e.length} bytes ends beyond the file (${fileSize})`, ...where));
    }
    if (logLength > 0 && e.fileOffset < logOffset + logLength && logOffset < e.fileOffset + e.length) {
      return stop(fatal('LOG_OVERLAP', `the log at ${logOffset} overlaps ${region} at ${e.fileOffset}`, ...where));
    }
    if ((e.flags & ~REGION_FLAG_REQUIRED) !== 0) {
      problems.push({
        severity: 'warning',
        reason: 'RESERVED_NONZERO',
        message: `${name} entry ${i} (${region}) has reserved flag bits set (0x${(e.flags >>> 0).toString(16)})`,
        structure: where[0],
        fileOffset: where[1] + ENTRY_FLAGS_AT,
      });
    }
    regions.push(e);
  }
  const sorted = [...regions].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.fileOffset < a.fileOffset + a.length) {
      return stop(fatal('REGION_OVERLAP', `${regionName(b.guid)} at ${b.fileOffset} overlaps ${regionName(a.guid)} at ${a.fileOffset}`, name, offset));
    }
  }
  const bat = regions.find((r) => r.guid === REGION_BAT);
  const metadata = regions.find((r) => r.guid === REGION_METADATA);
  if (!bat) return stop(fatal('MISSING_REQUIRED_REGION', 'no BAT region', name, offset));
  if (!metadata) return stop(fatal('MISSING_REQUIRED_REGION', 'no metadata region', name, offset));
  return { value: { regions, bat, metadata }, problems };
}
