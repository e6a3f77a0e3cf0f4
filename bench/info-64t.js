// vhdx info against qemu-img info on a 64 TiB image with 1 MiB blocks (a 512 MiB BAT).
// Targets: ours <= 0.05x qemu-img's wall time and <= 100 MB peak RSS.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cli, compare, fmt, have, scratchDir, sh, summarise, timeCmd, withoutCaCerts } from './lib.js';

export function run({ runs = 5 } = {}) {
  if (!have('qemu-img')) return { name: 'info-64t', skipped: 'qemu-img not installed' };
  const img = join(scratchDir, 'big-64t-1m.vhdx');
  if (!existsSync(img)) sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', img, '64T']);
  const r = compare(runs, ['qemu-img', ['info', img]], [process.execPath, [cli, 'info', img]]);
  const ratio = r.b.median / r.a.median;
  // Where the time goes: Node's own start, and (for information) the same command without
  // NODE_EXTRA_CA_CERTS, which makes every Node process parse a CA bundle at start (~40 ms on
  // the machines this was built on) although the CLI never uses TLS. The target is judged on the
  // command as the environment runs it.
  const bare = summarise(Array.from({ length: runs }, () => timeCmd(process.execPath, ['-e', '0']))).median;
  let noCa = '';
  const noCaCmd = withoutCaCerts([process.execPath, [cli, 'info', img]]);
  if (noCaCmd) {
    const t = summarise(Array.from({ length: runs }, () => timeCmd(...noCaCmd))).median;
    noCa = `; without NODE_EXTRA_CA_CERTS ${fmt(t)} (ratio ${(t / r.a.median).toFixed(3)})`;
  }
  return {
    name: 'info on a 64 TiB image, 1 MiB blocks',
    peer: `qemu-img ${fmt(r.a.median)}, ${r.a.rssMB.toFixed(0)} MB`,
    ours: `vhdx ${fmt(r.b.median)}, ${r.b.rssMB.toFixed(0)} MB (node -e 0 alone: ${fmt(bare)}${noCa})`,
    ratio,
    target: '<= 0.05 and <= 100 MB',
    ok: ratio <= 0.05 && r.b.rssMB <= 100,
  };
}
