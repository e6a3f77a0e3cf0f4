/**
 * CRC-32 as in IEEE 802.3, zlib and the UEFI specification (reflected polynomial 0xEDB88320,
 * init 0xFFFFFFFF, final XOR): the checksum of GPT headers and partition-entry arrays. The
 * inputs are small (a header, an entry array of a few KiB), so one table and a byte loop do.
 */
const POLY = 0xedb88320;

const TABLE: Int32Array = (() => {
  const t = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** Continue a CRC-32 over `data`. `crc` is a previous result (0 to start). */
export function crc32Update(crc: number, data: Uint8Array): number {
  let c = ~crc;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

export function crc32(data: Uint8Array): number {
  return crc32Update(0, data);
}

const ZERO4 = new Uint8Array(4);

/** CRC-32 of `data` as if the 4 bytes at `fieldAt` were zero (how GPT headers are summed). */
export function crc32WithZeroField(data: Uint8Array, fieldAt: number): number {
  let c = crc32Update(0, data.subarray(0, fieldAt));
  c = crc32Update(c, ZERO4);
  return crc32Update(c, data.subarray(fieldAt + 4));
}
