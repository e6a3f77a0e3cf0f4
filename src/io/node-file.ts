/** A random-access source over a file descriptor, through Node's asynchronous file API. */
import * as fsa from './fs-async.js';
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from './source.js';
import { lockFile, type FileLock } from './lock.js';

export class NodeFileSource implements RandomAccessSource {
  private closed = false;
  private constructor(
    private readonly fd: number,
    private length: number,
    readonly readOnly: boolean,
    readonly path: string,
    private readonly lock: FileLock | null,
  ) {}

  /**
   * Open `path`. Read-only unless `readOnly: false`; `create` makes a new file and fails when one
   * exists, unless `truncate` is also set (then an existing file is emptied, as `qemu-img convert` does).
   * Writable opens take the advisory lock `path.lock` (see lock.ts) unless `lock: false`
   * (for files that are not images, such as a raw conversion's output).
   */
  static async open(
    path: string,
    opts: { readOnly?: boolean; create?: boolean; truncate?: boolean; lock?: boolean } = {},
  ): Promise<NodeFileSource> {
    const readOnly = opts.readOnly ?? true;
    const flags = readOnly ? 'r' : opts.create ? (opts.truncate ? 'w+' : 'wx+') : 'r+';
    // Writers take the lock before opening: a second writer fails without touching the file.
    const lock = readOnly || opts.lock === false ? null : await lockFile(path);
    let fd: number;
    try {
      fd = await fsa.open(path, flags);
    } catch (e) {
      await lock?.release();
      throw fsError(e, `cannot open ${path}`);
    }
    try {
      const st = await fsa.fstat(fd);
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${path} is not a regular file`);
      }
      return new NodeFileSource(fd, st.size, readOnly, path, lock);
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
      return await fsa.read(this.fd, into, offset);
    } catch (e) {
      throw fsError(e, `read of ${into.length} bytes at ${offset} from ${this.path} failed`);
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', `${this.path} is open read-only`);
    try {
      await fsa.writeAll(this.fd, data, offset);
    } catch (e) {
      throw fsError(e, `write of ${data.length} bytes at ${offset} to ${this.path} failed`);
    }
    if (offset + data.length > this.length) this.length = offset + data.length;
  }

  async flush(): Promise<void> {
    this.assertOpen();
    try {
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
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await fsa.close(this.fd);
    } finally {
      await this.lock?.release();
    }
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
