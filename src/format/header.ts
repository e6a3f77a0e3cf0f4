/** Header (§2.2.2): a 4 KiB structure in each of the slots at 64 KiB and 128 KiB. */
import { defineStruct, ascii, u16, u32, u64, u64big, guid, type Decoded } from '../codec/struct.js';
import { bytesEqual, isZero } from '../codec/bytes.js';
import { HEADER_OFFSETS } from './constants.js';
import { fatal, firstFatal, tryDecode, type Parsed, type Problem } from './problem.js';

export const HEADER = defineStruct('header', 4096, {
  signature: { at: 0, type: ascii(4), expect: 'head' },
  checksum: { at: 4, type: u32, crc32c: true },
  sequenceNumber: { at: 8, type: u64big },
  fileWriteGuid: { at: 16, type: guid },
  dataWriteGuid: { at: 32, type: guid },
  logGuid: { at: 48, type: guid },
  logVersion: { at: 64, type: u16 },
  version: { at: 66, type: u16 },
  logLength: { at: 68, type: u32 },
  logOffset: { at: 72, type: u64 },
});
export type Header = Decoded<typeof HEADER.fields>;

/** A header as read from its slot. */
export interface HeaderCopy extends Header {
  /** Which slot (1 or 2) holds it. */
  slot: 1 | 2;
}

/** Both header slots, and which header is current. */
export interface HeaderSection {
  /** The headers that decode (signature and checksum), by slot; null where a slot's copy is damaged. */
  headers: [HeaderCopy | null, HeaderCopy | null];
  current: HeaderCopy;
  /** Slots whose copy is damaged and not current: an update of the headers rewrites them. */
  damaged: (1 | 2)[];
}

/** Bytes 80..4095 of a header are reserved. */
const HEADER_RESERVED_AT = 80;

/**
 * Parse the two header copies from the file's first bytes (`section`, from offset 0; a slot the
 * bytes do not reach is left out, as when the file is truncated). The current header is the valid
 * one with the greater sequence number (§2.2.2); both valid with equal numbers is allowed only
 * when they are identical. Damaged copies and reserved bytes are problems that do not stop the
 * open; no valid header, or a current one of another version, does.
 */
export function parseHeaders(section: Uint8Array): Parsed<HeaderSection> {
  const problems: Problem[] = [];
  const headers: [HeaderCopy | null, HeaderCopy | null] = [null, null];
  const damaged: (1 | 2)[] = [];
  const failures: Problem[] = [];
  for (let i = 0; i < 2; i++) {
    const slot = (i + 1) as 1 | 2;
    const off = HEADER_OFFSETS[i]!;
    const name = `header ${slot}`;
    if (section.length < off + HEADER.size) continue;
    const bytes = section.subarray(off, off + HEADER.size);
    const r = tryDecode(() => HEADER.decode(bytes, { fileOffset: off, name }), 'corruption');
    if ('problem' in r) {
      damaged.push(slot);
      failures.push(r.problem);
      const e = r.problem;
      const what = e.reason === 'BAD_SIGNATURE' ? 'has no "head" signature' : e.reason === 'BAD_CHECKSUM' ? 'fails its checksum' : `is invalid (${e.reason})`;
      problems.push({ ...e, message: `${name} ${what}`, structure: name, fileOffset: off });
      continue;
    }
    headers[i] = { ...r.value, slot };
    if (!isZero(bytes.subarray(HEADER_RESERVED_AT))) {
      problems.push({
        severity: 'warning',
        reason: 'RESERVED_NONZERO',
        message: `${name} has non-zero bytes in its reserved area (bytes 80 to 4095)`,
        structure: name,
        fileOffset: off + HEADER_RESERVED_AT,
      });
    }
  }
  const [h1, h2] = headers;
  let current: HeaderCopy;
  if (h1 && h2 && h1.sequenceNumber === h2.sequenceNumber) {
    const [a, b] = HEADER_OFFSETS.map((o) => section.subarray(o, o + HEADER.size)) as [Uint8Array, Uint8Array];
    if (!bytesEqual(a, b)) {
      problems.push(fatal('NO_VALID_HEADER', `both headers have sequence number ${h1.sequenceNumber} but differ`, 'header 1', HEADER_OFFSETS[0]));
      return { value: null, problems };
    }
    problems.push({
      severity: 'info',
      reason: 'EQUAL_SEQUENCE_NUMBERS',
      message: `both headers have sequence number ${h1.sequenceNumber} and identical content (as Disk2VHD writes them); header 1 is used`,
      structure: 'header 1',
      fileOffset: HEADER_OFFSETS[0],
    });
    current = h1;
  } else if (h1 && h2) {
    current = h1.sequenceNumber > h2.sequenceNumber ? h1 : h2;
    // The other header must be usable too: a torn update leaves it as the fallback, so a bad
    // version there is damage.
    const older = current === h1 ? h2 : h1;
    if (older.version !== 1 || older.logVersion !== 0) {
      damaged.push(older.slot);
      problems.push({
        severity: 'corruption',
        reason: 'BAD_VERSION',
        message: `header ${older.slot} (not current) has version ${older.version} and log version ${older.logVersion}, expected 1 and 0`,
        structure: `header ${older.slot}`,
        fileOffset: HEADER_OFFSETS[older.slot - 1],
      });
    }
  } else if (h1 || h2) {
    current = (h1 ?? h2)!;
  } else {
    // A header that has its signature but fails later (checksum, a number beyond 2^53) is the
    // precise finding; when neither even has the signature, there is no header at all.
    const precise = failures.find((p) => p.reason !== 'BAD_SIGNATURE');
    if (precise) {
      const what = precise.reason === 'BAD_CHECKSUM' ? 'its checksum does not match' : `it fails with ${precise.reason}`;
      problems.push({ ...precise, severity: 'fatal', message: `neither header is valid; ${precise.structure} has its signature but ${what}` });
    } else {
      problems.push(fatal('NO_VALID_HEADER', 'neither header has the "head" signature', 'header 1', HEADER_OFFSETS[0]));
    }
    return { value: null, problems };
  }
  const where = [`header ${current.slot}`, HEADER_OFFSETS[current.slot - 1]] as const;
  if (current.version !== 1) problems.push(fatal('BAD_VERSION', `header version ${current.version}, expected 1`, ...where));
  else if (current.logVersion !== 0) problems.push(fatal('BAD_VERSION', `log version ${current.logVersion}, expected 0`, ...where));
  return { value: firstFatal(problems) ? null : { headers, current, damaged }, problems };
}
