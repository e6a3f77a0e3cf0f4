// Shared helpers of the NBD benchmarks: start `vhdx serve` and `qemu-nbd -f vhdx` on Unix
// sockets, run fio's nbd engine against them, alternate runs and take medians.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { cli, have, sh } from './lib.js';

/** Scratch for the NBD benchmarks: tmpfs when there is one. */
export const nbdScratch = process.env.VHDX_BENCH_DIR
  ? join(process.env.VHDX_BENCH_DIR, 'nbd')
  : existsSync('/dev/shm')
    ? '/dev/shm/nbd-bench'
    : '/tmp/nbd-bench';
mkdirSync(nbdScratch, { recursive: true });

export const MiB = 1 << 20;
export const GiB = 1 << 30;

/** Skip message when a tool the NBD benchmarks need is missing, else null. */
export function missingTools(...extra) {
  const missing = ['qemu-nbd', 'qemu-img', 'fio', ...extra].filter((t) => !have(t));
  if (missing.length) return `${missing.join(', ')} not installed`;
  if (!/\bnbd\b/.test(spawnSync('fio', ['--enghelp'], { encoding: 'utf8' }).stdout ?? '')) return "fio has no nbd engine";
  return null;
}

function connectable(path) {
  return new Promise((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function waitForSocket(path, proc, what) {
  for (let i = 0; i < 500; i++) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with status ${proc.exitCode}`);
    if (existsSync(path) && (await connectable(path))) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what} did not start listening on ${path}`);
}

function stopper(proc) {
  // A benchmark that throws must not leave its servers running.
  const reap = () => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL');
  process.once('exit', reap);
  proc.once('exit', () => process.off('exit', reap));
  return async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  };
}

/** `vhdx serve` on a Unix socket: { uri, pid, stop }. */
export async function startOurs(img, { readOnly = false, name = 'v' } = {}) {
  const sock = join(nbdScratch, `${name}.sock`);
  rmSync(sock, { force: true });
  const args = [cli, 'serve', ...(readOnly ? ['-r'] : []), '--socket', sock, img];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  try {
    await waitForSocket(sock, proc, 'vhdx serve');
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${e.message}: ${err}`);
  }
  return { uri: `nbd+unix:///?socket=${sock}`, socket: sock, pid: proc.pid, stop: stopper(proc) };
}

/** `qemu-nbd -f vhdx` on a Unix socket, persistent, up to 8 clients: { uri, pid, stop }. */
export async function startQemu(img, { readOnly = false, name = 'q' } = {}) {
  const sock = join(nbdScratch, `${name}.sock`);
  rmSync(sock, { force: true });
  const args = ['-f', 'vhdx', '-t', '-e', '8', ...(readOnly ? ['-r'] : []), '-k', sock, img];
  const proc = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  try {
    await waitForSocket(sock, proc, 'qemu-nbd');
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${e.message}: ${err}`);
  }
  return { uri: `nbd+unix:///?socket=${sock}`, socket: sock, pid: proc.pid, stop: stopper(proc) };
}

/** One fio job through the nbd engine; { iops, bwBytes } of the direction measured. */
export function fio(uri, { rw, bs, iodepth, runtime = 5, size = '1g', extra = [] }) {
  const out = sh('fio', [
    '--name=nbdbench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${rw}`,
    `--bs=${bs}`,
    `--iodepth=${iodepth}`,
    `--size=${size}`,
    `--runtime=${runtime}`,
    '--time_based',
    '--randrepeat=0',
    '--output-format=json',
    ...extra,
  ], { cwd: nbdScratch });
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  const dir = /write|trim/.test(rw) ? job.write : job.read;
  return { iops: dir.iops, bwBytes: dir.bw_bytes };
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** A fully allocated 1 GiB VHDX of random bytes (32 MiB blocks), made once. */
export function allocatedImage() {
  const img = join(nbdScratch, 'alloc-1g.vhdx');
  if (!existsSync(img)) {
    const raw = join(nbdScratch, 'alloc-1g.raw');
    sh('sh', ['-c', `head -c 1G /dev/urandom > ${raw}`]);
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=32M', raw, img]);
    rmSync(raw);
  }
  return img;
}

/**
 * Read benchmark: both servers export `img` read-only at the same time; `rounds` alternating fio
 * runs each; medians.
 */
export async function compareFio(img, job, { rounds = 3, readOnly = true } = {}) {
  const ours = await startOurs(img, { readOnly });
  const qemu = await startQemu(img, { readOnly });
  const a = [];
  const b = [];
  try {
    for (let i = 0; i < rounds; i++) {
      a.push(fio(qemu.uri, job));
      b.push(fio(ours.uri, job));
    }
  } finally {
    await ours.stop();
    await qemu.stop();
  }
  return {
    qemu: { iops: median(a.map((r) => r.iops)), bwBytes: median(a.map((r) => r.bwBytes)), runs: a },
    ours: { iops: median(b.map((r) => r.iops)), bwBytes: median(b.map((r) => r.bwBytes)), runs: b },
  };
}
