/**
 * Binary structures declared once as a table of typed fields. `defineStruct` derives `decode`
 * (checks signatures and the checksum, throws a VhdxError naming the structure and file offset)
 * and `encode` (zero-fills every byte no field covers, computes the checksum) from the table, and
 * the TypeScript type of the decoded value from the same table.
 *
 * VHDX is little-endian with CRC-32C checksums; VHD (the older format) is big-endian with a
 * one's-complement byte sum: both kinds of field and checksum are here.
 */
import { VhdxError, corrupt } from '../errors.js';
import { crc32cWithZeroField } from './crc32c.js';
import { decodeGuid, decodeUuid, encodeGuid, encodeUuid } from './guid.js';

export interface FieldType<T> {
  readonly size: number;
  readonly kind: string;
  decode(view: DataView, bytes: Uint8Array, at: number, where: FieldPlace): T;
  encode(view: DataView, bytes: Uint8Array, at: number, value: T): void;
}

/** Where a field sits, for error messages. */
export interface FieldPlace {
  structure: string;
  field: string;
  offset: number;
}

export const u8: FieldType<number> = {
  size: 1,
  kind: 'u8',
  decode: (v, _b, at) => v.getUint8(at),
  encode: (v, _b, at, x) => v.setUint8(at, x),
};

export const u16: FieldType<number> = {
  size: 2,
  kind: 'u16',
  decode: (v, _b, at) => v.getUint16(at, true),
  encode: (v, _b, at, x) => v.setUint16(at, x, true),
};

export const u32: FieldType<number> = {
  size: 4,
  kind: 'u32',
  decode: (v, _b, at) => v.getUint32(at, true),
  encode: (v, _b, at, x) => v.setUint32(at, x >>> 0, true),
};

export const u16be: FieldType<number> = {
  size: 2,
  kind: 'u16be',
  decode: (v, _b, at) => v.getUint16(at, false),
  encode: (v, _b, at, x) => v.setUint16(at, x, false),
};

export const u32be: FieldType<number> = {
  size: 4,
  kind: 'u32be',
  decode: (v, _b, at) => v.getUint32(at, false),
  encode: (v, _b, at, x) => v.setUint32(at, x >>> 0, false),
};

/** A u64 that must fit a JavaScript number exactly (byte offsets and sizes), in either byte order. */
function safeU64Type(littleEndian: boolean): FieldType<number> {
  const [lo, hi] = littleEndian ? [0, 4] : [4, 0];
  return {
    size: 8,
    kind: littleEndian ? 'u64' : 'u64be',
    decode: (v, _b, at, where) => {
      const high = v.getUint32(at + hi, littleEndian);
      if (high > 0x1fffff) {
        throw new VhdxError(
          'EOVERFLOW',
          'NUMBER_TOO_LARGE',
          `${where.field} is 0x${v.getBigUint64(at, littleEndian).toString(16)}, beyond 2^53`,
          { structure: where.structure, offset: where.offset },
        );
      }
      return high * 0x100000000 + v.getUint32(at + lo, littleEndian);
    },
    encode: (v, _b, at, x) => {
      if (!Number.isSafeInteger(x) || x < 0) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `u64 value out of range: ${x}`);
      v.setUint32(at + lo, x % 0x100000000, littleEndian);
      v.setUint32(at + hi, Math.floor(x / 0x100000000), littleEndian);
    },
  };
}

/** A u64 that must fit a JavaScript number exactly (byte offsets and sizes). */
export const u64 = safeU64Type(true);

/** A big-endian u64 that must fit a JavaScript number exactly (VHD's offsets and sizes). */
export const u64be = safeU64Type(false);

/** A full-range big-endian u64 (fields that may hold all ones). */
export const u64bigbe: FieldType<bigint> = {
  size: 8,
  kind: 'u64bigbe',
  decode: (v, _b, at) => v.getBigUint64(at, false),
  encode: (v, _b, at, x) => v.setBigUint64(at, x, false),
};

/** A full-range u64 (sequence numbers). */
export const u64big: FieldType<bigint> = {
  size: 8,
  kind: 'u64big',
  decode: (v, _b, at) => v.getBigUint64(at, true),
  encode: (v, _b, at, x) => v.setBigUint64(at, x, true),
};

export const guid: FieldType<string> = {
  size: 16,
  kind: 'guid',
  decode: (_v, b, at) => decodeGuid(b, at),
  encode: (_v, b, at, x) => encodeGuid(x, b, at),
};

/** A UUID stored in RFC 4122 byte order (VHD's unique ids), as lowercase text. */
export const uuid: FieldType<string> = {
  size: 16,
  kind: 'uuid',
  decode: (_v, b, at) => decodeUuid(b, at),
  encode: (_v, b, at, x) => encodeUuid(x, b, at),
};

