// 512 allocating 4 KiB writes (one into each 1 MiB block of a fresh 1 MiB-block image), then one
// flush: `vhdx io` against the same commands through `qemu-io`. Target: ours <= 0.5x.
// Runs on a disk-backed folder (os.tmpdir(), or VHDX_BENCH_DISK_DIR): what this measures is the
// cost of flushes per allocation, and tmpfs makes flushes free.
import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli, compare, fmt, have, sh } from './lib.js';

const diskDir = process.env.VHDX_BENCH_DISK_DIR ?? join(tmpdir(), 'vhdx-bench-disk');

export function run({ runs = 5 } = {}) {
  if (!have('qemu-img') || !have('qemu-io')) return { name: 'write-alloc', skipped: 'qemu-img/qemu-io not installed' };
  mkdirSync(diskDir, { recursive: true });
  const img = join(diskDir, 'alloc.vhdx');
  const fresh = () => {
    rmSync(img, { force: true });
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', img, '512M']);
  };
  const cmds = [];
  for (let i = 0; i < 512; i++) cmds.push('-c', `write -P 0x5a ${i}M 4k`);
  cmds.push('-c', 'flush');
  const r = compare(runs, ['qemu-io', ['-f', 'vhdx', ...cmds, img], { before: fresh }], [process.execPath, [cli, 'io', ...cmds, img], { before: fresh }]);
  rmSync(img, { force: true });
  return {
    name: `512 allocating 4 KiB writes (1 MiB blocks) + flush, on ${diskDir}`,
    peer: `qemu-io ${fmt(r.a.median)}`,
    ours: `vhdx io ${fmt(r.b.median)}`,
    ratio: r.b.median / r.a.median,
    target: '<= 0.5',
    ok: r.b.median / r.a.median <= 0.5,
  };
}
