/**
 * ReFS recognition from its volume boot record: "ReFS" at byte 3 and "FSRS" at byte 16, then
 * the sector count (u64 at 24), bytes per sector (u32 at 32) and the volume serial number (u64
 * at 56, printed as 16 hex digits like an NTFS serial). No used map: it counts as used.
 */
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { hasMagic, powerOfTwoIn, readIn, u64, view } from './read.js';

export const refsDriver: FilesystemDriver = {
  types: ['refs'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const b = await readIn(dev, region, 0, 512);
    if (!b || !hasMagic(b, 3, 'ReFS\0\0\0\0') || !hasMagic(b, 16, 'FSRS')) return null;
    const sectors = u64(b, 24);
    const bytesPerSector = view(b).getUint32(32, true);
    if (sectors === null || !powerOfTwoIn(bytesPerSector, 512, 4096)) return null;
    const size = sectors * bytesPerSector;
    if (!Number.isSafeInteger(size)) return null;
    const serial = view(b).getBigUint64(56, true);
    return {
      type: 'refs',
      label: null,
      uuid: serial.toString(16).toUpperCase().padStart(16, '0'),
      size,
      state: 'unknown',
      untrusted: null,
    };
  },
};