/** Fixed-length ASCII text such as a signature. */
export function ascii(size: number): FieldType<string> {
  return {
    size,
    kind: `ascii(${size})`,
    decode: (_v, b, at) => {
      // Byte by byte: no view made per call (a log's descriptors are read by the million).
      let s = '';
      for (let i = 0; i < size; i++) s += String.fromCharCode(b[at + i]!);
      return s;
    },
    encode: (_v, b, at, x) => {
      for (let i = 0; i < size; i++) b[at + i] = i < x.length ? x.charCodeAt(i) & 0xff : 0;
    },
  };
}

/** UTF-16 text in a fixed field, ending at the first NUL character or the field's end. */
function utf16Type(size: number, littleEndian: boolean): FieldType<string> {
  return {
    size,
    kind: `${littleEndian ? 'utf16' : 'utf16be'}(${size})`,
    decode: (v, _b, at) => {
      let s = '';
      for (let i = 0; i + 1 < size; i += 2) {
        const c = v.getUint16(at + i, littleEndian);
        if (c === 0) break;
        s += String.fromCharCode(c);
      }
      return s;
    },
    encode: (v, b, at, x) => {
      b.fill(0, at, at + size);
      const n = Math.min(x.length, Math.floor(size / 2));
      for (let i = 0; i < n; i++) v.setUint16(at + i * 2, x.charCodeAt(i), littleEndian);
    },
  };
}

/** UTF-16LE text in a fixed field (VHDX), ending at the first NUL character or the field's end. */
export function utf16(size: number): FieldType<string> {
  return utf16Type(size, true);
}

/** UTF-16BE text in a fixed field (VHD's parent name). */
export function utf16be(size: number): FieldType<string> {
  return utf16Type(size, false);
}

/**
 * `count` structures of one kind side by side (VHD's eight parent locator entries). Each element
 * is decoded with its own name ("…[3]") and file offset, and encoded by its own declaration.
 */
