// Helpers for the VHD tests: images in memory, a parent resolver over memory sources, crafted
// footers, and file writing for the peer tools.
import { writeFileSync } from 'node:fs';
import { MemorySource } from '../../src/io/source.js';
import { VhdImage, type VhdOpenOptions, type VhdParentResolver } from '../../src/vhd/image.js';
import { createVhd, type CreateVhdOptions, type CreateVhdResult } from '../../src/vhd/create.js';
import { FOOTER, type Footer } from '../../src/vhd/footer.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A new VHD in memory: { src, result }. */
export async function newVhd(opts: CreateVhdOptions): Promise<{ src: MemorySource; result: CreateVhdResult }> {
  const src = new MemorySource();
  const result = await createVhd(src, opts);
  return { src, result };
}

/** A copy of a memory (or faulty) source's bytes as a new source. */
export function copyOf(src: { bytes(): Uint8Array }): MemorySource {
  return new MemorySource(src.bytes().slice());
}

/**
 * A resolver that opens parents from a map of unique id → MemorySource (copies, read-only), as a
 * file-based resolver would open them by path, passing depth and chain on.
 */
export function memoryResolver(byId: ReadonlyMap<string, MemorySource>, opts: VhdOpenOptions = {}): VhdParentResolver {
  const resolve: VhdParentResolver = async (req) => {
    const src = byId.get(req.parentUniqueId);
    if (!src) throw Object.assign(new Error('no such parent'), { reason: 'PARENT_NOT_FOUND' });
    return VhdImage.open(copyOf(src), { depth: req.depth, chain: req.chain, parent: resolve, name: `parent ${req.depth}`, ...opts });
  };
  return resolve;
}

/** Re-seal a footer's checksum after editing its bytes (both copies when `at0` is true). */
export function patchFooter(bytes: Uint8Array, edit: (footer: Footer) => Partial<Footer>, { at0 = true }: { at0?: boolean } = {}): Uint8Array {
  const places = [bytes.length - 512, ...(at0 ? [0] : [])];
  for (const at of places) {
    const b = bytes.subarray(at, at + 512);
    if (String.fromCharCode(...b.subarray(0, 8)) !== 'conectix') continue;
    const f = FOOTER.decode(b, { lenient: true });
    FOOTER.encode({ ...f, ...edit(f) }, b, 0);
  }
  return bytes;
}

export function writeFile(path: string, src: MemorySource): void {
  writeFileSync(path, src.bytes());
}
