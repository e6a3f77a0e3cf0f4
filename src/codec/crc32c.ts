/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init 0xFFFFFFFF, final XOR),
 * slicing-by-8 with tables built once at load. Tables and the running value stay int32 (no
 * `>>> 0` in the loop): uint32 values above 2^31 would leave V8's small-integer fast path.
 */
const TABLES: Int32Array[] = (() => {
  const t: Int32Array[] = [];
  const t0 = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t0[i] = c;
  }
  t.push(t0);
  for (let s = 1; s < 8; s++) {
    const prev = t[s - 1]!;
    const cur = new Int32Array(256);
    for (let i = 0; i < 256; i++) cur[i] = (prev[i]! >>> 8) ^ t0[prev[i]! & 0xff]!;
    t.push(cur);
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7] = TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

/** Continue a CRC-32C over `data`. `crc` is a previous result (0 to start). */
export function crc32cUpdate(crc: number, data: Uint8Array): number {
  let c = ~crc;
  let i = 0;
  const n = data.length;
  const end8 = n - (n % 8);
  while (i < end8) {
    const a = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c =
      T7[a & 0xff]! ^
      T6[(a >>> 8) & 0xff]! ^
      T5[(a >>> 16) & 0xff]! ^
      T4[a >>> 24]! ^
      T3[data[i + 4]!]! ^
      T2[data[i + 5]!]! ^
      T1[data[i + 6]!]! ^
      T0[data[i + 7]!]!;
    i += 8;
  }
  while (i < n) {
    c = T0[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
    i++;
  }
  return ~c >>> 0;
}

export function crc32c(data: Uint8Array): number {
  return crc32cUpdate(0, data);
}

/**
 * CRC-32C of `data` as if the 4 bytes at `fieldAt` were zero, without copying the buffer.
 * This is how every VHDX checksum is defined.
 */
export function crc32cWithZeroField(data: Uint8Array, fieldAt: number): number {
  let c = crc32cUpdate(0, data.subarray(0, fieldAt));
  c = crc32cUpdate(c, ZERO4);
  return crc32cUpdate(c, data.subarray(fieldAt + 4));
}
const ZERO4 = new Uint8Array(4);
