// Random 4 KiB writes into allocated blocks with 32 in flight through the library (IOPS),
// beside `qemu-img bench -w -d 32 -s 4k` on a copy of the same image.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { have, scratchDir, sh } from './lib.js';
import { openFile } from '../dist/node.js';

const COUNT = 100_000;
const SIZE = 1 << 30;

export async function run() {
  if (!have('qemu-img')) return { name: 'random-write', skipped: 'qemu-img not installed' };
  const img = join(scratchDir, 'rw.vhdx');
  rmSync(img, { force: true });
  // Fully allocated: convert a 1 GiB file of 0x01 bytes.
  const raw = join(scratchDir, 'rw.raw');
  sh('sh', ['-c', `head -c ${SIZE} /dev/zero | tr '\\0' '\\1' > ${raw}`]);
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'block_size=32M', raw, img]);
  rmSync(raw);
  const copy = join(scratchDir, 'rw-qemu.vhdx');
  sh('cp', [img, copy]);
  const out = sh('qemu-img', ['bench', '-w', '-f', 'vhdx', '-d', '32', '-s', '4k', '-c', String(COUNT), copy]);
  const m = /Run completed in ([\d.]+) seconds/.exec(out);
  const qemuIops = m ? COUNT / Number(m[1]) : NaN;
  rmSync(copy);

  const dev = await openFile(img, { readOnly: false });
  const blocks = SIZE / 4096;
  let seed = 99;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  let issued = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      const buf = new Uint8Array(4096).fill(7);
      while (issued < COUNT) {
        issued++;
        await dev.write((rand() % blocks) * 4096, buf);
      }
    }),
  );
  await dev.flush();
  const secs = (performance.now() - t0) / 1000;
  await dev.close();
  rmSync(img);
  const ours = COUNT / secs;
  return {
    name: 'random 4 KiB writes into allocated blocks, 32 in flight (1 GiB image)',
    peer: `qemu-img bench -w ${qemuIops.toFixed(0)} IOPS (sequential offsets)`,
    ours: `vhdx library ${ours.toFixed(0)} IOPS (random offsets)`,
    ratio: ours / qemuIops,
    target: 'report',
    ok: true,
  };
}
