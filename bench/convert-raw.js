// vhdx convert -O raw against qemu-img convert -O raw: a fully allocated 2 GiB dynamic image
// with 32 MiB blocks, on tmpfs (target: ours <= 0.9x qemu-img's wall time, ratio of medians),
// then into a disk-backed folder at two cache modes (see diskRounds), reported beside it.
// Beside them, for reading the ratio: a plain Node read/write loop over the same bytes (the floor
// for any Node program), a bare Node start, and vhdx without NODE_EXTRA_CA_CERTS when it is set.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, fsType, have, scratchDir, sh, withoutCaCerts } from './lib.js';
import { benchRuns, diskRounds, plainCopyArgs, rounds, spread, startNote } from './convert-common.js';

/** A dynamic VHDX of `sizeGiB` GiB of random data in 32 MiB blocks, laid out by qemu-img in one run (made once; kept in the bench folder). */
export function allocatedImage(sizeGiB) {
  const raw = join(scratchDir, `rand-${sizeGiB}g.raw`);
  const img = join(scratchDir, `rand-${sizeGiB}g-32m.vhdx`);
  if (!existsSync(img)) {
    const made = !existsSync(raw);
    if (made) sh('sh', ['-c', `head -c ${sizeGiB}G /dev/urandom > ${raw}`]);
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=32M', raw, img]);
    if (made) rmSync(raw);
  }
  return img;
}

export function run({ runs, sizeGiB = 2 } = {}) {
  if (!have('qemu-img')) return { name: 'convert-raw', skipped: 'qemu-img not installed' };
  const img = allocatedImage(sizeGiB);
  // qemu lays the blocks out in order, one run of the file: the plain loop copies that run.
  const extents = JSON.parse(sh(process.execPath, [cli, 'map', '--output=json', img]));
  if (extents.length !== 1 || !extents[0].data || extents[0].offset === undefined) throw new Error(`${img} is not one allocated run: ${JSON.stringify(extents)}`);
  const out = join(scratchDir, 'out.raw');
  const vhdx = [process.execPath, [cli, 'convert', '-O', 'raw', img, out]];
  const noCa = withoutCaCerts(vhdx);
  const cmds = {
    qemu: ['qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', img, out]],
    vhdx,
    plain: plainCopyArgs(img, extents[0].offset, extents[0].length, out),
    node: [process.execPath, ['-e', '0']],
    ...(noCa ? { noCa } : {}),
  };
  const r = rounds(benchRuns(runs, Object.keys(cmds).length), cmds, out, 'qemu');
  const ratio = r.vhdx.median / r.qemu.median;
  const disk = diskRounds(runs, (t, o) => ['convert', ...t, '-f', 'vhdx', '-O', 'raw', img, o], (t, o) => [cli, 'convert', ...t, '-O', 'raw', img, o], 'raw');
  return {
    name: `convert ${sizeGiB} GiB fully allocated (32 MiB blocks) to raw, into ${scratchDir} (${fsType(scratchDir)}) and a disk-backed folder`,
    peer: `qemu-img (cache mode unsafe, its default and ours) ${spread(r.qemu)}`,
    ours:
      `vhdx ${spread(r.vhdx)}, median of per-round ratios ${r.vhdx.pairedRatio.toFixed(3)}\n` +
      `  plain Node read/write loop over the same bytes ${spread(r.plain)} = ${(r.plain.median / r.qemu.median).toFixed(3)}x qemu-img; vhdx = ${(r.vhdx.median / r.plain.median).toFixed(3)}x the plain loop\n` +
      `  ${startNote(r.node)}` +
      (r.noCa ? `\n  for information, vhdx without NODE_EXTRA_CA_CERTS ${spread(r.noCa)} = ${(r.noCa.median / r.qemu.median).toFixed(3)}x qemu-img (median of per-round ratios ${r.noCa.pairedRatio.toFixed(3)})` : '') +
      `\n${disk.text}`,
    ratio,
    target: '<= 0.9',
    ok: ratio <= 0.9,
  };
}
