/** A random-access source over a file, through Node's asynchronous file API. */
import * as fs from 'node:fs';
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from './source.js';
import { lockFile, type FileLock } from './lock.js';
import { DirectIo } from './direct.js';

/**
 * How a file is cached, with qemu's names for its cache modes:
 * - `writeback` (the default): through the page cache; `flush` makes writes durable (fdatasync);
 * - `unsafe`: as writeback, but `flush` does nothing (for files redone after a crash, as a copy);
 * - `writethrough`: every write is durable when it returns (O_DSYNC);
 * - `none`: around the page cache (O_DIRECT, Linux), `flush` makes writes durable;
 * - `directsync`: around the page cache, every write durable when it returns (O_DIRECT | O_DSYNC).
 */
export type CacheMode = 'writeback' | 'unsafe' | 'writethrough' | 'none' | 'directsync';
/** Every cache mode, the default (writeback) first. */
export const CACHE_MODES: readonly CacheMode[] = ['writeback', 'unsafe', 'writethrough', 'none', 'directsync'];

/**
 * A source over a file (or block device) by path, locked against conflicting opens, with qemu's
 * cache modes. I/O failures are VhdxError IO_ERROR (code ENOSPC, EROFS, EPERM or EIO). Open
 * with {@link NodeFileSource.open}.
 */
export class NodeFileSource implements RandomAccessSource {
  private closed = false;
  // Writes and truncates completed (attempted, failed ones too: they may have changed the file),
  // and how many of them the last fdatasync covered. A flush with nothing new since then makes no
  // call: a logged metadata change flushes between steps that often write nothing (each fdatasync
  // on a disk costs milliseconds even when it has little to do). -1: the first flush always syncs
  // (the open may have emptied the file, and the caller may rely on it for what came before).
  private changes = 0;
  private syncedChanges = -1;
  private constructor(
    private readonly file: FdFile,
    private length: number,
    /** True unless opened with `readOnly: false`. */
    readonly readOnly: boolean,
    /** The path it was opened by. */
    readonly path: string,
    private readonly lock: FileLock | null,
    /** The cache mode it was opened with. */
    readonly cache: CacheMode,
    private readonly direct: DirectIo | null,
  ) {}

