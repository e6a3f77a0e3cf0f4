// VHDX -> VHD conversions beside qemu-img in the same run (issue 17 item 7), on tmpfs, in
// alternating rounds (see rounds in convert-common.js; 6 unless VHDX_BENCH_RUNS says otherwise):
// - fixed: 2 GiB of random data in a dynamic VHDX (32 MiB blocks, the convert-raw benchmark's
//   image) -> fixed VHD. Target: ours <= 1.0x qemu-img's wall time (ratio of medians). Beside
//   it, the floor: a plain Node loop copying the same bytes.
// - dynamic: a 64 GiB dynamic VHDX holding 1 GiB of random data (32 whole 32 MiB blocks, one
//   every 2 GiB) -> dynamic VHD. qemu-img reads every unallocated byte of a VHDX (64 GiB of
//   zeros); we skip holes. Target: ours <= 0.2x qemu-img's. Beside it, the floor: a plain Node
//   loop copying the 1 GiB of data alone (no holes, no format).
// Both tools keep the exact size (qemu-img: force_size=on, else it rounds to a CHS geometry).
import { randomFillSync } from 'node:crypto';
import { existsSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, fsType, have, scratchDir, sh } from './lib.js';
import { benchRuns, plainCopyArgs, rounds, spread, startNote } from './convert-common.js';
import { allocatedImage } from './convert-raw.js';
import { createFile, openFile } from '../dist/node.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** Rounds: the caller's, VHDX_BENCH_RUNS, or 6 (each round of the fixed benchmark copies 2 GiB three times). */
function roundCount(runs, commands) {
  return benchRuns(runs ?? (process.env.VHDX_BENCH_RUNS ? undefined : 6), commands);
}

export function runFixed({ runs, sizeGiB = 2 } = {}) {
  if (!have('qemu-img')) return { name: 'vhd-fixed', skipped: 'qemu-img not installed' };
  const img = allocatedImage(sizeGiB);
  const extents = JSON.parse(sh(process.execPath, [cli, 'map', '--output=json', img]));
  if (extents.length !== 1 || !extents[0].data || extents[0].offset === undefined) throw new Error(`${img} is not one allocated run: ${JSON.stringify(extents)}`);
  const out = join(scratchDir, 'out-fixed.vhd');
  const cmds = {
    qemu: ['qemu-img', ['convert', '-f', 'vhdx', '-O', 'vpc', '-o', 'subformat=fixed,force_size=on', img, out]],
    vhdx: [process.execPath, [cli, 'convert', '-f', 'vhdx', '-O', 'vpc', '-o', 'subformat=fixed', img, out]],
    plain: plainCopyArgs(img, extents[0].offset, extents[0].length, out),
    node: [process.execPath, ['-e', '0']],
  };
  const r = rounds(roundCount(runs, Object.keys(cmds).length), cmds, out, 'qemu');
  const ratio = r.vhdx.median / r.qemu.median;
  return {
    name: `convert ${sizeGiB} GiB of random data VHDX -> fixed VHD, into ${scratchDir} (${fsType(scratchDir)})`,
    peer: `qemu-img convert -O vpc -o subformat=fixed,force_size=on ${spread(r.qemu)}`,
    ours:
      `vhdx convert -O vpc -o subformat=fixed ${spread(r.vhdx)}, median of per-round ratios ${r.vhdx.pairedRatio.toFixed(3)}\n` +
      `  plain Node read/write loop over the same bytes ${spread(r.plain)} = ${(r.plain.median / r.qemu.median).toFixed(3)}x qemu-img\n` +
      `  ${startNote(r.node)}`,
    ratio,
    target: '<= 1.0',
    ok: ratio <= 1.0,
  };
}

/** The 64 GiB dynamic VHDX holding 1 GiB of random data (made once; kept in the bench folder). */
async function sparseImage() {
  const path = join(scratchDir, 'vhd-src-64g-1g.vhdx');
  if (existsSync(path)) return path;
  const tmp = `${path}.tmp`;
  rmSync(tmp, { force: true });
  await createFile(tmp, { size: 64 * GiB, blockSize: 32 * MiB });
  const img = await openFile(tmp, { readOnly: false });
  const buf = new Uint8Array(32 * MiB);
  for (let i = 0; i < 32; i++) {
    randomFillSync(buf);
    await img.write(i * 2 * GiB + 5 * buf.length, buf);
  }
  await img.close();
  renameSync(tmp, path);
  return path;
}

export async function runDynamic({ runs } = {}) {
  if (!have('qemu-img')) return { name: 'vhd-dynamic', skipped: 'qemu-img not installed' };
  const img = await sparseImage();
  const out = join(scratchDir, 'out-dynamic.vhd');
  // The blocks were written in order, so their data is one run of the file: the floor copies it.
  const data = JSON.parse(sh(process.execPath, [cli, 'map', '--output=json', img])).filter((e) => e.data);
  const run = data.every((e, i) => i === 0 || e.offset === data[i - 1].offset + data[i - 1].length);
  if (!run || data.length === 0) throw new Error(`${img}: its data is not one run of the file`);
  const cmds = {
    qemu: ['qemu-img', ['convert', '-f', 'vhdx', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', img, out]],
    vhdx: [process.execPath, [cli, 'convert', '-f', 'vhdx', '-O', 'vpc', img, out]],
    plain: plainCopyArgs(img, data[0].offset, data.reduce((n, e) => n + e.length, 0), out),
  };
  const r = rounds(roundCount(runs, Object.keys(cmds).length), cmds, out, 'qemu');
  const ratio = r.vhdx.median / r.qemu.median;
  return {
    name: `convert a 64 GiB dynamic VHDX holding 1 GiB of random data -> dynamic VHD, into ${scratchDir} (${fsType(scratchDir)})`,
    peer: `qemu-img convert -O vpc -o subformat=dynamic,force_size=on ${spread(r.qemu)}`,
    ours:
      `vhdx convert -O vpc ${spread(r.vhdx)}, median of per-round ratios ${r.vhdx.pairedRatio.toFixed(3)}\n` +
      `  plain Node read/write loop over the 1 GiB of data alone ${spread(r.plain)} = ${(r.plain.median / r.qemu.median).toFixed(3)}x qemu-img; vhdx = ${(r.vhdx.median / r.plain.median).toFixed(3)}x the plain loop`,
    ratio,
    target: '<= 0.2',
    ok: ratio <= 0.2,
  };
}