export function array<F extends Fields>(element: Struct<F>, count: number): FieldType<Decoded<F>[]> {
  return {
    size: element.size * count,
    kind: `${element.name}[${count}]`,
    decode: (_v, b, at, where) =>
      Array.from({ length: count }, (_, i) =>
        element.decode(b.subarray(at + i * element.size), { fileOffset: where.offset + i * element.size, name: `${where.structure} ${where.field}[${i}]` }),
      ),
    encode: (_v, b, at, x) => {
      if (x.length !== count) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${element.name}: ${count} elements expected, ${x.length} given`);
      x.forEach((e, i) => element.encode(e as Encodable<F>, b, at + i * element.size));
    },
  };
}

/** Raw bytes, copied out on decode. */
export function bytes(size: number): FieldType<Uint8Array> {
  return {
    size,
    kind: `bytes(${size})`,
    decode: (_v, b, at) => b.slice(at, at + size),
    encode: (_v, b, at, x) => {
      b.fill(0, at, at + size);
      b.set(x.subarray(0, size), at);
    },
  };
}

/** How a checksum field's value is computed from the structure's bytes, the field itself taken as zero. */
export interface Checksum {
  readonly name: string;
  compute(bytes: Uint8Array, fieldAt: number, fieldSize: number): number;
}

/** CRC-32C (VHDX). */
export const CRC32C_SUM: Checksum = { name: 'CRC-32C', compute: (b, at) => crc32cWithZeroField(b, at) };

/** The one's complement of the sum of every byte (VHD's footer and dynamic header). */
export const ONES_COMPLEMENT_SUM: Checksum = {
  name: "one's complement byte sum",
  compute: (b, at, size) => {
    let sum = 0;
    for (let i = 0; i < b.length; i++) if (i < at || i >= at + size) sum += b[i]!;
    return ~sum >>> 0;
  },
};

export interface FieldSpec<T> {
  readonly at: number;
  readonly type: FieldType<T>;
  /** A constant the field must hold (signatures); checked on decode, written when encode omits it. */
  readonly expect?: T;
  /** This field holds the CRC-32C of the whole structure, computed with the field zeroed. */
  readonly crc32c?: true;
  /** This field holds the structure's checksum, computed this way (`crc32c: true` is CRC32C_SUM). */
  readonly checksum?: Checksum;
}

type Fields = Record<string, FieldSpec<any>>;
type ValueOf<S> = S extends FieldSpec<infer T> ? T : never;
type AutoKeys<F extends Fields> = {
  [K in keyof F]: F[K] extends { expect: unknown } ? K : F[K] extends { crc32c: true } ? K : F[K] extends { checksum: Checksum } ? K : never;
}[keyof F];

export type Decoded<F extends Fields> = { -readonly [K in keyof F]: ValueOf<F[K]> };
export type Encodable<F extends Fields> = { [K in Exclude<keyof F, AutoKeys<F>>]: ValueOf<F[K]> } & {
  [K in AutoKeys<F>]?: ValueOf<F[K]>;
};

export interface DecodeOptions {
  /** File offset of the structure's first byte, for error messages. */
  fileOffset?: number;
  /** Name to use in messages instead of the declared one (e.g. "header 2"). */
  name?: string;
  /** Skip signature and checksum checks (check tools decode damaged copies). */
  lenient?: boolean;
}

export interface Struct<F extends Fields> {
  readonly name: string;
  readonly size: number;
  readonly fields: F;
  decode(bytes: Uint8Array, opts?: DecodeOptions): Decoded<F>;
  /** Encode into a new buffer of `size` bytes (or into `into` at `at`). */
  encode(value: Encodable<F>, into?: Uint8Array, at?: number): Uint8Array;
  /** True when the checksum field matches the bytes (structures without one: true). */
  checksumOk(bytes: Uint8Array): boolean;
  /** Recompute the checksum field in place over the first `size` bytes (after writing entries). */
  seal(bytes: Uint8Array): void;
  /**
   * True when every constant field (the signature) holds its value in the structure starting at
   * `at` of `bytes`, which may be shorter than the structure (false when it does not reach them).
   */
  signatureOk(bytes: Uint8Array, at?: number): boolean;
  /**
   * A reader of field `key` alone, for the structure starting at `base` of `view` (over `bytes`):
   * no signature or checksum check, and nothing else decoded, for loops over millions of records.
   */
  field<K extends keyof F & string>(key: K): (view: DataView, bytes: Uint8Array, base: number) => ValueOf<F[K]>;
}

export function viewOf(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function defineStruct<F extends Fields>(name: string, size: number, fields: F): Struct<F> {
  const entries = Object.entries(fields) as [string, FieldSpec<unknown>][];
  for (const [k, f] of entries) {
    if (f.at < 0 || f.at + f.type.size > size) throw new Error(`struct ${name}: field ${k} outside ${size} bytes`);
  }
  const checksumEntry = entries.find(([, f]) => f.crc32c || f.checksum);
  const checksumField = checksumEntry?.[1];
  const checksumAlgorithm = checksumField?.checksum ?? CRC32C_SUM;
  const isChecksum = (f: FieldSpec<unknown>): boolean => f === checksumField;
  const checksumPlace = { structure: name, field: checksumEntry?.[0] ?? '', offset: checksumField?.at ?? 0 };
  const computeChecksum = (b: Uint8Array, f: FieldSpec<unknown>): number => checksumAlgorithm.compute(b.subarray(0, size), f.at, f.type.size);

  const checksumOk = (b: Uint8Array): boolean => {
    if (checksumField === undefined) return true;
    return checksumField.type.decode(viewOf(b), b, checksumField.at, checksumPlace) === computeChecksum(b, checksumField);
  };

  const expected = entries.filter(([, f]) => f.expect !== undefined);
  const signatureOk = (b: Uint8Array, at = 0): boolean => {
    for (const [k, f] of expected) {
      if (b.length < at + f.at + f.type.size) return false;
      if (f.type.decode(viewOf(b), b, at + f.at, { structure: name, field: k, offset: at + f.at }) !== f.expect) return false;
    }
    return true;
  };

  const seal = (b: Uint8Array): void => {
    if (checksumField === undefined) return;
    checksumField.type.encode(viewOf(b), b, checksumField.at, computeChecksum(b, checksumField));
  };

  return {
    name,
    size,
    fields,
    checksumOk,
    seal,
    signatureOk,
    field(key) {
      const f = fields[key]!;
      // One place, updated per call: a field type reads it only to word an error, at once.
      const place = { structure: name, field: key, offset: 0 };
      return (view, b, base) => {
        place.offset = base + f.at;
        return f.type.decode(view, b, place.offset, place);
      };
    },
    decode(b, opts = {}) {
      const label = opts.name ?? name;
      const base = opts.fileOffset ?? 0;
      if (b.length < size) {
        throw new VhdxError('EIO', 'SHORT_READ', `${label} needs ${size} bytes, got ${b.length}`, {
          structure: label,
          offset: base,
        });
      }
      const view = viewOf(b);
      const out: Record<string, unknown> = {};
      for (const [k, f] of entries) {
        const place = { structure: label, field: k, offset: base + f.at };
        const value = f.type.decode(view, b, f.at, place);
        if (!opts.lenient && f.expect !== undefined && value !== f.expect) {
          throw corrupt('BAD_SIGNATURE', `${label} has ${k} ${JSON.stringify(value)}, expected ${JSON.stringify(f.expect)}`, {
            structure: label,
            offset: base,
          });
        }
        out[k] = value;
      }
      if (!opts.lenient && checksumField !== undefined && !checksumOk(b)) {
        throw corrupt('BAD_CHECKSUM', `${label} checksum mismatch`, { structure: label, offset: base });
      }
      return out as Decoded<F>;
    },
    encode(value, into, at = 0) {
      const b = into ? into.subarray(at, at + size) : new Uint8Array(size);
      if (b.length < size) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${name}: buffer too small`);
      b.fill(0);
      const view = viewOf(b);
      const v = value as Record<string, unknown>;
      for (const [k, f] of entries) {
        if (isChecksum(f)) continue;
        const x = v[k] !== undefined ? v[k] : f.expect;
        if (x === undefined) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${name}: field ${k} missing`);
        f.type.encode(view, b, f.at, x);
      }
      seal(b);
      return b;
    },
  };
}
