/** A random-access source over a file descriptor, through Node's asynchronous file API. */
import * as fsa from './fs-async.js';
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from './source.js';
import { lockFile, type FileLock } from './lock.js';
import { DirectIo } from './direct.js';
import { constants } from 'node:fs';

/**
 * How a file is cached, with qemu's names for its cache modes:
 * - `writeback` (the default): through the page cache; `flush` makes writes durable (fdatasync);
 * - `unsafe`: as writeback, but `flush` does nothing (for files redone after a crash, as a copy);
 * - `writethrough`: every write is durable when it returns (O_DSYNC);
 * - `none`: around the page cache (O_DIRECT, Linux), `flush` makes writes durable;
 * - `directsync`: around the page cache, every write durable when it returns (O_DIRECT | O_DSYNC).
 */
export type CacheMode = 'writeback' | 'unsafe' | 'writethrough' | 'none' | 'directsync';
export const CACHE_MODES: readonly CacheMode[] = ['writeback', 'unsafe', 'writethrough', 'none', 'directsync'];

export class NodeFileSource implements RandomAccessSource {
  private closed = false;
  private constructor(
    private readonly fd: number,
    private length: number,
    readonly readOnly: boolean,
    readonly path: string,
    private readonly lock: FileLock | null,
    readonly cache: CacheMode,
    private readonly direct: DirectIo | null,
  ) {}

  /**
   * Open `path`. Read-only unless `readOnly: false`; `create` makes a new file and fails when one
   * exists, unless `truncate` is also set (then an existing file is emptied, as `qemu-img convert` does).
   * Writable opens take the advisory lock `path.lock` (see lock.ts) unless `lock: false`
   * (for files that are not images, such as a raw conversion's output). `cache` is the cache
   * mode (default writeback).
   */
  static async open(
    path: string,
    opts: { readOnly?: boolean; create?: boolean; truncate?: boolean; lock?: boolean; cache?: CacheMode } = {},
  ): Promise<NodeFileSource> {
    const readOnly = opts.readOnly ?? true;
    const cache = opts.cache ?? 'writeback';
    const flags = openFlags(path, readOnly, opts.create === true, opts.truncate === true, cache);
    // Writers take the lock before opening: a second writer fails without touching the file.
    const lock = readOnly || opts.lock === false ? null : await lockFile(path);
    let fd: number;
    try {
      fd = await fsa.open(path, flags);
    } catch (e) {
      await lock?.release();
      if (isDirect(cache) && (e as { code?: string }).code === 'EINVAL') {
        throw new VhdxError('ENOTSUP', 'IO_ERROR', `cannot open ${path} with cache mode ${cache}: its file system refuses O_DIRECT (tmpfs does)`, { cause: e });
      }
      throw fsError(e, `cannot open ${path}`);
    }
    try {
      const st = await fsa.fstat(fd);
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${path} is not a regular file`);
      }
      return new NodeFileSource(fd, st.size, readOnly, path, lock, cache, isDirect(cache) ? new DirectIo(fd) : null);
    } catch (e) {
      await fsa.close(fd);
      await lock?.release();
      throw e;
    }
  }

  get size(): number {
    return this.length;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    this.assertOpen();
    try {
      if (this.direct) return await this.direct.read(offset, into.subarray(0, Math.max(0, Math.min(into.length, this.length - offset))));
      return await fsa.read(this.fd, into, offset);
    } catch (e) {
      throw fsError(e, `read of ${into.length} bytes at ${offset} from ${this.path} failed`);
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', `${this.path} is open read-only`);
    try {
      if (this.direct) await this.direct.write(offset, data);
      else await fsa.writeAll(this.fd, data, offset);
    } catch (e) {
      throw fsError(e, `write of ${data.length} bytes at ${offset} to ${this.path} failed`);
    }
    if (offset + data.length > this.length) this.length = offset + data.length;
  }

  async flush(): Promise<void> {
    this.assertOpen();
    if (this.cache === 'unsafe') return;
    try {
      await this.settle();
      await fsa.fdatasync(this.fd);
    } catch (e) {
      throw fsError(e, `flush of ${this.path} failed`);
    }
  }

  async truncate(size: number): Promise<void> {
    this.assertOpen();
    try {
      await fsa.ftruncate(this.fd, size);
    } catch (e) {
      throw fsError(e, `truncate of ${this.path} to ${size} failed`);
    }
    this.length = size;
    if (this.direct) this.direct.overhang = false;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.settle().catch((e: unknown) => {
        throw fsError(e, `truncate of ${this.path} to ${this.length} failed`);
      });
      await fsa.close(this.fd);
    } finally {
      await this.lock?.release();
    }
  }

  /** Direct I/O widens a write at the end of the file to whole blocks: cut the file back to its size. */
  private async settle(): Promise<void> {
    if (!this.direct?.overhang) return;
    this.direct.overhang = false;
    await fsa.ftruncate(this.fd, this.length);
  }

  private assertOpen(): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', `${this.path} is closed`);
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
 * open(2) flags: the usual ones, with O_DSYNC for writethrough and directsync writers and
 * O_DIRECT for none and directsync (refused where the platform has no O_DIRECT).
 */
function openFlags(path: string, readOnly: boolean, create: boolean, truncate: boolean, cache: CacheMode): string | number {
  if (cache === 'writeback' || cache === 'unsafe' || (readOnly && cache === 'writethrough')) {
    return readOnly ? 'r' : create ? (truncate ? 'w+' : 'wx+') : 'r+';
  }
  const c = constants;
  let flags = readOnly ? c.O_RDONLY : c.O_RDWR | (create ? c.O_CREAT | (truncate ? c.O_TRUNC : c.O_EXCL) : 0);
  if (!readOnly && (cache === 'writethrough' || cache === 'directsync')) flags |= c.O_DSYNC;
  if (isDirect(cache)) {
    if (c.O_DIRECT === undefined) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', `cannot open ${path} with cache mode ${cache}: this platform has no O_DIRECT`);
    flags |= c.O_DIRECT;
  }
  return flags;
}
