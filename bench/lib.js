// Shared benchmark helpers: scratch on tmpfs, timing commands with peak RSS, medians.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const cli = join(repoRoot, 'bin', 'vhdx.cjs');
export const scratchDir = process.env.VHDX_BENCH_DIR ?? (existsSync('/dev/shm') ? '/dev/shm/vhdx-bench' : '/tmp/vhdx-bench');
mkdirSync(scratchDir, { recursive: true });
/**
 * A folder on a disk-backed file system, where a flush costs what it costs on real storage
 * (on tmpfs it costs nothing, which hid convert's final fdatasync): VHDX_BENCH_DISK_DIR, else
 * /var/tmp/vhdx-bench.
 */
export const diskDir = process.env.VHDX_BENCH_DISK_DIR ?? '/var/tmp/vhdx-bench';
mkdirSync(diskDir, { recursive: true });

/** The file system type of a folder as stat -f names it (tmpfs, ext2/ext3, xfs, ...), or '?'. */
export function fsType(dir) {
  const r = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '?';
}

export function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

export function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/**
 * Run a command once; wall seconds and (with GNU time) peak RSS in MB and CPU seconds (user +
 * system: what the command cost, whatever the machine's load).
 */
export function timeCmd(cmd, args, { before } = {}) {
  if (before) before();
  const useTime = existsSync('/usr/bin/time');
  const t0 = process.hrtime.bigint();
  const r = useTime
    ? spawnSync('/usr/bin/time', ['-f', '%M %U %S', cmd, ...args], { encoding: 'utf8', maxBuffer: 256 << 20 })
    : spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20 });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  const [rss, user, sys] = useTime ? r.stderr.trim().split('\n').pop().split(' ').map(Number) : [NaN, NaN, NaN];
  return { wall, rssMB: rss / 1024, cpu: user + sys, sys, stdout: r.stdout };
}

/**
 * The same command without NODE_EXTRA_CA_CERTS, or null when the variable is not set. For
 * information only: the targets are judged on the commands as the environment runs them.
 */
export function withoutCaCerts([cmd, args]) {
  return process.env.NODE_EXTRA_CA_CERTS ? ['env', ['-u', 'NODE_EXTRA_CA_CERTS', cmd, ...args]] : null;
}

/** Best-of and median of n alternating runs of two commands (alternation spreads machine noise). */
export function compare(n, a, b) {
  const ra = [];
  const rb = [];
  for (let i = 0; i < n; i++) {
    ra.push(timeCmd(...a));
    rb.push(timeCmd(...b));
  }
  return { a: summarise(ra), b: summarise(rb) };
}

export function summarise(runs) {
  const w = runs.map((r) => r.wall).sort((x, y) => x - y);
  const rss = Math.max(...runs.map((r) => r.rssMB));
  return { median: w[Math.floor(w.length / 2)], best: w[0], rssMB: rss, runs: w.length };
}

export function fmt(s) {
  return `${(s * 1000).toFixed(0)} ms`;
}
