/**
 * CRC-16 with the reflected polynomial 0xA001 (x^16 + x^15 + x^2 + 1), as a raw register
 * update: no initial value or final XOR of its own, the caller passes the running value. ext4
 * group descriptors without metadata_csum carry this checksum, started from 0xFFFF.
 */
const TABLE: Uint16Array = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** Feed `data` into the CRC-16 register `crc`. */
export function crc16Update(crc: number, data: Uint8Array): number {
  let c = crc & 0xffff;
  for (let i = 0; i < data.length; i++) c = (c >>> 8) ^ TABLE[(c ^ data[i]!) & 0xff]!;
  return c;
}
