// Small random writes into a differencing child: 4 KiB writes at random 4 KiB-aligned offsets,
// 32 in flight, through the library, then one flush, into a fresh child (2 MiB blocks, 512-byte
// sectors) over a 2 GiB parent fully written with random data; beside the same writes into a
// fresh plain dynamic image of the same size and block size. Both start empty, so early writes
// allocate blocks and later ones land in allocated blocks; in the child each write also sets its
// sectors' bits in the sector bitmap (through the log). Reported as IOPS (medians of 3
// alternating runs, tmpfs). Target: report.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { scratchDir } from './lib.js';
import { chainParent, prng } from './chain-read.js';
import { createFile, openFile } from '../dist/node.js';

const MiB = 2 ** 20;
const SIZE = 2 * 2 ** 30;
const COUNT = 50_000;
const DEPTH = 32;

/** Make the image, open it, run COUNT writes with DEPTH in flight and a flush; IOPS. */
async function writes(path, create) {
  rmSync(path, { force: true });
  await create();
  const img = await openFile(path, { readOnly: false });
  const slots = SIZE / 4096;
  const rand = prng(0xc0ffee);
  const offsets = Array.from({ length: COUNT }, () => (rand() % slots) * 4096);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: DEPTH }, async () => {
      const buf = new Uint8Array(4096).fill(0x5a);
      while (next < COUNT) await img.write(offsets[next++], buf);
    }),
  );
  await img.flush();
  const secs = (performance.now() - t0) / 1000;
  await img.close();
  rmSync(path, { force: true });
  return COUNT / secs;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function run({ runs = 3 } = {}) {
  const parent = await chainParent();
  const child = join(scratchDir, 'child-write.vhdx');
  const plain = join(scratchDir, 'child-write-plain.vhdx');
  const ours = [];
  const peer = [];
  for (let i = 0; i < runs; i++) {
    peer.push(await writes(plain, () => createFile(plain, { size: SIZE, blockSize: 2 * MiB })));
    ours.push(await writes(child, () => createFile(child, { parent })));
  }
  const c = median(ours);
  const p = median(peer);
  return {
    name: `${COUNT} random 4 KiB writes, ${DEPTH} in flight, + flush: fresh child (2 MiB blocks) over a written 2 GiB parent, against a fresh dynamic image (2 MiB blocks), tmpfs`,
    peer: `dynamic image: ${p.toFixed(0)} IOPS (runs: ${peer.map((x) => x.toFixed(0)).join(', ')})`,
    ours: `differencing child: ${c.toFixed(0)} IOPS (runs: ${ours.map((x) => x.toFixed(0)).join(', ')})`,
    ratio: c / p,
    target: 'report',
    ok: true,
  };
}
