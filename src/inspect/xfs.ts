/**
 * XFS recognition from its primary superblock at the start of the filesystem (big-endian,
 * magic "XFSB"): label, UUID, size. The superblock does not say whether the log is clean, so
 * the state is 'unknown'; version 5 superblocks carry a CRC-32C, checked here.
 */
import { crc32cWithZeroField } from '../codec/crc32c.js';
import { decodeUuid } from '../codec/guid.js';
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { hasMagic, powerOfTwoIn, readIn, textField, u64, view } from './read.js';

const SB_CRC_AT = 224;

export const xfsDriver: FilesystemDriver = {
  types: ['xfs'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const sb = await readIn(dev, region, 0, 512);
    if (!sb || !hasMagic(sb, 0, 'XFSB')) return null;
    const dv = view(sb);
    const blockSize = dv.getUint32(4);
    const dataBlocks = u64(sb, 8, false);
    const sectorSize = dv.getUint16(102);
    const agCount = dv.getUint32(88);
    const version = dv.getUint16(100) & 0xf;
    if (!powerOfTwoIn(blockSize, 512, 65536) || !powerOfTwoIn(sectorSize, 512, 32768) || dataBlocks === null || dataBlocks === 0 || agCount === 0) return null;
    if (version < 1 || version > 5) return null;
    let untrusted: string | null = null;
    if (version === 5) {
      const full = sectorSize > 512 ? await readIn(dev, region, 0, sectorSize) : sb;
      const stored = full ? view(full).getUint32(SB_CRC_AT, true) : -1;
      if (!full || crc32cWithZeroField(full.subarray(0, sectorSize), SB_CRC_AT) !== stored) untrusted = 'the XFS superblock fails its CRC-32C';
    }
    if (sb[126] !== 0) untrusted ??= 'the XFS superblock says mkfs did not finish (sb_inprogress)';
    return {
      type: 'xfs',
      label: textField(sb, 108, 12),
      uuid: decodeUuid(sb, 32),
      size: dataBlocks * blockSize,
      state: 'unknown',
      untrusted,
    };
  },
};
