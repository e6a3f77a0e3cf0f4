// raw -> vhdx convert of 2 GiB of random data: vhdx convert against qemu-img convert -O vhdx,
// on tmpfs. Target: ours <= 0.9x qemu-img's wall time (ratio of medians). Beside them, for
// reading the ratio: a plain Node read/write loop over the same bytes and a bare Node start.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cli, have, scratchDir, sh } from './lib.js';
import { benchRuns, plainCopyArgs, rounds, spread, startNote } from './convert-common.js';

export function run({ runs, sizeGiB = 2 } = {}) {
  if (!have('qemu-img')) return { name: 'convert-vhdx', skipped: 'qemu-img not installed' };
  const raw = join(scratchDir, `rand-${sizeGiB}g.raw`);
  if (!existsSync(raw)) sh('sh', ['-c', `head -c ${sizeGiB}G /dev/urandom > ${raw}`]);
  const out = join(scratchDir, 'out.vhdx');
  const cmds = {
    qemu: ['qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', raw, out]],
    vhdx: [process.execPath, [cli, 'convert', '-f', 'raw', '-O', 'vhdx', raw, out]],
    plain: plainCopyArgs(raw, 0, sizeGiB * 2 ** 30, out),
    node: [process.execPath, ['-e', '0']],
  };
  const r = rounds(benchRuns(runs, Object.keys(cmds).length), cmds, out, 'qemu');
  const ratio = r.vhdx.median / r.qemu.median;
  return {
    name: `convert ${sizeGiB} GiB of random data raw -> vhdx on tmpfs`,
    peer: `qemu-img ${spread(r.qemu)}`,
    ours:
      `vhdx ${spread(r.vhdx)}, median of per-round ratios ${r.vhdx.pairedRatio.toFixed(3)}\n` +
      `  plain Node read/write loop over the same bytes (no VHDX) ${spread(r.plain)} = ${(r.plain.median / r.qemu.median).toFixed(3)}x qemu-img\n` +
      `  ${startNote(r.node)}`,
    ratio,
    target: '<= 0.9',
    ok: ratio <= 0.9,
  };
}
