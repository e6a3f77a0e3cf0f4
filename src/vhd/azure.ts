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
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from '../io/source.js';
import type { CreateVhdOptions } from './create.js';
import { FOOTER_SIZE } from './footer.js';
import { sizesByReader } from './geometry.js';
import { readVhdLayout } from './layout.js';

/** A page blob holds at most 8 TiB (the footer included); sizes are whole MiB, so this is the largest disk. */
export const AZURE_MAX_SIZE = 8 * 1024 ** 4 - 1024 * 1024;
const MiB = 1024 * 1024;

/**
 * An Azure rule: a valid footer at the end (`footer`) whose checksum is right (`checksum`), a
 * fixed disk (`fixed`), a size in whole MiB (`whole-mib`) of at most AZURE_MAX_SIZE (`max-size`),
 * a file of the size plus the footer (`file-size`); and every reader seeing one size (`same-size-everywhere`, a warning).
 */
export type AzureRule = 'footer' | 'checksum' | 'fixed' | 'whole-mib' | 'max-size' | 'file-size' | 'same-size-everywhere';

/** A rule Azure applies to uploaded VHDs that a file breaks. */
export interface AzureProblem {
  /** The rule broken. */
  rule: AzureRule;
  /** 'error': Azure refuses the file; 'warning': it may be accepted, but not read alike everywhere. */
  severity: 'error' | 'warning';
  /** For people: what is wrong, with the numbers involved. */
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

/**
 * The footer fields of a VHD made for Azure: Hyper-V's creator ("win ", version 10.0, host
 * "Wi2k"), so that every reader takes Current Size as the size: qemu 2.6 to 9.2 does so only for
 * a few creators (else it believes the geometry, rounded down from the size), qemu 10 for every
 * creator but "vpc " and "qemu", Hyper-V, Azure and 7-Zip always, and libvhdi reads Original
 * Size, which createVhd writes equal. The geometry is then the specification's for the size (see
 * geometryFor), as Hyper-V writes it, rather than the maximum: a generation 1 virtual machine's
 * BIOS shows it to the guest.
 */
export const AZURE_CREATOR = { creatorApplication: 'win ', creatorVersion: 0x000a0000, creatorHostOs: 'Wi2k' } as const;

/**
 * The size of an Azure-ready disk holding `size` bytes: `size` when it is a whole number of MiB;
 * with `round`, the next whole MiB (the disk grows by zeros at its end); otherwise a BAD_ARGUMENT
 * error naming that next size. A size past what a page blob holds is refused either way.
 */
export function azureSize(size: number, round = false): number {
  if (!Number.isSafeInteger(size) || size <= 0) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `size ${size} is not a positive number of bytes`);
  const next = Math.ceil(size / MiB) * MiB;
  if (next !== size && !round) {
    throw new VhdxError(
      'EINVAL',
      'BAD_ARGUMENT',
      `Azure needs a size that is a whole number of MiB; ${size} bytes is ${(size / MiB).toFixed(7).replace(/0+$/, '')} MiB: the next valid size is ${next} bytes (${next / MiB} MiB), which azure=round pads to`,
    );
  }
  if (next > AZURE_MAX_SIZE) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `Azure takes disks of at most ${AZURE_MAX_SIZE} bytes (what a page blob holds, its footer included); ${next} asked`);
  return next;
}

/** createVhd's options for an Azure-ready disk holding `size` bytes: fixed, sized by `azureSize`, Hyper-V's creator. */
export function azureCreateOptions(size: number, round = false): CreateVhdOptions {
  return { size: azureSize(size, round), subformat: 'fixed', ...AZURE_CREATOR };
}
