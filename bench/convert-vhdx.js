// raw -> vhdx convert of 2 GiB of random data: vhdx convert against qemu-img convert -O vhdx,
// on tmpfs. Target: ours <= 0.9x qemu-img's wall time.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, compare, fmt, have, scratchDir, sh } from './lib.js';

export function run({ runs = 5, sizeGiB = 2 } = {}) {
  if (!have('qemu-img')) return { name: 'convert-vhdx', skipped: 'qemu-img not installed' };
  const raw = join(scratchDir, `rand-${sizeGiB}g.raw`);
  if (!existsSync(raw)) sh('sh', ['-c', `head -c ${sizeGiB}G /dev/urandom > ${raw}`]);
  const out = join(scratchDir, 'out.vhdx');
  const clean = () => rmSync(out, { force: true });
  const r = compare(
    runs,
    ['qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', raw, out], { before: clean }],
    [process.execPath, [cli, 'convert', '-f', 'raw', '-O', 'vhdx', raw, out], { before: clean }],
  );
  clean();
  return {
    name: `convert ${sizeGiB} GiB of random data raw -> vhdx on tmpfs`,
    peer: `qemu-img ${fmt(r.a.median)}`,
    ours: `vhdx ${fmt(r.b.median)}`,
    ratio: r.b.median / r.a.median,
    target: '<= 0.9',
    ok: r.b.median / r.a.median <= 0.9,
  };
}
