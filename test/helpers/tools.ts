// Helpers for tests that drive the CLI and the peer tools: scratch folders in RAM, processes run
// without blocking the event loop (so subtests can overlap), file digests.
import { execFile, type ExecFileOptionsWithStringEncoding } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { cliPath, scratch } from './env.js';

/** A scratch folder on /dev/shm when it is writable (fast, sparse), else in the temp folder. */
export function shmScratch(prefix = 'vhdx-test-'): string {
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

/** Options for exec, must and vhdx (output is always text). */
export type ExecOptions = Omit<ExecFileOptionsWithStringEncoding, 'encoding'>;

/** A finished process: its exit status (-1 when it did not exit normally) and output. */
export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a command; resolves to { code, stdout, stderr } whatever the exit status. */
export function exec(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** Run a command that must succeed; resolves to its stdout. */
export async function must(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<string> {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Run the vhdx CLI; resolves to { code, stdout, stderr }. */
export function vhdx(args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return exec(process.execPath, [cliPath, ...args], opts);
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The python that has pyvhdi (Debian's python3-libvhdi), or null. */
export const PYVHDI_PYTHON = '/usr/bin/python3';

let pyvhdi: string | false | undefined;
/** Skip message when /usr/bin/python3 cannot import pyvhdi, else false. */
export async function needPyvhdi(): Promise<string | false> {
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
export async function pyvhdiDigest(path: string): Promise<{ size: number; sha256: string }> {
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
  if (sha256 === undefined) throw new Error(`pyvhdi printed ${JSON.stringify(out)}`);
  return { size: Number(size), sha256 };
}

/**
 * Run the vhdx CLI in this process (no node start-up per call): { code, stdout, stderr }.
 * Progress bars still go to the real stderr; spawn the CLI (`vhdx`) to see them.
 */
export async function vhdxInProcess(args: string[]): Promise<ExecResult> {
  const { main } = await import('../../src/cli/main.js');
  let stdout = '';
  let stderr = '';
  const code = await main(args, { out: (s: string) => void (stdout += s), err: (s: string) => void (stderr += s) });
  return { code, stdout, stderr };
}

/** vhdxInProcess that must exit 0 (the message names the command and its stderr). */
export async function vhdxOk(args: string[]): Promise<ExecResult> {
  const r = await vhdxInProcess(args);
  if (r.code !== 0) throw new Error(`vhdx ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** One entry of `vhdx map --output=json` (qemu-img map's fields). */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  /** File offset of the first byte, for data extents (in the file of the image at `depth`). */
  offset?: number;
}

/**
 * The lock records that name the file at `path` (its write lock's and its readers'), live or
 * stale: empty once every opener has released it. See src/io/lock.ts.
 */
export async function lockRecords(path: string): Promise<string[]> {
  const { lockPaths } = await import('../../src/io/lock.js');
  const { dir, writer, readerPrefix } = await lockPaths(path);
  const found = readdirSync(dir).filter((n) => n.startsWith(readerPrefix)).map((n) => join(dir, n));
  if (existsSync(writer)) found.push(writer, ...entries(writer).map((n) => join(writer, n)));
  return found;
}

function entries(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return []; // released meanwhile
  }
}

/** The lock records, anywhere in the lock folder, made for the path `path` (which may be gone). */
export async function lockRecordsNaming(path: string): Promise<string[]> {
  const { lockDir } = await import('../../src/io/lock.js');
  const dir = lockDir();
  const want = resolve(path);
  const files: string[] = [];
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    if (n.endsWith('.write')) files.push(...entries(p).map((m) => join(p, m)));
    else if (n.includes('.read.')) files.push(p);
  }
  return files.filter((f) => {
    try {
      return (JSON.parse(readFileSync(f, 'utf8')) as { path?: unknown }).path === want;
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
export function sparseRaw(dir: string, name: string, size: number, places: ReadonlyArray<readonly [number, Uint8Array]>, zeroRun?: readonly [number, number]): string {
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

/** A request of a workload the peer tools replay (qemu-io's `write -P`, `write -z`, `discard`). */
export type ByteOp = { op: 'write'; pattern: number; offset: number; length: number } | { op: 'zero' | 'discard'; offset: number; length: number };
/** A range [start, end) of the expected content: `value` every byte must hold, -1 for either zeros or the earlier contents. */
export type Segment = { start: number; end: number; value: number };

/**
 * The expected content of a `size`-byte disk after `ops` (from all zeros), as segments tiling
 * [0, size); a discarded range holds `discardReads` (-1: zeros or the earlier contents).
 */
export function contentModel(size: number, ops: readonly ByteOp[], discardReads: number): Segment[] {
  let segs: Segment[] = [{ start: 0, end: size, value: 0 }];
  for (const o of ops) {
    const a = o.offset;
    const b = o.offset + o.length;
    const value = o.op === 'write' ? o.pattern : o.op === 'zero' ? 0 : discardReads;
    const out: Segment[] = [];
    for (const s of segs) {
      if (s.end <= a || s.start >= b) out.push(s);
      else {
        if (s.start < a) out.push({ start: s.start, end: a, value: s.value });
        if (s.end > b) out.push({ start: b, end: s.end, value: s.value });
      }
    }
    out.push({ start: a, end: b, value });
    out.sort((x, y) => x.start - y.start);
    segs = [];
    for (const s of out) {
      const last = segs.at(-1);
      if (last && last.value === s.value && last.end === s.start) last.end = s.end;
      else segs.push({ ...s });
    }
  }
  return segs;
}
