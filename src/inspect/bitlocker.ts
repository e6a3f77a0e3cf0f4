/**
 * BitLocker volumes: the boot sector's OEM field says "-FVE-FS-" (Windows Vista and later), or
 * "MSWIN4.1" with the BitLocker identifier GUID at byte 424 (BitLocker To Go). The encrypted
 * contents cannot be read: the whole volume counts as used.
 */
import { decodeGuid } from '../codec/guid.js';
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { hasMagic, readIn } from './read.js';

const BITLOCKER_GUID = '4967d63b-2e29-4ad8-8399-f6a339e3d001';

export const bitlockerDriver: FilesystemDriver = {
  types: ['bitlocker'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const b = await readIn(dev, region, 0, 512);
    if (!b || b[510] !== 0x55 || b[511] !== 0xaa) return null;
    const fve = hasMagic(b, 3, '-FVE-FS-');
    const toGo = hasMagic(b, 3, 'MSWIN4.1') && decodeGuid(b, 424) === BITLOCKER_GUID;
    if (!fve && !toGo) return null;
    return { type: 'bitlocker', label: null, uuid: null, size: region.length, state: 'unknown', untrusted: null };
  },
};
