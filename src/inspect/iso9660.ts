/**
 * ISO 9660 (ECMA-119) recognition: volume descriptors from byte 32768 (2048-byte sector 16),
 * each "CD001"; the primary one gives the label (volume identifier), the size (volume space
 * size × logical block size, both-endian fields read little-endian) and the creation date,
 * which Linux tools print as the UUID ("2024-01-31-12-00-00-00"). A Joliet supplementary
 * descriptor's UCS-2 label, when present, is the label. A read-only medium: all of it is used.
 */
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { hasMagic, readIn, textField, view } from './read.js';

const DESCRIPTORS_AT = 32768;
const DESCRIPTOR_SIZE = 2048;
/** Descriptors read at most before the terminator. */
const MAX_DESCRIPTORS = 32;
const JOLIET_ESCAPES = ['%/@', '%/C', '%/E'];

function creationUuid(d: Uint8Array): string | null {
  const digits = String.fromCharCode(...d.subarray(813, 829));
  if (!/^\d{16}$/.test(digits) || /^0+$/.test(digits)) return null;
  const parts = [digits.slice(0, 4), digits.slice(4, 6), digits.slice(6, 8), digits.slice(8, 10), digits.slice(10, 12), digits.slice(12, 14), digits.slice(14, 16)];
  return parts.join('-');
}

export const iso9660Driver: FilesystemDriver = {
  types: ['iso9660'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    let primary: Uint8Array | null = null;
    let joliet: string | null = null;
    for (let i = 0; i < MAX_DESCRIPTORS; i++) {
      const d = await readIn(dev, region, DESCRIPTORS_AT + i * DESCRIPTOR_SIZE, DESCRIPTOR_SIZE);
      if (!d || !hasMagic(d, 1, 'CD001')) break;
      const type = d[0]!;
      if (type === 255) break;
      if (type === 1 && !primary) primary = d;
      if (type === 2 && JOLIET_ESCAPES.some((e) => hasMagic(d, 88, e))) joliet = textField(d, 40, 32, 'utf-16be');
    }
    if (!primary) return null;
    const dv = view(primary);
    const blocks = dv.getUint32(80, true);
    const blockSize = dv.getUint16(128, true);
    return {
      type: 'iso9660',
      label: joliet ?? textField(primary, 40, 32),
      uuid: creationUuid(primary),
      size: blocks * (blockSize || DESCRIPTOR_SIZE),
      state: 'clean',
      untrusted: null,
    };
  },
};
