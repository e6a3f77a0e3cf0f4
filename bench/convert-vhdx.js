// raw -> vhdx convert of 2 GiB of random data: vhdx convert against qemu-img convert -O vhdx,
// on tmpfs (target: ours <= 0.9x qemu-img's wall time, ratio of medians), then into a
// disk-backed folder at two cache modes (see diskRounds), reported beside it. Beside them, for
// reading the ratio: a plain Node read/write loop over the same bytes and a bare Node start.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cli, fsType, have, scratchDir, sh } from './lib.js';
import { benchRuns, diskRounds, plainCopyArgs, rounds, spread, startNote } from './convert-common.js';

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
  const disk = diskRounds(runs, (t, o) => ['convert', ...t, '-f', 'raw', '-O', 'vhdx', raw, o], (t, o) => [cli, 'convert', ...t, '-f', 'raw', '-O', 'vhdx', raw, o], 'vhdx');
  return {
    name: `convert ${sizeGiB} GiB of random data raw -> vhdx, into ${scratchDir} (${fsType(scratchDir)}) and a disk-backed folder`,
    peer: `qemu-img (cache mode unsafe, its default and ours) ${spread(r.qemu)}`,
    ours:
      `vhdx ${spread(r.vhdx)}, median of per-round ratios ${r.vhdx.pairedRatio.toFixed(3)}\n` +
      `  plain Node read/write loop over the same bytes (no VHDX) ${spread(r.plain)} = ${(r.plain.median / r.qemu.median).toFixed(3)}x qemu-img\n` +
      `  ${startNote(r.node)}\n${disk.text}`,
    ratio,
    target: '<= 0.9',
    ok: ratio <= 0.9,
  };
}
