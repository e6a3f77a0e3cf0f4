// Helpers for the VHD tests: images in memory, a parent resolver over memory sources, crafted
// footers, and file writing for the peer tools.
import { writeFileSync } from 'node:fs';
import { MemorySource, VhdImage, createVhd } from '../../dist/index.js';
import { FOOTER } from '../../dist/vhd/footer.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A new VHD in memory: { src, result }. */
export async function newVhd(opts) {
  const src = new MemorySource();
  const result = await createVhd(src, opts);
  return { src, result };
}

/** A copy of a memory source's bytes as a new source. */
export function copyOf(src) {
  return new MemorySource(src.bytes().slice());
}

/**
 * A resolver that opens parents from a map of unique id → MemorySource (copies, read-only), as a
 * file-based resolver would open them by path, passing depth and chain on.
 */
export function memoryResolver(byId, opts = {}) {
  const resolve = async (req) => {
    const src = byId.get(req.parentUniqueId);
    if (!src) throw Object.assign(new Error('no such parent'), { reason: 'PARENT_NOT_FOUND' });
    return VhdImage.open(copyOf(src), { depth: req.depth, chain: req.chain, parent: resolve, name: `parent ${req.depth}`, ...opts });
  };
  return resolve;
}

/** Re-seal a footer's checksum after editing its bytes (both copies when `at0` is true). */
export function patchFooter(bytes, edit, { at0 = true } = {}) {
  const places = [bytes.length - 512, ...(at0 ? [0] : [])];
  for (const at of places) {
    const b = bytes.subarray(at, at + 512);
    if (String.fromCharCode(...b.subarray(0, 8)) !== 'conectix') continue;
    const f = FOOTER.decode(b, { lenient: true });
    FOOTER.encode({ ...f, ...edit(f) }, b, 0);
  }
  return bytes;
}

export function writeFile(path, src) {
  writeFileSync(path, src.bytes());
}
