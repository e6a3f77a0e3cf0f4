// vhdx compact (issue 15, item 4): an unpartitioned ext4 disk (as WSL keeps it) in a dynamic
// VHDX, files written, most of them deleted (their data stays on disk and in the VHDX's blocks).
// For 1 MiB blocks (WSL) and 32 MiB blocks (Hyper-V's default): the file size after
// `vhdx compact`, after `vhdx compact --mode=zeroes` (what Windows does to a detached disk:
// zero blocks only) and after `qemu-img convert -O vhdx` (the copy a user would make), beside
// the ideal (the metadata of an empty image plus the blocks holding used, non-zero data); the
// share of the deleted data's space given back; time against qemu-img convert; peak RSS.
// Targets: within 1 block of the ideal; >= 90% reclaimed; <= 0.5x qemu-img's wall time;
// <= 150 MB.
//
// Scale: the issue asks for an 8 GiB disk with 3 GiB of files, 2 GiB deleted. On the shared
// build machine that needs ~10 GB of scratch and many minutes, so the default is a quarter of
// it (2 GiB disk, 768 MiB of files, 512 MiB deleted); VHDX_BENCH_COMPACT_SCALE=1 runs the full
// size. Files live on a disk-backed folder (diskDir): a compact's flushes cost what they cost.
import { copyFileSync, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { cli, diskDir, fmt, have, sh, timeCmd } from './lib.js';
import { openFile, reclaimableUnits, usedRuns } from '../dist/node.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const SCALE = Number(process.env.VHDX_BENCH_COMPACT_SCALE ?? 0.25);
const DISK = Math.round(8 * GiB * SCALE);
const FILE = 64 * MiB;
const FILES = Math.round((3 * GiB * SCALE) / FILE);
/** Files 0, 1 of every 3 are deleted: two thirds of the data, spread over the disk. */
const deleted = (i) => i % 3 !== 2;

/** The raw ext4 disk, built once and kept (delete the folder to rebuild). */
function buildRaw(work) {
  const raw = join(work, `ext4-${DISK / MiB}M.raw`);
  if (existsSync(raw)) return raw;
  const files = join(work, 'files');
  rmSync(files, { recursive: true, force: true });
  mkdirSync(files, { recursive: true });
  const b = Buffer.alloc(FILE);
  for (let i = 0; i < FILES; i++) {
    randomFillSync(b);
    writeFileSync(join(files, `f${i}`), b);
  }
  const tmp = `${raw}.tmp`;
  sh('truncate', ['-s', String(DISK), tmp]);
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', files, tmp]);
  rmSync(files, { recursive: true });
  for (let i = 0; i < FILES; i++) if (deleted(i)) sh('debugfs', ['-w', '-R', `rm /f${i}`, tmp]);
  sh('mv', [tmp, raw]);
  return raw;
}

/** Blocks of `img` holding used, non-zero data (what an ideal image keeps). */
async function keptBlocks(img) {
  const h = await openFile(img);
  try {
    let kept = 0;
    for await (const u of reclaimableUnits(h, { blockSize: h.blockSize, used: usedRuns(h), scanZeros: true })) if (u.reclaim === null) kept++;
    return kept;
  } finally {
    await h.close();
  }
}

async function one(work, raw, blockSize) {
  const bs = `${blockSize / MiB}M`;
  const base = join(work, `base-${DISK / MiB}M-${bs}.vhdx`);
  if (!existsSync(base)) sh(process.execPath, [cli, 'convert', '-f', 'raw', '-O', 'vhdx', '-o', `block_size=${bs}`, raw, base]);
  const empty = join(work, `empty-${bs}.vhdx`);
  rmSync(empty, { force: true });
  sh(process.execPath, [cli, 'create', '-o', `block_size=${bs}`, empty, String(DISK)]);
  const ideal = statSync(empty).size + (await keptBlocks(base)) * blockSize;
  const before = statSync(base).size;
  const a = join(work, `a-${bs}.vhdx`);
  const c = timeCmd(process.execPath, [cli, 'compact', '--output=json', a], { before: () => copyFileSync(base, a) });
  const report = JSON.parse(c.stdout);
  const z = join(work, `z-${bs}.vhdx`);
  timeCmd(process.execPath, [cli, 'compact', '--mode=zeroes', z], { before: () => copyFileSync(base, z) });
  const q = join(work, `q-${bs}.vhdx`);
  rmSync(q, { force: true });
  const qc = timeCmd('qemu-img', ['convert', '-f', 'vhdx', '-O', 'vhdx', '-o', `block_size=${bs}`, base, q]);
  const deletedBytes = Array.from({ length: FILES }, (_, i) => i).filter(deleted).length * FILE;
  const reclaimed = (report.released.unused * blockSize) / deletedBytes;
  const sizes = { before, compact: statSync(a).size, zeroes: statSync(z).size, qemu: statSync(q).size, ideal };
  for (const f of [a, z, q, empty]) rmSync(f, { force: true });
  return { bs, blockSize, sizes, reclaimed, compact: c, qemu: qc, report };
}

export async function run() {
  const missing = ['mke2fs', 'debugfs', 'qemu-img'].filter((t) => !have(t));
  if (missing.length) return { name: 'compact', skipped: `${missing.join(', ')} not installed` };
  const work = join(diskDir, 'compact');
  mkdirSync(work, { recursive: true });
  const raw = buildRaw(work);
  const rows = [];
  for (const blockSize of [MiB, 32 * MiB]) rows.push(await one(work, raw, blockSize));
  const m = (n) => `${(n / MiB).toFixed(0)} MiB`;
  const lines = rows.map(
    (r) =>
      `${r.bs} blocks: before ${m(r.sizes.before)}; compact ${m(r.sizes.compact)} (ideal ${m(r.sizes.ideal)}, ${((r.sizes.compact - r.sizes.ideal) / r.blockSize).toFixed(1)} blocks over); ` +
      `zero-scan only ${m(r.sizes.zeroes)}; qemu-img convert ${m(r.sizes.qemu)}; deleted data reclaimed ${(r.reclaimed * 100).toFixed(1)}%; ` +
      `compact ${fmt(r.compact.wall)}, ${r.compact.rssMB.toFixed(0)} MB vs qemu-img convert ${fmt(r.qemu.wall)}, ${r.qemu.rssMB.toFixed(0)} MB`,
  );
  const ratio = Math.max(...rows.map((r) => r.compact.wall / r.qemu.wall));
  const ok = rows.every((r) => r.sizes.compact - r.sizes.ideal <= r.blockSize && r.reclaimed >= 0.9 && r.compact.rssMB <= 150) && ratio <= 0.5;
  return {
    name: `compact: ${DISK / GiB} GiB unpartitioned ext4, ${(FILES * FILE) / MiB} MiB of files, two thirds deleted (scale ${SCALE} of the issue's 8 GiB / 3 GiB)`,
    peer: `qemu-img convert -O vhdx (the copy a user would make)`,
    ours: lines.join('\n  '),
    ratio,
    target: 'within 1 block of the ideal, >= 90% of the deleted data reclaimed, <= 0.5x qemu-img convert wall time, <= 150 MB',
    ok,
  };
}
