/**
 * Image locks: one writer, or any number of readers, per file, whatever name reaches it.
 *
 * Node has no flock/fcntl and this package adds no native addon, so a lock is a set of small
 * files in one folder per host, the lock folder (`VHDX_LOCK_DIR`, else `/tmp/vhdx-locks`; the
 * temporary folder on Windows). They are named by the identity of the OPEN file: KEY is
 * `DEV-INO`, the device and inode of the descriptor (`b`RDEV for a block device), so a symbolic
 * link, a hard link, a relative or an absolute path all reach the same KEY, and the file locked
 * is the file that was opened.
 *
 *   KEY.write/            the write lock: a folder holding the writer's record
 *   KEY.write/TOKEN       (TOKEN: pid, counter and random digits, never reused)
 *   KEY.read.TOKEN        one record per reader: the shared lock
 *   .new.TOKEN            a record (or write-lock folder) being prepared
 * A writer also removes the stale records of other files whose process is gone (see tidyDead).
 *
 * A record is JSON: pid, host, boot id, the process's start time, mode, path and command. It is
 * written under `.new.TOKEN` and renamed into place, so a record appears complete; an empty or
 * unparsable one is damage (a crash, another program) and counts as stale once it is
 * UNREADABLE_STALE_MS old.
 *
 * A record is STALE when it was made on this host and its boot id differs from this boot's, or
 * its pid is not running, or that pid now belongs to a process that started at another time (a
 * reused pid). A record from another host (a lock folder shared between hosts) is never judged
 * stale: the error says to remove it by hand.
 *
 * Taking the write lock:
 *   1. Prepare `.new.TOKEN/TOKEN`, then rename the folder to KEY.write. A rename onto a folder
 *      succeeds only while that folder is empty (or absent), so when many start at once exactly
 *      one rename lands.
 *   2. If KEY.write holds records, judge each: a live one refuses us (LOCKED, naming it). A stale
 *      one is unlinked by its own unique name: of all the contenders that judged it stale, one
 *      unlink succeeds, and none can remove the record of the process that took its place (it
 *      has another name). An empty KEY.write (left between that unlink and a rename) is removed
 *      with rmdir, which removes only an empty folder. Then back to 1, at most ATTEMPTS times.
 *   3. Holding KEY.write, look for readers: a live KEY.read.* refuses us (we release first);
 *      stale reader records are removed.
 * Taking a read lock: rename a record to KEY.read.TOKEN, then look in KEY.write: a live writer
 *   refuses us (we remove ours first). Writers and readers both register before they look for
 *   each other, so a writer and a reader that start together never both succeed (at worst both
 *   are refused, and may try again).
 * Releasing: unlink our record, and rmdir KEY.write (which fails harmlessly when another writer's
 *   folder has already replaced the empty one). Records still held when the process exits are
 *   removed then ('exit' event); a process killed outright leaves records that are stale as
 *   soon as it is gone, and the next opener removes them.
 *
 * Other programs' locks: on Linux, /proc/locks lists the byte-range locks of every process by
 * device and inode. QEMU locks an image by bytes: 100 + n while it uses permission n, 200 + n
 * while it refuses to share it (n = 1 is "write"). So a writer is refused by a POSIX or OFD lock
 * on byte 101 (a program writing) or on byte 201 (a program that lets no one else write). Only
 * writers look: reading /proc/locks takes the kernel's file-lock semaphore for writing, which
 * waits for an RCU grace period (9-14 ms measured on the 2-core test machine, against 0.6 ms for
 * the rest of an open) and stalls every file lock on the host meanwhile; a short read-only
 * command (`vhdx info`) would pay that each time. QEMU cannot see these lock files: it is not
 * kept from an image vhdx holds (the README says so).
 *
 * The lock folder is writable by every user, so that one user's process can take over the stale
 * lock of another's: the locks keep honest programs apart, not hostile local users.
 */
