// vhdx info against qemu-img info on a 64 TiB image with 1 MiB blocks (a 512 MiB BAT).
// Targets: ours <= 0.05x qemu-img's wall time and <= 100 MB peak RSS.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cli, compare, fmt, have, scratchDir, sh } from './lib.js';

export function run({ runs = 5 } = {}) {
  if (!have('qemu-img')) return { name: 'info-64t', skipped: 'qemu-img not installed' };
  const img = join(scratchDir, 'big-64t-1m.vhdx');
  if (!existsSync(img)) sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', img, '64T']);
  const r = compare(runs, ['qemu-img', ['info', img]], [process.execPath, [cli, 'info', img]]);
  const ratio = r.b.median / r.a.median;
  return {
    name: 'info on a 64 TiB image, 1 MiB blocks',
    peer: `qemu-img ${fmt(r.a.median)}, ${r.a.rssMB.toFixed(0)} MB`,
    ours: `vhdx ${fmt(r.b.median)}, ${r.b.rssMB.toFixed(0)} MB`,
    ratio,
    target: '<= 0.05 and <= 100 MB',
    ok: ratio <= 0.05 && r.b.rssMB <= 100,
  };
}
