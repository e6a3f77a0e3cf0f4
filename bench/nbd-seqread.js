// Sequential 1 MiB reads, 8 in flight, through NBD: fio's nbd engine against `vhdx serve -r` and
// `qemu-nbd -f vhdx -r` exporting the same fully allocated 1 GiB image (alternating runs).
import { allocatedImage, compareFio, missingTools } from './nbd-lib.js';

export async function run() {
  const skip = missingTools();
  if (skip) return { name: 'nbd-seqread', skipped: skip };
  const r = await compareFio(allocatedImage(), { rw: 'read', bs: '1m', iodepth: 8 });
  const ratio = r.ours.bwBytes / r.qemu.bwBytes;
  const mib = (x) => (x / 2 ** 20).toFixed(0);
  const runs = (x) => x.runs.map((v) => mib(v.bwBytes)).join('/');
  return {
    name: 'NBD sequential 1 MiB reads, 8 in flight, 1 GiB allocated image (fio nbd engine, medians of 3 x 5 s)',
    peer: `qemu-nbd -f vhdx ${mib(r.qemu.bwBytes)} MiB/s (runs ${runs(r.qemu)})`,
    ours: `vhdx serve ${mib(r.ours.bwBytes)} MiB/s (runs ${runs(r.ours)})`,
    ratio,
    target: '>= 1.0',
    ok: ratio >= 1.0,
  };
}
