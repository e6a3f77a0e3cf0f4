// Sequential read of a two-level differencing chain against the same content flattened into one
// dynamic VHDX. The parent: 2 GiB fully written with random data (32 MiB blocks). The child
// (2 MiB blocks, as `vhdx create -b` makes it): ~25% of the disk rewritten in scattered places,
// most as whole blocks (FULLY_PRESENT), the rest partial (PARTIALLY_PRESENT, some cutting
// sectors), so a read of the chain goes to the child, to the parent, and sector run by sector
// run through the bitmaps. The flat image is `vhdx convert -O vhdx` of the chain.
// Measured two ways, alternating chain and flat: `vhdx convert -O raw` to tmpfs (the CLI, medians
// of 5), and the library reading the disk front to back in 8 MiB requests, one at a time (medians
// of 3). Ratio: chain / flat wall time of the convert. Target: report.
import { randomFillSync, createHash } from 'node:crypto';
import { existsSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, compare, fmt, scratchDir, sh } from './lib.js';
import { createFile, openFile } from '../dist/node.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const SIZE = 2 * GiB;
const CHUNK = 8 * MiB;
const CHILD_BS = 2 * MiB; // what createFile gives a differencing disk

export const chainDir = scratchDir;
export const parentPath = join(chainDir, 'chain-parent-2g.vhdx');
const childPath = join(chainDir, 'chain-child-2g.vhdx');
const flatPath = join(chainDir, 'chain-flat-2g.vhdx');

/** The 2 GiB parent, fully written with random data (made once; kept in the bench folder). */
export async function chainParent() {
  if (existsSync(parentPath)) return parentPath;
  const tmp = `${parentPath}.tmp`;
  rmSync(tmp, { force: true });
  await createFile(tmp, { size: SIZE, blockSize: 32 * MiB });
  const img = await openFile(tmp, { readOnly: false });
  const buf = new Uint8Array(CHUNK);
  for (let pos = 0; pos < SIZE; pos += CHUNK) {
    randomFillSync(buf);
    await img.write(pos, buf);
  }
  await img.close();
  renameSync(tmp, parentPath);
  return parentPath;
}

/** A seeded generator (xorshift32), so that every run writes the same child. */
export function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** The child: 224 whole 2 MiB blocks and 160 partial writes (some unaligned) in other blocks. */
async function chainChild() {
  if (existsSync(childPath)) return;
  await chainParent();
  const tmp = `${childPath}.tmp`;
  rmSync(tmp, { force: true });
  // Made beside the parent under its final name's folder: the relative path is the same.
  await createFile(tmp, { parent: parentPath });
  const img = await openFile(tmp, { readOnly: false });
  const bs = img.blockSize;
  const blocks = SIZE / bs;
  const rand = prng(0x5eed);
  const order = Array.from({ length: blocks }, (_, i) => i);
  for (let i = blocks - 1; i > 0; i--) {
    const j = rand() % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const buf = new Uint8Array(bs);
  randomFillSync(buf);
  for (const b of order.slice(0, 224)) {
    await img.write(b * bs, buf);
  }
  for (const b of order.slice(224, 224 + 160)) {
    const unaligned = rand() % 4 === 0;
    const len = unaligned ? 1000 + (rand() % 60000) : 4096 * (1 + (rand() % 256));
    const off = unaligned ? rand() % (bs - len) : 4096 * (rand() % ((bs - len) / 4096));
    await img.write(b * bs + off, buf.subarray(0, len));
  }
  await img.close();
  renameSync(tmp, childPath);
}

/** Read the whole disk front to back in 8 MiB requests; seconds (and the SHA-256 when asked). */
async function libraryRead(path, hash = false) {
  const t0 = performance.now();
  const img = await openFile(path);
  const buf = new Uint8Array(CHUNK);
  const h = hash ? createHash('sha256') : null;
  try {
    for (let pos = 0; pos < img.size; pos += CHUNK) {
      const part = buf.subarray(0, Math.min(CHUNK, img.size - pos));
      await img.read(pos, part);
      h?.update(part);
    }
  } finally {
    await img.close();
  }
  return { secs: (performance.now() - t0) / 1000, sha256: h?.digest('hex') };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function run({ runs = 5, libRuns = 3 } = {}) {
  await chainChild();
  if (!existsSync(flatPath)) {
    sh(process.execPath, [cli, 'convert', '-O', 'vhdx', childPath, `${flatPath}.tmp`]);
    renameSync(`${flatPath}.tmp`, flatPath);
  }
  // What the child holds itself: depth-0 data in its map (sector-exact), and its block states.
  const own = JSON.parse(sh(process.execPath, [cli, 'map', '--output=json', childPath]))
    .filter((e) => e.depth === 0 && e.data)
    .reduce((n, e) => n + e.length, 0);
  const states = JSON.parse(sh(process.execPath, [cli, 'info', '--output=json', childPath])).allocation.bytesByState;
  // The same content both ways, checked once.
  const c = await libraryRead(childPath, true);
  const f = await libraryRead(flatPath, true);
  if (c.sha256 !== f.sha256) throw new Error('the chain and the flattened image differ');

  const out = join(chainDir, 'chain-out.raw');
  const clean = () => rmSync(out, { force: true });
  const r = compare(
    runs,
    [process.execPath, [cli, 'convert', '-O', 'raw', flatPath, out], { before: clean }],
    [process.execPath, [cli, 'convert', '-O', 'raw', childPath, out], { before: clean }],
  );
  clean();
  const lib = { chain: [], flat: [] };
  for (let i = 0; i < libRuns; i++) {
    lib.flat.push((await libraryRead(flatPath)).secs);
    lib.chain.push((await libraryRead(childPath)).secs);
  }
  const mibps = (s) => `${((SIZE / MiB) / s).toFixed(0)} MiB/s`;
  const chainLib = median(lib.chain);
  const flatLib = median(lib.flat);
  return {
    name:
      `sequential read of a 2 GiB two-level chain (the child, 2 MiB blocks, holds ${(own / MiB).toFixed(0)} MiB = ${((own / SIZE) * 100).toFixed(0)}% ` +
      `of the disk in ${(states.fullyPresent / CHILD_BS).toFixed(0)} whole and ${(states.partiallyPresent / CHILD_BS).toFixed(0)} partially present blocks) ` +
      'against the same content in one dynamic VHDX (32 MiB blocks), tmpfs',
    peer: `flat: vhdx convert -O raw ${fmt(r.a.median)}; library 8 MiB reads ${fmt(flatLib)} (${mibps(flatLib)})`,
    ours: `chain: vhdx convert -O raw ${fmt(r.b.median)}; library 8 MiB reads ${fmt(chainLib)} (${mibps(chainLib)}, ${(chainLib / flatLib).toFixed(2)}x flat)`,
    ratio: r.b.median / r.a.median,
    target: 'report',
    ok: true,
  };
}
