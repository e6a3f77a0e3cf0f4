/**
 * The rules Azure applies to a VHD uploaded as a disk (a page blob), as a list of what a file
 * breaks: a fixed disk, whose footer is at the end of the file with its cookie and a good
 * checksum, whose size is a whole number of MiB and at most what a page blob holds, and whose
 * file is exactly that size plus the 512-byte footer. Upload tools report these as "unsupported
 * virtual size of 2206.4765625 MB" or a "cookie value … expected 'conectix'".
 *
 * Beyond Azure's own rules, a warning when readers would not all see that size (the sizes each
 * reader family takes differ: see geometry.ts), since the disk then changes size on the way.
 */
import type { RandomAccessSource } from '../io/source.js';
import { FOOTER_SIZE } from './footer.js';
import { sizesByReader } from './geometry.js';
import { readVhdLayout } from './layout.js';

/** A page blob holds at most 8 TiB (the footer included); sizes are whole MiB, so this is the largest disk. */
export const AZURE_MAX_SIZE = 8 * 1024 ** 4 - 1024 * 1024;
const MiB = 1024 * 1024;

export type AzureRule = 'footer' | 'checksum' | 'fixed' | 'whole-mib' | 'max-size' | 'file-size' | 'same-size-everywhere';

export interface AzureProblem {
  rule: AzureRule;
  /** 'error': Azure refuses the file; 'warning': it may be accepted, but not read alike everywhere. */
  severity: 'error' | 'warning';
  message: string;
}

/** Every Azure rule the VHD in `source` breaks (empty: Azure accepts it). Reads only the footer. */
export async function azureProblems(source: RandomAccessSource): Promise<AzureProblem[]> {
  const out: AzureProblem[] = [];
  const error = (rule: AzureRule, message: string): void => void out.push({ rule, severity: 'error', message });
  const { layout, problems } = await readVhdLayout(source, { sizeRule: 'current-size' });
  const footerProblem = problems.find((p) => p.structure === 'VHD footer' && p.severity === 'corruption');
  if (!layout || layout.footerFrom !== 'end' || footerProblem) {
    if (footerProblem?.reason === 'BAD_CHECKSUM') error('checksum', `the footer at the end fails its checksum: ${footerProblem.message}`);
    else error('footer', `no valid VHD footer with the cookie "conectix" in the last 512 bytes${footerProblem ? ` (${footerProblem.message})` : ''}`);
    if (!layout) return out;
  }
  const f = layout.footer;
  const size = f.currentSize;
  if (layout.type !== 'fixed') error('fixed', `the disk is ${layout.type}; Azure takes only fixed VHDs`);
  if (size % MiB !== 0) {
    error('whole-mib', `the size ${size} bytes (${(size / MiB).toFixed(7).replace(/0+$/, '')} MiB) is not a whole number of MiB; the next valid size is ${Math.ceil(size / MiB) * MiB} bytes`);
  }
  if (size > AZURE_MAX_SIZE) error('max-size', `the size ${size} bytes is more than the ${AZURE_MAX_SIZE} bytes a page blob holds`);
  if (layout.type === 'fixed' && layout.fileSize !== size + FOOTER_SIZE) {
    error('file-size', `the file is ${layout.fileSize} bytes; a fixed VHD of ${size} bytes is ${size + FOOTER_SIZE} (its data, then the footer)`);
  }
  const r = sizesByReader(f);
  if (new Set([r.currentSize, r.originalSize, r.qemuLegacy, r.qemu10]).size > 1) {
    out.push({
      rule: 'same-size-everywhere',
      severity: 'warning',
      message: `readers disagree on the size: Azure and Hyper-V ${r.currentSize} bytes, libvhdi ${r.originalSize}, qemu 2.6 to 9.2 ${r.qemuLegacy}, qemu 10 ${r.qemu10}`,
    });
  }
  return out;
}