import * as fsp from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import { rmdirSync, unlinkSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { VhdxError } from '../errors.js';

export type LockMode = 'read' | 'write';

export interface FileLock {
  /** The record file that holds the lock. */
  readonly path: string;
  release(): Promise<void>;
}

/** An empty or unparsable record this old (ms) is stale. */
export const UNREADABLE_STALE_MS = 5000;
/** Renames tried before giving up on a write lock other processes keep taking and releasing. */
const ATTEMPTS = 20;
/** Records are a few hundred bytes; anything longer is not one of ours. */
const RECORD_MAX = 4096;
/** Bytes of QEMU's "write" permission and of its refusal to share it (see above). */
const QEMU_WRITE = 101;
const QEMU_UNSHARED_WRITE = 201;

interface LockRecord {
  pid: number;
  host: string;
  boot?: string;
  start?: string;
  mode?: string;
  path?: string;
  command?: string;
}

const code = (e: unknown): string | undefined => (e as { code?: string } | undefined)?.code;
const ignore = (): void => undefined;

/** The lock folder of this host (VHDX_LOCK_DIR overrides it). */
export function lockDir(): string {
  const set = process.env.VHDX_LOCK_DIR;
  if (set) return set;
  return process.platform === 'win32' ? join(tmpdir(), 'vhdx-locks') : '/tmp/vhdx-locks';
}

function lockKey(st: BigIntStats): string {
  return st.isBlockDevice() ? `b${st.rdev}` : `${st.dev}-${st.ino}`;
}

/** Where the lock of the file at `path` lives (for tests and tools; the file must exist). */
export async function lockPaths(path: string): Promise<{ dir: string; writer: string; readerPrefix: string }> {
  const key = lockKey(await fsp.stat(path, { bigint: true }));
  const dir = lockDir();
  return { dir, writer: join(dir, `${key}.write`), readerPrefix: `${key}.read.` };
}

const ready = new Map<string, Promise<string>>();
/** The lock folder, made (writable by every user) when missing. A symbolic link is not used. */
function ensureDir(): Promise<string> {
  const dir = lockDir();
  let p = ready.get(dir);
  if (!p) {
    p = (async () => {
      try {
        await fsp.mkdir(dir);
        if (!process.env.VHDX_LOCK_DIR) await fsp.chmod(dir, 0o777);
      } catch (e) {
        if (code(e) !== 'EEXIST') throw dirError(dir, e);
      }
      const st = await fsp.lstat(dir).catch((e: unknown) => {
        throw dirError(dir, e);
      });
      if (!st.isDirectory()) throw dirError(dir, new Error('it is not a folder (a symbolic link is not followed)'));
      return dir;
    })();
    ready.set(dir, p);
    p.catch(() => ready.delete(dir));
  }
  return p;
}

function dirError(dir: string, e: unknown): VhdxError {
  return new VhdxError(
    'EIO',
    'IO_ERROR',
    `cannot use the lock folder ${dir}: ${(e as Error).message}; set VHDX_LOCK_DIR to a folder every vhdx user can write, or open read-only with -U (forceShare), which takes no lock`,
    { cause: e },
  );
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot), or '' where there is none. */
async function startTime(pid: number): Promise<string> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

let selfPromise: Promise<{ host: string; boot: string; start: string }> | null = null;
function self(): Promise<{ host: string; boot: string; start: string }> {
  selfPromise ??= (async () => ({
    host: hostname(),
    boot: (await fsp.readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim(),
    start: await startTime(process.pid),
  }))();
  return selfPromise;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return code(e) === 'EPERM';
  }
}

function commandLine(): string {
  const [, script, ...args] = process.argv;
  const text = [script ? basename(script).replace(/\.[cm]?js$/, '') : 'node', ...args].join(' ');
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

let counter = 0;
function newToken(): string {
  return `${process.pid}-${(counter++).toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Write a new record under `.new.TOKEN` (inside a folder of that name for a writer). */
async function prepare(dir: string, token: string, imagePath: string, mode: LockMode): Promise<string> {
  const me = await self();
  const rec: LockRecord = { pid: process.pid, host: me.host, boot: me.boot, start: me.start, mode, path: resolve(imagePath), command: commandLine() };
  const tmp = join(dir, `.new.${token}`);
  let file = tmp;
  try {
    if (mode === 'write') {
      await fsp.mkdir(tmp);
      await fsp.chmod(tmp, 0o777); // another user's process may remove this record once it is stale
      file = join(tmp, token);
    }
    await fsp.writeFile(file, JSON.stringify(rec) + '\n', { flag: 'wx' });
  } catch (e) {
    await discard(tmp, mode === 'write' ? token : null);
    throw new VhdxError('EIO', 'IO_ERROR', `cannot write a lock record in ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return tmp;
}

async function discard(tmp: string, inner: string | null): Promise<void> {
  if (inner === null) return fsp.unlink(tmp).catch(ignore);
  await fsp.unlink(join(tmp, inner)).catch(ignore);
  await fsp.rmdir(tmp).catch(ignore);
}

/** A record and its age, or null when it is gone. */
async function readRecord(path: string): Promise<{ rec: LockRecord | null; ageMs: number } | null> {
  let file: fsp.FileHandle;
  try {
    file = await fsp.open(path, 'r');
  } catch (e) {
    if (code(e) === 'ENOENT') return null;
    return { rec: null, ageMs: Infinity }; // unreadable (a folder, no permission): damage
  }
  try {
    const st = await file.stat();
    const buf = new Uint8Array(RECORD_MAX + 1);
    const n = st.isFile() ? (await file.read(buf, 0, buf.length, 0)).bytesRead : 0;
    return { rec: n <= RECORD_MAX ? parseRecord(new TextDecoder().decode(buf.subarray(0, n))) : null, ageMs: Date.now() - st.mtimeMs };
  } catch {
    return { rec: null, ageMs: Infinity };
  } finally {
    await file.close();
  }
}

function parseRecord(text: string): LockRecord | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null) return null;
  const r = v as Record<string, unknown>;
  if (!Number.isSafeInteger(r.pid) || (r.pid as number) <= 0 || typeof r.host !== 'string') return null;
  const out: LockRecord = { pid: r.pid as number, host: r.host };
  for (const k of ['boot', 'start', 'mode', 'path', 'command'] as const) {
    if (typeof r[k] === 'string') out[k] = r[k] as string;
  }
  return out;
}

