/**
 * LUKS encrypted volumes, versions 1 and 2: magic "LUKS\xba\xbe" and a big-endian version at
 * byte 6, the UUID as 40 bytes of text at byte 168, and (LUKS2 only) a label at byte 24. The
 * encrypted contents cannot be read: the whole volume counts as used.
 */
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { readIn, textField, view } from './read.js';

const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];

export const luksDriver: FilesystemDriver = {
  types: ['luks'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const h = await readIn(dev, region, 0, 512);
    if (!h || !MAGIC.every((b, i) => h[i] === b)) return null;
    const version = view(h).getUint16(6, false);
    if (version !== 1 && version !== 2) return null;
    return {
      type: 'luks',
      label: version === 2 ? textField(h, 24, 48, 'utf-8') : null,
      uuid: textField(h, 168, 40),
      size: region.length,
      state: 'unknown',
      untrusted: null,
    };
  },
};
