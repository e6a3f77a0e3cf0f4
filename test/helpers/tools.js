// Helpers for tests that drive the CLI and the peer tools: scratch folders in RAM, processes run
// without blocking the event loop (so subtests can overlap), file digests.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { cliPath, scratch } from './env.js';

/** A scratch folder on /dev/shm when it is writable (fast, sparse), else in the temp folder. */
export function shmScratch(prefix = 'vhdx-test-') {
  if (existsSync('/dev/shm')) {
    try {
      const d = mkdtempSync(`/dev/shm/${prefix}`);
      process.on('exit', () => rmSync(d, { recursive: true, force: true }));
      return d;
    } catch {
      // not writable: fall through
    }
  }
  return scratch(prefix);
}

/** Run a command; resolves to { code, stdout, stderr } whatever the exit status. */
export function exec(cmd, args, opts = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** Run a command that must succeed; resolves to its stdout. */
export async function must(cmd, args, opts = {}) {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Run the vhdx CLI; resolves to { code, stdout, stderr }. */
export function vhdx(args, opts = {}) {
  return exec(process.execPath, [cliPath, ...args], opts);
}

export function sha256File(path) {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The python that has pyvhdi (Debian's python3-libvhdi), or null. */
export const PYVHDI_PYTHON = '/usr/bin/python3';

let pyvhdi;
/** Skip message when /usr/bin/python3 cannot import pyvhdi, else false. */
export async function needPyvhdi() {
  if (pyvhdi === undefined) {
    const r = existsSync(PYVHDI_PYTHON) ? await exec(PYVHDI_PYTHON, ['-c', 'import pyvhdi']) : { code: 1 };
    pyvhdi = r.code === 0 ? false : `${PYVHDI_PYTHON} with pyvhdi (python3-libvhdi) not installed`;
  }
  return pyvhdi;
}

/**
 * SHA-256 of the virtual disk of `path` as pyvhdi reads it, and its media size:
 * { size, sha256 }.
 */
export async function pyvhdiDigest(path) {
  const script = `
import hashlib, sys, pyvhdi
f = pyvhdi.file()
f.open(sys.argv[1])
size = f.get_media_size()
h = hashlib.sha256()
left = size
while left > 0:
    n = min(left, 4 << 20)
    d = f.read(n)
    if len(d) != n:
        raise SystemExit('short read')
    h.update(d)
    left -= n
print(size, h.hexdigest())
`;
  const out = await must(PYVHDI_PYTHON, ['-c', script, path]);
  const [size, sha256] = out.trim().split(' ');
  return { size: Number(size), sha256 };
}

/**
 * Run the vhdx CLI in this process (no node start-up per call): { code, stdout, stderr }.
 * Progress bars still go to the real stderr; spawn the CLI (`vhdx`) to see them.
 */
export async function vhdxInProcess(args) {
  const { main } = await import('../../dist/cli/main.js');
  let stdout = '';
  let stderr = '';
  const code = await main(args, { out: (s) => void (stdout += s), err: (s) => void (stderr += s) });
  return { code, stdout, stderr };
}

/**
 * The lock records that name the file at `path` (its write lock's and its readers'), live or
 * stale: empty once every opener has released it. See src/io/lock.ts.
 */
export async function lockRecords(path) {
  const { lockPaths } = await import('../../dist/io/lock.js');
  const { dir, writer, readerPrefix } = await lockPaths(path);
  const found = readdirSync(dir).filter((n) => n.startsWith(readerPrefix)).map((n) => join(dir, n));
  if (existsSync(writer)) found.push(writer, ...entries(writer).map((n) => join(writer, n)));
  return found;
}

function entries(dir) {
  try {
    return readdirSync(dir);
  } catch {
    return []; // released meanwhile
  }
}

/** The lock records, anywhere in the lock folder, made for the path `path` (which may be gone). */
export async function lockRecordsNaming(path) {
  const { lockDir } = await import('../../dist/io/lock.js');
  const dir = lockDir();
  const want = resolve(path);
  const files = [];
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    if (n.endsWith('.write')) files.push(...entries(p).map((m) => join(p, m)));
    else if (n.includes('.read.')) files.push(p);
  }
  return files.filter((f) => {
    try {
      return JSON.parse(readFileSync(f, 'utf8')).path === want;
    } catch {
      return false; // released meanwhile, or not a record
    }
  });
}

/**
 * A sparse raw file `name` in `dir` of `size` bytes with data at the given [offset, bytes] places;
 * also a run of explicitly written zeros (`zeroRun`: [offset, length]; not a hole), which a
 * sparse copy must not allocate either.
 */
export function sparseRaw(dir, name, size, places, zeroRun) {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const [at, bytes] of places) writeSync(fd, bytes, 0, bytes.length, at);
    if (zeroRun) writeSync(fd, new Uint8Array(zeroRun[1]), 0, zeroRun[1], zeroRun[0]);
  } finally {
    closeSync(fd);
  }
  return path;
}