async function live(found: { rec: LockRecord | null; ageMs: number }): Promise<boolean> {
  const { rec } = found;
  if (rec === null) return found.ageMs < UNREADABLE_STALE_MS;
  const me = await self();
  if (rec.host !== me.host) return true;
  if (rec.boot && me.boot && rec.boot !== me.boot) return false;
  if (!running(rec.pid)) return false;
  if (rec.start) {
    const now = await startTime(rec.pid);
    if (now && now !== rec.start) return false;
  }
  return true;
}

/** The record paths of a write lock (a folder; a plain file there is judged as one record). */
async function writerRecords(target: string): Promise<string[] | null> {
  try {
    return (await fsp.readdir(target)).map((n) => join(target, n));
  } catch (e) {
    if (code(e) === 'ENOENT') return null;
    if (code(e) === 'ENOTDIR') return [target];
    throw new VhdxError('EIO', 'IO_ERROR', `cannot read the lock ${target}: ${(e as Error).message}`, { cause: e });
  }
}

/** Who holds a lock, for messages. */
function holder(rec: LockRecord, recordPath: string): string {
  const me = rec.pid === process.pid ? ' (this process)' : '';
  const cmd = rec.command ? ` (${rec.command})` : '';
  return `process ${rec.pid}${me}${cmd}${rec.host !== hostname() ? ` on host ${rec.host}` : ''} (lock record ${recordPath})`;
}

