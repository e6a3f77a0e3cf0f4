// Random 4 KiB reads, 32 in flight, through NBD: fio's nbd engine against `vhdx serve -r` and
// `qemu-nbd -f vhdx -r` exporting the same fully allocated 1 GiB image (alternating runs).
import { allocatedImage, compareFio, missingTools } from './nbd-lib.js';

export async function run() {
  const skip = missingTools();
  if (skip) return { name: 'nbd-randread', skipped: skip };
  const r = await compareFio(allocatedImage(), { rw: 'randread', bs: '4k', iodepth: 32 });
  const ratio = r.ours.iops / r.qemu.iops;
  const runs = (x) => x.runs.map((v) => (v.iops / 1000).toFixed(1)).join('/');
  return {
    name: 'NBD random 4 KiB reads, 32 in flight, 1 GiB allocated image (fio nbd engine, medians of 3 x 5 s)',
    peer: `qemu-nbd -f vhdx ${r.qemu.iops.toFixed(0)} IOPS (runs ${runs(r.qemu)}k)`,
    ours: `vhdx serve ${r.ours.iops.toFixed(0)} IOPS (runs ${runs(r.ours)}k)`,
    ratio,
    target: '>= 1.0',
    ok: ratio >= 1.0,
  };
}