  /**
   * Open `path`. Read-only unless `readOnly: false`; `create` makes a new file and fails when one
   * exists, unless `truncate` is also set (then an existing file is emptied, as `qemu-img convert`
   * does, once it is locked). A writable open takes the file's write lock, a read-only open a
   * shared lock (see lock.ts: by the file's identity, whatever name reaches it), and fails with
   * EBUSY / LOCKED on a conflict. `forceShare` (read-only opens only) takes and checks no lock:
   * unsafe against a concurrent writer, whose changes may be read half-made. `cache` is the cache
   * mode (default writeback).
   */
  static async open(
    path: string,
    opts: { readOnly?: boolean; create?: boolean; truncate?: boolean; forceShare?: boolean; cache?: CacheMode } = {},
  ): Promise<NodeFileSource> {
    const readOnly = opts.readOnly ?? true;
    const cache = opts.cache ?? 'writeback';
    if (opts.forceShare && !readOnly) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${path}: forceShare is for read-only opens only`);
    const file = await openUntouched(path, readOnly, opts.create === true, opts.truncate === true, cache);
    try {
      const st = await file.stat();
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${path} is not a regular file`);
      }
      // Locked by what was opened; nothing is changed before the lock is held.
      const lock = opts.forceShare ? null : await lockFile(st, path, readOnly ? 'read' : 'write');
      try {
        let size = Number(st.size);
        if (opts.create && opts.truncate && size > 0) {
          await file.truncate(0).catch((e: unknown) => {
            throw fsError(e, `truncate of ${path} failed`);
          });
          size = 0;
        }
        return new NodeFileSource(file, size, readOnly, path, lock, cache, isDirect(cache) ? new DirectIo(file) : null);
      } catch (e) {
        await lock?.release();
        throw e;
      }
    } catch (e) {
      await file.close();
      throw e;
    }
  }

  /** Current size of the file in bytes. */
  get size(): number {
    return this.length;
  }

  /** Read up to `into.length` bytes at `offset`; resolves to the count read (short at the end). */
  async read(offset: number, into: Uint8Array): Promise<number> {
    this.assertOpen();
    try {
      if (this.direct) return await this.direct.read(offset, into.subarray(0, Math.max(0, Math.min(into.length, this.length - offset))));
      return await this.file.read(into, offset);
    } catch (e) {
      throw fsError(e, `read of ${into.length} bytes at ${offset} from ${this.path} failed`);
    }
  }

  /** Write all of `data` at `offset`, growing the file when it ends past its size (EROFS when read-only). */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', `${this.path} is open read-only`);
    try {
      if (this.direct) await this.direct.write(offset, data);
      else await this.file.writeAll(data, offset);
    } catch (e) {
      throw fsError(e, `write of ${data.length} bytes at ${offset} to ${this.path} failed`);
    } finally {
      this.changes++;
    }
    if (offset + data.length > this.length) this.length = offset + data.length;
  }

  /** Make completed writes durable (fdatasync); does nothing in cache mode `unsafe`. */
  async flush(): Promise<void> {
    this.assertOpen();
    if (this.cache === 'unsafe') return;
    // Counted before the call: a write that completes while it runs is left for the next flush.
    const covered = this.changes;
    if (covered === this.syncedChanges && !this.direct?.overhang) return;
    try {
      await this.settle();
      await this.file.datasync();
      this.syncedChanges = covered;
    } catch (e) {
      throw fsError(e, `flush of ${this.path} failed`);
    }
  }

  /** Set the file's size in bytes, cutting or extending with zeros. */
  async truncate(size: number): Promise<void> {
    this.assertOpen();
    try {
      await this.file.truncate(size);
    } catch (e) {
      throw fsError(e, `truncate of ${this.path} to ${size} failed`);
    } finally {
      this.changes++;
    }
    this.length = size;
    if (this.direct) this.direct.overhang = false;
  }

  /** Close the file and release its lock (without a flush); a second call does nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.settle().catch((e: unknown) => {
        throw fsError(e, `truncate of ${this.path} to ${this.length} failed`);
      });
      await this.file.close();
    } finally {
      await this.lock?.release();
    }
  }

  /** Direct I/O widens a write at the end of the file to whole blocks: cut the file back to its size. */
  private async settle(): Promise<void> {
    if (!this.direct?.overhang) return;
    this.direct.overhang = false;
    await this.file.truncate(this.length);
  }

  private assertOpen(): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', `${this.path} is closed`);
  }
}

type Callback<T> = (err: NodeJS.ErrnoException | null, value: T) => void;

function call<T>(start: (cb: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    start((err, value) => (err ? reject(err) : resolve(value)));
  });
}

/**
 * The file's own I/O (open, pread, pwrite, fdatasync, ftruncate) on a descriptor, through Node's
 * callback API: the one place in the library that does not use `node:fs/promises`, because a
 * request through a FileHandle costs far more CPU. Measured (32 random 4 KiB requests in flight
 * on a 1 GiB image in /dev/shm, 100 000 requests, CPU time of all the process's threads, three
 * alternating runs each, Node 20): reads 7.9-8.3 µs per request here against 13.0-16.5 through
 * a FileHandle, writes 13.9-14.4 against 21.7-25.9 (the machine was too loaded for IOPS to mean
 * anything; CPU is what bounds them when it is busy).
 */
export class FdFile {
  private constructor(readonly fd: number) {}

  static async open(path: string, flags: string | number): Promise<FdFile> {
    return new FdFile(await call<number>((cb) => fs.open(path, flags, cb)));
  }

  /** pread: bytes read into `into` from file offset `position`. */
  read(into: Uint8Array, position: number): Promise<number> {
    return call((cb) => fs.read(this.fd, into, 0, into.length, position, cb));
  }