/** What to do about a live record: wait for it, or remove it when it cannot be judged here. */
function advice(rec: LockRecord, recordPath: string): string {
  if (rec.host !== hostname()) return `; if that process no longer runs on ${rec.host}, remove ${recordPath}`;
  return '';
}

function refusal(imagePath: string, found: { rec: LockRecord | null; ageMs: number }, recordPath: string, mine: LockMode): VhdxError {
  const { rec } = found;
  if (rec === null) {
    return new VhdxError(
      'EBUSY',
      'LOCKED',
      `${imagePath} is locked by an empty or unreadable lock record ${recordPath}, made ${(found.ageMs / 1000).toFixed(1)} s ago; it counts as stale ${UNREADABLE_STALE_MS / 1000} s after it was made: try again then, or remove it if no vhdx process is using the image`,
    );
  }
  if (rec.mode === 'read') {
    return new VhdxError(
      'EBUSY',
      'LOCKED',
      `${imagePath} is open read-only by ${holder(rec, recordPath)}, which relies on it not changing (it may be the parent of an image that process has open); close it there first${advice(rec, recordPath)}`,
    );
  }
  const unsafe = mine === 'read' ? ', or open it with -U (forceShare) to read it anyway (unsafe: the data may change while you read)' : '';
  return new VhdxError(
    'EBUSY',
    'LOCKED',
    `${imagePath} is open for writing by ${holder(rec, recordPath)}; wait until it closes the image${unsafe}${advice(rec, recordPath)}`,
  );
}

const held = new Set<{ file: string; dir: string | null }>();
let exitHook = false;
/** Held records are touched this often (ms), so that a temporary-file cleaner that removes files
 * unmodified for days (systemd-tmpfiles: 10 days in /tmp on some systems) leaves them alone. */
const REFRESH_MS = 6 * 3600_000;
let refresher: ReturnType<typeof setInterval> | null = null;

function hold(file: string, dir: string | null): FileLock {
  const entry = { file, dir };
  held.add(entry);
  if (refresher === null) {
    refresher = setInterval(() => {
      const now = new Date();
      for (const h of held) void fsp.utimes(h.file, now, now).catch(ignore);
    }, REFRESH_MS);
    refresher.unref(); // a lock alone does not keep the process running
  }
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => {
      for (const h of held) {
        try {
          unlinkSync(h.file);
          if (h.dir) rmdirSync(h.dir);
        } catch {
          // gone already, or a writer took the folder over
        }
      }
    });
  }
  return {
    path: file,
    async release() {
      if (!held.delete(entry)) return;
      if (held.size === 0 && refresher !== null) {
        clearInterval(refresher);
        refresher = null;
      }
      await fsp.unlink(file).catch(ignore);
      if (dir) await fsp.rmdir(dir).catch(ignore); // only if empty: another writer's folder stays
    },
  };
}

/**
 * Lock the open file `st` describes (from fstat of its descriptor) for `mode`; `imagePath` names it
 * in messages and records. Throws EBUSY / LOCKED naming the holder and the lock record when
 * another process holds a lock that conflicts (or, for a writer, a program with byte-range locks,
 * see above).
 */
export async function lockFile(st: BigIntStats, imagePath: string, mode: LockMode): Promise<FileLock> {
  const key = lockKey(st);
  const take = async (): Promise<FileLock> => {
    const [dir] = await Promise.all([ensureDir(), self()]); // independent: overlap them
    return mode === 'read' ? takeRead(dir, key, imagePath) : takeWrite(dir, key, imagePath);
  };
  let lock: FileLock;
  try {
    lock = await take();
  } catch (e) {
    // The folder was removed since this process made it (a temporary-file cleaner): again, once.
    if (!(e instanceof VhdxError) || code(e.cause) !== 'ENOENT') throw e;
    ready.delete(lockDir());
    lock = await take();
  }
  if (mode === 'read') return lock;
  try {
    await respectProcLocks(st, imagePath);
  } catch (e) {
    await lock.release();
    throw e;
  }
  return lock;
}

