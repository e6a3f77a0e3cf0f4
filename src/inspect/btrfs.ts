/**
 * Btrfs recognition from its primary superblock at 64 KiB (magic "_BHRfS_M" at byte 0x40 of
 * it): label, filesystem UUID, this device's size. A superblock with a tree-log root has
 * fsync'd changes to replay at the next mount ('needs-recovery'). The CRC-32C checksum (the
 * default csum_type 0) is checked.
 */
import { crc32c } from '../codec/crc32c.js';
import { decodeUuid } from '../codec/guid.js';
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { hasMagic, readIn, textField, u64, view } from './read.js';

const SUPERBLOCK_AT = 0x10000;
const SUPERBLOCK_SIZE = 4096;
const DEV_ITEM_AT = 0xc9;

export const btrfsDriver: FilesystemDriver = {
  types: ['btrfs'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const sb = await readIn(dev, region, SUPERBLOCK_AT, SUPERBLOCK_SIZE);
    if (!sb || !hasMagic(sb, 0x40, '_BHRfS_M') || u64(sb, 0x30) !== SUPERBLOCK_AT) return null;
    const dv = view(sb);
    const deviceBytes = u64(sb, DEV_ITEM_AT + 8);
    const totalBytes = u64(sb, 0x70);
    if (deviceBytes === null || totalBytes === null) return null;
    const csumType = dv.getUint16(0xc4, true);
    let untrusted: string | null = null;
    if (csumType === 0) {
      if (crc32c(sb.subarray(0x20)) !== dv.getUint32(0, true)) untrusted = 'the Btrfs superblock fails its CRC-32C';
    }
    const logRoot = dv.getBigUint64(0x60, true);
    return {
      type: 'btrfs',
      label: textField(sb, 0x12b, 256, 'utf-8'),
      uuid: decodeUuid(sb, 0x20),
      size: deviceBytes > 0 ? deviceBytes : totalBytes,
      state: logRoot !== 0n ? 'needs-recovery' : 'clean',
      untrusted: untrusted ?? (logRoot !== 0n ? 'the Btrfs tree log needs replay' : null),
    };
  },
};
