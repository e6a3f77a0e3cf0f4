/**
 * Every filesystem driver, in the order their signatures are tried. All of them are asked about
 * a region: the first that recognises it names the filesystem, and when another one recognises
 * it too (a stale signature left by an earlier format), its free space is not trusted.
 */
import type { BlockDevice } from '../device/block-device.js';
import type { FilesystemDriver, FilesystemInfo, Region } from './filesystem.js';
import { bitlockerDriver } from './bitlocker.js';
import { btrfsDriver } from './btrfs.js';
import { exfatDriver } from './exfat.js';
import { extDriver } from './ext.js';
import { fatDriver } from './fat.js';
import { iso9660Driver } from './iso9660.js';
import { luksDriver } from './luks.js';
import { lvm2Driver } from './lvm2.js';
import { ntfsDriver } from './ntfs.js';
import { refsDriver } from './refs.js';
import { swapDriver } from './swap.js';
import { xfsDriver } from './xfs.js';

/**
 * Encrypted volumes first (BitLocker To Go looks like FAT), then boot-sector filesystems, then
 * the others by where their superblock lies.
 */
export const FILESYSTEM_DRIVERS: readonly FilesystemDriver[] = [
  luksDriver,
  bitlockerDriver,
  refsDriver,
  ntfsDriver,
  exfatDriver,
  fatDriver,
  extDriver,
  xfsDriver,
  lvm2Driver,
  swapDriver,
  btrfsDriver,
  iso9660Driver,
];

export interface Detected {
  driver: FilesystemDriver;
  info: FilesystemInfo;
}

/**
 * The filesystem at `region` and its driver, or null when no driver recognises it. Throws only
 * for I/O errors of the device.
 */
export async function detectWithDriver(dev: BlockDevice, region: Region, drivers: readonly FilesystemDriver[] = FILESYSTEM_DRIVERS): Promise<Detected | null> {
  let first: Detected | null = null;
  const others: string[] = [];
  // All drivers at once: their signature reads go out together, so a source that joins
  // adjacent reads (HTTP) fetches a region's superblocks in one request rather than one each.
  const found = await Promise.all(drivers.map((driver) => driver.detect(dev, region)));
  for (const [i, driver] of drivers.entries()) {
    const info = found[i];
    if (!info) continue;
    if (first) others.push(info.type);
    else first = { driver, info };
  }
  if (first && others.length > 0 && first.info.untrusted === null) {
    first = { driver: first.driver, info: { ...first.info, untrusted: `signatures of ${others.join(', ')} are present too` } };
  }
  return first;
}

/** The filesystem at `region` of the device, or null when none is recognised. */
export async function detectFilesystem(dev: BlockDevice, region: Region): Promise<FilesystemInfo | null> {
  return (await detectWithDriver(dev, region))?.info ?? null;
}