const BUSY = new Set(['EEXIST', 'ENOTEMPTY', 'EPERM', 'EACCES', 'ENOTDIR', 'EISDIR']);

async function takeWrite(dir: string, key: string, imagePath: string): Promise<FileLock> {
  const token = newToken();
  const tmp = await prepare(dir, token, imagePath, 'write');
  const target = join(dir, `${key}.write`);
  let taken = false;
  try {
    for (let attempt = 0; attempt < ATTEMPTS && !taken; attempt++) {
      try {
        await fsp.rename(tmp, target);
        taken = true;
        break;
      } catch (e) {
        if (!BUSY.has(code(e) ?? '')) throw new VhdxError('EIO', 'IO_ERROR', `cannot take the lock ${target}: ${(e as Error).message}`, { cause: e });
        const present = await clearStaleWriter(target, imagePath);
        if (!present && (code(e) === 'EPERM' || code(e) === 'EACCES')) throw dirError(dir, e);
      }
    }
  } finally {
    if (!taken) await discard(tmp, token);
  }
  if (!taken) {
    throw new VhdxError('EBUSY', 'LOCKED', `could not take the lock ${target} for ${imagePath}: other processes kept taking and releasing it (${ATTEMPTS} tries); try again`);
  }
  const lock = hold(join(target, token), target);
  try {
    await refuseIfReaders(dir, key, imagePath);
  } catch (e) {
    await lock.release();
    throw e;
  }
  return lock;
}

/**
 * Step 2 of taking the write lock: refuse if a live writer holds `target`; else remove its stale
 * records (or the empty folder) so that the next rename can land. False when `target` is absent.
 */
async function clearStaleWriter(target: string, imagePath: string): Promise<boolean> {
  const records = await writerRecords(target);
  if (records === null) return false;
  if (records.length === 0) {
    await fsp.rmdir(target).catch(ignore); // fails if a writer's rename landed meanwhile
    return true;
  }
  for (const path of records) {
    const found = await readRecord(path);
    if (found === null) continue;
    if (await live(found)) throw refusal(imagePath, found, path, 'write');
    try {
      await fsp.unlink(path);
    } catch (e) {
      if (code(e) === 'ENOENT') continue; // another contender removed it
      const who = found.rec ? `process ${found.rec.pid}, which no longer runs` : 'damaged';
      throw new VhdxError('EBUSY', 'LOCKED', `${imagePath}: the stale lock record ${path} (${who}) cannot be removed: ${(e as Error).message}; remove it as its owner or as root`, { cause: e });
    }
  }
  return true;
}

async function refuseIfReaders(dir: string, key: string, imagePath: string): Promise<void> {
  const prefix = `${key}.read.`;
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    throw dirError(dir, e);
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) {
      if (!name.startsWith(`${key}.`)) await tidyDead(dir, name);
      continue;
    }
    const path = join(dir, name);
    const found = await readRecord(path);
    if (found === null) continue;
    if (await live(found)) throw refusal(imagePath, found, path, 'write');
    await fsp.unlink(path).catch(ignore); // a stale reader: tidy up if we may
  }
}

/**
 * Records of other files' locks whose process is gone (a reader or writer killed outright, a
 * process that died between preparing a record and placing it), removed by a writer as it lists
 * the folder: else they would stay until that file is next written, or for good once it is
 * deleted. A record whose pid (the first part of its token) still runs here is not even read;
 * the others go if they are stale by the usual rules (a record of another host never is).
 */
