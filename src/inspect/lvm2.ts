/**
 * LVM2 physical volumes: a label "LABELONE" in one of the first four 512-byte sectors, of type
 * "LVM2 001", pointing at the PV header (its 32-character UUID and the device size). LVM's
 * logical volumes are not followed: a physical volume counts as used in full.
 */
import type { FilesystemDriver, FilesystemInfo } from './filesystem.js';
import { hasMagic, readIn, u64, view } from './read.js';

const LABEL_SECTORS = 4;

/** LVM prints its 32-character UUIDs in groups of 6-4-4-4-4-4-6. */
function lvmUuid(raw: string): string {
  const groups = [6, 4, 4, 4, 4, 4, 6];
  const out: string[] = [];
  let at = 0;
  for (const n of groups) {
    out.push(raw.slice(at, at + n));
    at += n;
  }
  return out.join('-');
}

export const lvm2Driver: FilesystemDriver = {
  types: ['lvm2'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const head = await readIn(dev, region, 0, LABEL_SECTORS * 512);
    if (!head) return null;
    for (let s = 0; s < LABEL_SECTORS; s++) {
      const label = head.subarray(s * 512, (s + 1) * 512);
      if (!hasMagic(label, 0, 'LABELONE') || !hasMagic(label, 24, 'LVM2 001') || u64(label, 8) !== s) continue;
      const pvAt = view(label).getUint32(20, true);
      if (pvAt < 32 || pvAt + 40 > 512) return null;
      const uuid = String.fromCharCode(...label.subarray(pvAt, pvAt + 32));
      if (!/^[0-9A-Za-z!#]{32}$/.test(uuid)) return null;
      const deviceSize = u64(label, pvAt + 32);
      return {
        type: 'lvm2',
        label: null,
        uuid: lvmUuid(uuid),
        size: deviceSize !== null && deviceSize > 0 ? Math.min(deviceSize, region.length) : region.length,
        state: 'unknown',
        untrusted: null,
      };
    }
    return null;
  },
};
