// vhdx convert -O raw against qemu-img convert -O raw: a fully allocated 2 GiB dynamic image
// with 32 MiB blocks, on tmpfs. Target: ours <= 0.9x qemu-img's wall time.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, compare, fmt, have, scratchDir, sh } from './lib.js';

export function run({ runs = 5, sizeGiB = 2 } = {}) {
  if (!have('qemu-img')) return { name: 'convert-raw', skipped: 'qemu-img not installed' };
  const raw = join(scratchDir, `rand-${sizeGiB}g.raw`);
  const img = join(scratchDir, `rand-${sizeGiB}g-32m.vhdx`);
  if (!existsSync(img)) {
    sh('sh', ['-c', `head -c ${sizeGiB}G /dev/urandom > ${raw}`]);
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=32M', raw, img]);
    rmSync(raw);
  }
  const out = join(scratchDir, 'out.raw');
  const clean = () => rmSync(out, { force: true });
  const r = compare(
    runs,
    ['qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', img, out], { before: clean }],
    [process.execPath, [cli, 'convert', '-O', 'raw', img, out], { before: clean }],
  );
  clean();
  return {
    name: `convert ${sizeGiB} GiB fully allocated (32 MiB blocks) to raw on tmpfs`,
    peer: `qemu-img ${fmt(r.a.median)}`,
    ours: `vhdx ${fmt(r.b.median)}`,
    ratio: r.b.median / r.a.median,
    target: '<= 0.9',
    ok: r.b.median / r.a.median <= 0.9,
  };
}
