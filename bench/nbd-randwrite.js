// Random 4 KiB writes, 32 in flight, into a fresh (empty, dynamic) 1 GiB image through NBD: fio's
// nbd engine against `vhdx serve` and `qemu-nbd -f vhdx`, each on its own fresh copy, three
// alternating rounds of 5 s (a fresh pair of images each round). The first writes into each
// 32 MiB block allocate it. Reported beside qemu-nbd's IOPS; no target.
import { copyFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, sh } from './lib.js';
import { fio, median, missingTools, nbdScratch, startOurs, startQemu } from './nbd-lib.js';

const JOB = { rw: 'randwrite', bs: '4k', iodepth: 32 };

async function once(start, img) {
  const server = await start(img);
  try {
    return fio(server.uri, JOB).iops;
  } finally {
    await server.stop();
  }
}

export async function run() {
  const skip = missingTools();
  if (skip) return { name: 'nbd-randwrite', skipped: skip };
  const fresh = join(nbdScratch, 'fresh-1g.vhdx');
  rmSync(fresh, { force: true });
  sh(process.execPath, [cli, 'create', '-q', fresh, '1G']);
  const a = [];
  const b = [];
  for (let i = 0; i < 3; i++) {
    const q = join(nbdScratch, 'w-qemu.vhdx');
    const v = join(nbdScratch, 'w-ours.vhdx');
    copyFileSync(fresh, q);
    copyFileSync(fresh, v);
    a.push(await once(startQemu, q));
    b.push(await once(startOurs, v));
    rmSync(q);
    rmSync(v);
  }
  rmSync(fresh);
  const qemu = median(a);
  const ours = median(b);
  const runs = (x) => x.map((v) => (v / 1000).toFixed(1)).join('/');
  return {
    name: 'NBD random 4 KiB writes, 32 in flight, into a fresh 1 GiB dynamic image (fio nbd engine, medians of 3 x 5 s)',
    peer: `qemu-nbd -f vhdx ${qemu.toFixed(0)} IOPS (runs ${runs(a)}k)`,
    ours: `vhdx serve ${ours.toFixed(0)} IOPS (runs ${runs(b)}k)`,
    ratio: ours / qemu,
    target: 'report',
    ok: true,
  };
}
