/** Parent locator metadata item (§2.6.2.6). */
import { defineStruct, u16, u32, guid, type Decoded } from '../codec/struct.js';
import { VhdxError } from '../errors.js';
import { fatal, orThrow, tryDecode, type Parsed } from './problem.js';

export const PARENT_LOCATOR_HEADER = defineStruct('parent locator header', 20, {
  locatorType: { at: 0, type: guid },
  reserved: { at: 16, type: u16 },
  keyValueCount: { at: 18, type: u16 },
});

export const PARENT_LOCATOR_ENTRY = defineStruct('parent locator entry', 12, {
  keyOffset: { at: 0, type: u32 },
  valueOffset: { at: 4, type: u32 },
  keyLength: { at: 8, type: u16 },
  valueLength: { at: 10, type: u16 },
});
export type ParentLocatorEntry = Decoded<typeof PARENT_LOCATOR_ENTRY.fields>;

/** A differencing image's parent locator: how to find and recognise its parent. */
export interface ParentLocator {
  /** The locator type GUID (b04aefb7-d19e-4a81-b789-25b8e9445913 for VHDX parents). */
  locatorType: string;
  /** Key/value pairs in file order; keys are unique. */
  entries: { key: string; value: string }[];
}

function utf16le(b: Uint8Array, at: number, length: number): string {
  let s = '';
  for (let i = 0; i + 1 < length; i += 2) s += String.fromCharCode(b[at + i]! | (b[at + i + 1]! << 8));
  return s;
}

/**
 * Parse the item from its bytes: the table fits, every key and value is non-empty UTF-16 inside
 * the item after the table, no key twice. `fileOffset` names the item's place in problems.
 */
export function parseParentLocator(item: Uint8Array, fileOffset = 0): Parsed<ParentLocator> {
  const stop = (message: string): Parsed<ParentLocator> => ({ value: null, problems: [fatal('BAD_PARENT_LOCATOR', message, 'parent locator', fileOffset)] });
  const header = tryDecode(() => PARENT_LOCATOR_HEADER.decode(item, { fileOffset }), 'fatal');
  if ('problem' in header) return { value: null, problems: [header.problem] };
  const h = header.value;
  const tableEnd = PARENT_LOCATOR_HEADER.size + h.keyValueCount * PARENT_LOCATOR_ENTRY.size;
  if (tableEnd > item.length) return stop(`${h.keyValueCount} key/value entries do not fit in ${item.length} bytes`);
  const entries: { key: string; value: string }[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < h.keyValueCount; i++) {
    const e = PARENT_LOCATOR_ENTRY.decode(item.subarray(PARENT_LOCATOR_HEADER.size + i * PARENT_LOCATOR_ENTRY.size), {
      fileOffset: fileOffset + PARENT_LOCATOR_HEADER.size + i * PARENT_LOCATOR_ENTRY.size,
    });
    for (const [off, len, what] of [
      [e.keyOffset, e.keyLength, 'key'],
      [e.valueOffset, e.valueLength, 'value'],
    ] as const) {
      if (len === 0 || len % 2 !== 0 || off < tableEnd || off + len > item.length) {
        return stop(`entry ${i} ${what} (offset ${off}, length ${len}) is out of bounds or malformed`);
      }
    }
    const key = utf16le(item, e.keyOffset, e.keyLength);
    if (seen.has(key)) return stop(`duplicate key ${JSON.stringify(key)}`);
    seen.add(key);
    entries.push({ key, value: utf16le(item, e.valueOffset, e.valueLength) });
  }
  return { value: { locatorType: h.locatorType, entries }, problems: [] };
}

/** Decode the item from its bytes, throwing the first problem `parseParentLocator` finds. */
export function decodeParentLocator(item: Uint8Array, fileOffset = 0): ParentLocator {
  return orThrow(parseParentLocator(item, fileOffset));
}

/** Encode a locator: header, entry table, then keys and values packed in order. */
export function encodeParentLocator(loc: ParentLocator): Uint8Array {
  const keys = new Set<string>();
  for (const e of loc.entries) {
    for (const s of [e.key, e.value]) {
      if (s.length === 0 || s.length * 2 > 0xffff) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `parent locator key or value of ${s.length} characters (1 to 32767 allowed)`);
      }
    }
    if (keys.has(e.key)) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `parent locator key ${JSON.stringify(e.key)} given twice`);
    keys.add(e.key);
  }
  const tableEnd = PARENT_LOCATOR_HEADER.size + loc.entries.length * PARENT_LOCATOR_ENTRY.size;
  let size = tableEnd;
  for (const e of loc.entries) size += (e.key.length + e.value.length) * 2;
  const b = new Uint8Array(size);
  PARENT_LOCATOR_HEADER.encode({ locatorType: loc.locatorType, reserved: 0, keyValueCount: loc.entries.length }, b, 0);
  let at = tableEnd;
  const put = (s: string): number => {
    const start = at;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      b[at++] = c & 0xff;
      b[at++] = c >>> 8;
    }
    return start;
  };
  loc.entries.forEach((e, i) => {
    const keyOffset = put(e.key);
    const valueOffset = put(e.value);
    PARENT_LOCATOR_ENTRY.encode(
      { keyOffset, valueOffset, keyLength: e.key.length * 2, valueLength: e.value.length * 2 },
      b,
      PARENT_LOCATOR_HEADER.size + i * PARENT_LOCATOR_ENTRY.size,
    );
  });
  return b;
}