  /** pwrite of all of `data` at file offset `position`, however many calls that takes. */
  async writeAll(data: Uint8Array, position: number): Promise<void> {
    for (let done = 0; done < data.length; ) {
      const n = await call<number>((cb) => fs.write(this.fd, data, done, data.length - done, position + done, cb));
      if (n <= 0) throw new Error('write returned 0 bytes');
      done += n;
    }
  }

  /** fstat with 64-bit fields: device and inode numbers exactly (a lock is keyed by them). */
  stat(): Promise<fs.BigIntStats> {
    return call((cb) => fs.fstat(this.fd, { bigint: true }, cb));
  }

  datasync(): Promise<void> {
    return call<void>((cb) => fs.fdatasync(this.fd, (err) => cb(err, undefined)));
  }

  truncate(size: number): Promise<void> {
    return call<void>((cb) => fs.ftruncate(this.fd, size, (err) => cb(err, undefined)));
  }

  close(): Promise<void> {
    return call<void>((cb) => fs.close(this.fd, (err) => cb(err, undefined)));
  }
}

function fsError(e: unknown, message: string): VhdxError {
  const code = (e as { code?: string }).code;
  const errno =
    code === 'ENOSPC' ? 'ENOSPC' : code === 'EROFS' ? 'EROFS' : code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'EIO';
  const detail = e instanceof Error ? `: ${e.message}` : '';
  return new VhdxError(errno, 'IO_ERROR', message + detail, { cause: e });
}

function isDirect(cache: CacheMode): boolean {
  return cache === 'none' || cache === 'directsync';
}

/**
 * Open without changing the file: an existing file to be replaced (`create` with `truncate`) is
 * opened as it is and emptied only once locked; a new one is created exclusively.
 */
async function openUntouched(path: string, readOnly: boolean, create: boolean, truncate: boolean, cache: CacheMode): Promise<FdFile> {
  const openAs = async (how: 'r' | 'r+' | 'wx+'): Promise<FdFile> => {
    try {
      return await FdFile.open(path, openFlags(path, how, cache));
    } catch (e) {
      if (isDirect(cache) && (e as { code?: string }).code === 'EINVAL') {
        throw new VhdxError('ENOTSUP', 'IO_ERROR', `cannot open ${path} with cache mode ${cache}: its file system refuses O_DIRECT (tmpfs does)`, { cause: e });
      }
      throw e;
    }
  };
  try {
    if (readOnly) return await openAs('r');
    if (!create) return await openAs('r+');
    if (!truncate) return await openAs('wx+');
    // Replace: the file that is there, else a new one (one retry: it may appear meanwhile).
    for (let tries = 0; ; tries++) {
      try {
        return await openAs('r+');
      } catch (e) {
        if ((e as { code?: string }).code !== 'ENOENT') throw e;
      }
      try {
        return await openAs('wx+');
      } catch (e) {
        if ((e as { code?: string }).code !== 'EEXIST' || tries > 0) throw e;
      }
    }
  } catch (e) {
    if (e instanceof VhdxError) throw e;
    throw fsError(e, `cannot open ${path}`);
  }
}

/**
 * open(2) flags for `how` (read; read-write; create exclusively), with O_DSYNC for writethrough
 * and directsync writers and O_DIRECT for none and directsync (refused where the platform has no
 * O_DIRECT).
 */
function openFlags(path: string, how: 'r' | 'r+' | 'wx+', cache: CacheMode): string | number {
  const readOnly = how === 'r';
  if (cache === 'writeback' || cache === 'unsafe' || (readOnly && cache === 'writethrough')) return how;
  const c = fs.constants;
  let flags = readOnly ? c.O_RDONLY : c.O_RDWR | (how === 'wx+' ? c.O_CREAT | c.O_EXCL : 0);
  if (!readOnly && (cache === 'writethrough' || cache === 'directsync')) flags |= c.O_DSYNC;
  if (isDirect(cache)) {
    if (c.O_DIRECT === undefined) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `cannot open ${path} with cache mode ${cache}: this platform has no O_DIRECT`);
    flags |= c.O_DIRECT;
  }
  return flags;
}
