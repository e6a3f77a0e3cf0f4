// Random 4 KiB reads through the library with 32 in flight, beside `qemu-img bench -d 32 -s 4k`
// on the same image (qemu-img bench steps through the image sequentially; we report ours both
// random and sequential).
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { have, scratchDir, sh } from './lib.js';
import { openFile } from '../dist/node.js';

const COUNT = 200_000;

async function ours(img, random) {
  const dev = await openFile(img);
  const blocks = Math.floor(dev.size / 4096);
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  let issued = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      const buf = new Uint8Array(4096);
      while (issued < COUNT) {
        const i = issued++;
        const block = random ? rand() % blocks : i % blocks;
        await dev.read(block * 4096, buf);
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  await dev.close();
  return COUNT / secs;
}

export async function run() {
  if (!have('qemu-img')) return { name: 'random-read', skipped: 'qemu-img not installed' };
  const img = join(scratchDir, 'rr-1g-32m.vhdx');
  if (!existsSync(img)) {
    const raw = join(scratchDir, 'rr.raw');
    sh('sh', ['-c', `head -c 1G /dev/urandom > ${raw}`]);
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=32M', raw, img]);
    rmSync(raw);
  }
  const out = sh('qemu-img', ['bench', '-f', 'vhdx', '-d', '32', '-s', '4k', '-c', String(COUNT), img]);
  const m = /Run completed in ([\d.]+) seconds/.exec(out);
  const qemuIops = m ? COUNT / Number(m[1]) : NaN;
  const rnd = await ours(img, true);
  const seq = await ours(img, false);
  return {
    name: '4 KiB reads, 32 in flight, 1 GiB allocated image',
    peer: `qemu-img bench ${qemuIops.toFixed(0)} IOPS (sequential)`,
    ours: `vhdx ${rnd.toFixed(0)} IOPS random, ${seq.toFixed(0)} IOPS sequential`,
    ratio: seq / qemuIops,
    target: 'report',
    ok: true,
  };
}
