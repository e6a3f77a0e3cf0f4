/**
 * GUIDs in Microsoft's mixed-endian layout: Data1 u32 LE, Data2 u16 LE, Data3 u16 LE, Data4 as 8 raw
 * bytes. In memory a GUID is its canonical lowercase text "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
 */
import { VhdxError } from '../errors.js';

export const NIL_GUID = '00000000-0000-0000-0000-000000000000';
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
/** Byte i of the text form comes from stored byte ORDER[i]. */
const ORDER = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15] as const;
const GUID_RE = /^([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})$/;

/** The text inside balanced braces, or the text itself. */
function unbrace(text: string): string {
  return text.startsWith('{') && text.endsWith('}') ? text.slice(1, -1) : text;
}

export function decodeGuid(bytes: Uint8Array, at = 0): string {
  let s = '';
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += '-';
    s += HEX[bytes[at + ORDER[i]!]!];
  }
  return s;
}

/**
 * A UUID stored in RFC 4122 byte order (all bytes in text order), as Linux filesystems store
 * theirs and libuuid prints them: lowercase "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
 */
export function decodeUuid(bytes: Uint8Array, at = 0): string {
  let s = '';
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += '-';
    s += HEX[bytes[at + i]!];
  }
  return s;
}

/** Store a UUID in RFC 4122 byte order (the inverse of decodeUuid). */
export function encodeUuid(uuid: string, into: Uint8Array, at = 0): void {
  const hex = normalizeGuid(uuid).replace(/-/g, '');
  for (let i = 0; i < 16; i++) into[at + i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
}

export function isGuid(text: string): boolean {
  return GUID_RE.test(unbrace(text));
}

/** Parse "{xxxxxxxx-...}" or "xxxxxxxx-..." (any case) to the canonical lowercase form. */
export function normalizeGuid(text: string): string {
  const m = GUID_RE.exec(unbrace(text));
  if (!m) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `not a GUID: ${JSON.stringify(text)}`);
  return `${m[1]}-${m[2]}-${m[3]}-${m[4]}-${m[5]}`.toLowerCase();
}

export function encodeGuid(guid: string, into: Uint8Array, at = 0): void {
  const hex = normalizeGuid(guid).replace(/-/g, '');
  for (let i = 0; i < 16; i++) into[at + ORDER[i]!] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
}

export function isNilGuid(guid: string): boolean {
  return guid === NIL_GUID;
}

/** A random version 4 GUID (Web Crypto is in Node ≥ 20 and every browser). */
export function randomGuid(): string {
  return globalThis.crypto.randomUUID();
}
