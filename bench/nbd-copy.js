// nbdcopy of a 64 GiB dynamic image holding 100 MiB of data (25 pieces of 4 MiB spread over the
// disk) to a sparse raw file, through `vhdx serve -r` and through `qemu-nbd -f vhdx -r`. Our
// block status reports the unallocated blocks as holes, so nbdcopy skips them; qemu's VHDX driver
// reports everything as data, so nbdcopy reads all 64 GiB (zeros) through qemu-nbd.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, sh } from './lib.js';
import { missingTools, nbdScratch, startOurs, startQemu } from './nbd-lib.js';

const PIECES = 25;

function image() {
  const img = join(nbdScratch, 'sparse-64g.vhdx');
  if (!existsSync(img)) {
    sh(process.execPath, [cli, 'create', '-q', img, '64G']);
    const cmds = [];
    for (let k = 0; k < PIECES; k++) cmds.push('-c', `write -P ${k + 1} ${Math.floor((k * 65536) / PIECES)}M 4M`);
    sh(process.execPath, [cli, 'io', '-q', ...cmds, img]);
  }
  return img;
}

async function copy(server, out) {
  rmSync(out, { force: true });
  const t0 = performance.now();
  sh('nbdcopy', [server.uri, out]);
  const secs = (performance.now() - t0) / 1000;
  rmSync(out, { force: true });
  return secs;
}

export async function run() {
  const skip = missingTools('nbdcopy');
  if (skip) return { name: 'nbd-copy', skipped: skip };
  const img = image();
  const out = join(nbdScratch, 'copy-out.raw');
  // qemu-nbd takes tens of seconds here: one run of it, three of ours (median).
  const qemu = await startQemu(img, { readOnly: true });
  let qemuSecs;
  try {
    qemuSecs = await copy(qemu, out);
  } finally {
    await qemu.stop();
  }
  const ours = await startOurs(img, { readOnly: true });
  const runs = [];
  try {
    for (let i = 0; i < 3; i++) runs.push(await copy(ours, out));
  } finally {
    await ours.stop();
  }
  runs.sort((a, b) => a - b);
  const oursSecs = runs[1];
  const speedup = qemuSecs / oursSecs;
  return {
    name: 'nbdcopy of a 64 GiB dynamic image with 100 MiB of data to a sparse file',
    peer: `through qemu-nbd -f vhdx ${qemuSecs.toFixed(2)} s`,
    ours: `through vhdx serve ${oursSecs.toFixed(2)} s (runs ${runs.map((s) => s.toFixed(2)).join('/')})`,
    ratio: oursSecs / qemuSecs,
    target: '<= 0.1 (>= 10x faster)',
    ok: speedup >= 10,
  };
}