async function tidyDead(dir: string, name: string): Promise<void> {
  const path = join(dir, name);
  if (name.endsWith('.write')) {
    for (const token of await fsp.readdir(path).catch(() => [] as string[])) await tidyRecord(join(path, token), token, null);
    await fsp.rmdir(path).catch(ignore); // only if empty
  } else if (name.startsWith('.new.')) {
    const token = name.slice('.new.'.length);
    const isDir = (await fsp.lstat(path).catch(() => null))?.isDirectory() ?? false;
    await tidyRecord(isDir ? join(path, token) : path, token, isDir ? path : null);
  } else if (name.includes('.read.')) {
    await tidyRecord(path, name.slice(name.indexOf('.read.') + '.read.'.length), null);
  }
}

/** Remove the record at `path` (and the folder `within`, if given) when its process is gone. */
async function tidyRecord(path: string, token: string, within: string | null): Promise<void> {
  const pid = Number(token.split('-')[0]);
  if (Number.isSafeInteger(pid) && pid > 0 && running(pid)) return; // a name not of ours is read
  const found = await readRecord(path);
  if (found === null || (await live(found))) return;
  await fsp.unlink(path).catch(ignore);
  if (within !== null) await fsp.rmdir(within).catch(ignore);
}

async function takeRead(dir: string, key: string, imagePath: string): Promise<FileLock> {
  const token = newToken();
  const tmp = await prepare(dir, token, imagePath, 'read');
  const mine = join(dir, `${key}.read.${token}`);
  try {
    await fsp.rename(tmp, mine);
  } catch (e) {
    await discard(tmp, null);
    throw new VhdxError('EIO', 'IO_ERROR', `cannot take the lock ${mine}: ${(e as Error).message}`, { cause: e });
  }
  const lock = hold(mine, null);
  try {
    for (const path of (await writerRecords(join(dir, `${key}.write`))) ?? []) {
      const found = await readRecord(path);
      if (found !== null && (await live(found))) throw refusal(imagePath, found, path, 'read');
    }
  } catch (e) {
    await lock.release();
    throw e;
  }
  return lock;
}

/** `major:minor:inode` as /proc/locks prints a device and inode (Linux's dev_t encoding). */
export function procLocksId(dev: bigint, ino: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${ino}`;
}

/** Refuse a writer when another program's byte-range locks (QEMU's, see above) say so. */
async function respectProcLocks(st: BigIntStats, imagePath: string): Promise<void> {
  if (process.platform !== 'linux') return;
  let text: string;
  try {
    text = await fsp.readFile('/proc/locks', 'utf8');
  } catch {
    return; // no /proc: nothing to see
  }
  const id = procLocksId(st.dev, st.ino);
  let writing: string | null = null;
  let unshared: string | null = null;
  for (const line of text.split('\n')) {
    // "1: OFDLCK ADVISORY  READ -1 fe:00:2147336 100 101"; a waiting request has "->" after "1:".
    const [, type, , , pid, where, start, end] = line.trim().split(/\s+/);
    if ((type !== 'POSIX' && type !== 'OFDLCK') || where !== id) continue;
    const from = Number(start);
    const to = end === 'EOF' ? Infinity : Number(end);
    const who = `${type} lock on bytes ${start}-${end} of ${id} in /proc/locks${pid !== '-1' ? `, process ${pid}` : ''}`;
    if (from <= QEMU_WRITE && QEMU_WRITE <= to) writing ??= who;
    if (from <= QEMU_UNSHARED_WRITE && QEMU_UNSHARED_WRITE <= to) unshared ??= who;
  }
  const find = `\`fuser -v ${imagePath}\` names the process`;
  if (writing !== null) {
    throw new VhdxError('EBUSY', 'LOCKED', `${imagePath} is open for writing by another program (QEMU's "write" lock: ${writing}); close it there first (${find})`);
  }
  if (unshared !== null) {
    throw new VhdxError('EBUSY', 'LOCKED', `${imagePath} is open by another program that lets no one else write it (QEMU's lock: ${unshared}); close it there first (${find})`);
  }
}
