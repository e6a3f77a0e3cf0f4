/**
 * Linux swap areas (mkswap's version 1 header): the last 10 bytes of the first page say
 * "SWAPSPACE2"; the header at byte 1024 gives the version, the last page, the UUID and the
 * label. The page size is the one of the machine that made it: 4 KiB on x86, up to 64 KiB
 * elsewhere; each is tried. A swap area holding a hibernation image carries a suspend signature
 * instead: its pages hold that image, so it counts as used. Otherwise only the header page is
 * used: swap holds nothing across boots.
 */
import { decodeUuid } from '../codec/guid.js';
import type { FilesystemDriver, FilesystemInfo, Region, Run } from './filesystem.js';
import { readIn, textField, view } from './read.js';
import { throwIfAborted } from '../errors.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';

const PAGE_SIZES = [4096, 8192, 16384, 65536] as const;
const SWAP_SIGNATURES = ['SWAPSPACE2'];
/** Signatures that replace the swap signature while a hibernation image is stored. */
const SUSPEND_SIGNATURES = ['S1SUSPEND\0', 'S2SUSPEND\0', 'ULSUSPEND\0', 'LINHIB0001'];
const HEADER_AT = 1024;

/** The page size and signature kind of the swap area at `region`, or null. */
async function findPage(dev: BlockDevice, region: Region): Promise<{ page: Uint8Array; pageSize: number; hibernated: boolean } | null> {
  for (const pageSize of PAGE_SIZES) {
    const page = await readIn(dev, region, 0, pageSize);
    if (!page) return null;
    const tail = String.fromCharCode(...page.subarray(pageSize - 10));
    if (SWAP_SIGNATURES.includes(tail)) return { page, pageSize, hibernated: false };
    if (SUSPEND_SIGNATURES.includes(tail)) return { page, pageSize, hibernated: true };
  }
  return null;
}

export const swapDriver: FilesystemDriver = {
  types: ['swap'],
  async detect(dev, region): Promise<FilesystemInfo | null> {
    const found = await findPage(dev, region);
    if (!found) return null;
    const { page, pageSize, hibernated } = found;
    const dv = view(page);
    // The header is in the byte order of the machine that wrote it.
    const le = dv.getUint32(HEADER_AT, true) === 1;
    if (!le && dv.getUint32(HEADER_AT, false) !== 1) return null;
    const lastPage = dv.getUint32(HEADER_AT + 4, le);
    if (lastPage === 0) return null;
    return {
      type: 'swap',
      label: textField(page, HEADER_AT + 28, 16, 'utf-8'),
      uuid: decodeUuid(page, HEADER_AT + 12),
      size: Math.min(region.length, (lastPage + 1) * pageSize),
      state: hibernated ? 'hibernated' : 'clean',
      untrusted: hibernated ? 'the swap area holds a hibernation image' : null,
    };
  },
  async *usedRuns(dev: BlockDevice, region: Region, info: FilesystemInfo, opts: ProgressOptions = {}): AsyncIterable<Run> {
    throwIfAborted(opts.signal, 'swap used map');
    const found = await findPage(dev, region);
    // Not a swap area any more (changed since detect): all of it counts as used.
    const used = found && !found.hibernated ? found.pageSize : info.size;
    yield { start: region.start, length: Math.min(used, region.length) };
    opts.onProgress?.(info.size, info.size);
  },
};
