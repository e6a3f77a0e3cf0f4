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
   * exists, unless `truncate` is also set (then an existing file is emptied, as `qemu-img convert`
   * does, once it is locked). A writable open takes the file's write lock, a read-only open a
   * shared lock (see lock.ts: by the file's identity, whatever name reaches it), and fails with
   * EBUSY / LOCKED on a conflict. `forceShare` (read-only opens only) takes and checks no lock:
   * unsafe against a concurrent writer, whose changes may be read half-made.
   */
  static async open(
    path: string,
    opts: { readOnly?: boolean; create?: boolean; truncate?: boolean; forceShare?: boolean } = {},
  ): Promise<NodeFileSource> {
    const readOnly = opts.readOnly ?? true;
    if (opts.forceShare && !readOnly) throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${path}: forceShare is for read-only opens only`);
    const fd = await openUntouched(path, readOnly, opts.create === true, opts.truncate === true);
    try {
      const st = await fsa.fstatBig(fd);
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VhdxError('EINVAL', 'BAD_ARGUMENT', `${path} is not a regular file`);
      }
      // Locked by what was opened; nothing is changed before the lock is held.
      const lock = opts.forceShare ? null : await lockFile(st, path, readOnly ? 'read' : 'write');
      try {
        let size = Number(st.size);
        if (opts.create && opts.truncate && size > 0) {
          await fsa.ftruncate(fd, 0).catch((e: unknown) => {
            throw fsError(e, `truncate of ${path} failed`);
          });
          size = 0;
        }
        return new NodeFileSource(fd, size, readOnly, path, lock);
      } catch (e) {
        await lock?.release();
        throw e;
      }
    } catch (e) {
      await fsa.close(fd);
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

/**
 * Open without changing the file: an existing file to be replaced (`create` with `truncate`) is
 * opened as it is and emptied only once locked; a new one is created exclusively.
 */
async function openUntouched(path: string, readOnly: boolean, create: boolean, truncate: boolean): Promise<number> {
  try {
    if (readOnly) return await fsa.open(path, 'r');
    if (!create) return await fsa.open(path, 'r+');
    if (!truncate) return await fsa.open(path, 'wx+');
    // Replace: the file that is there, else a new one (one retry: it may appear meanwhile).
    for (let tries = 0; ; tries++) {
      try {
        return await fsa.open(path, 'r+');
      } catch (e) {
        if ((e as { code?: string }).code !== 'ENOENT') throw e;
      }
      try {
        return await fsa.open(path, 'wx+');
      } catch (e) {
        if ((e as { code?: string }).code !== 'EEXIST' || tries > 0) throw e;
      }
    }
  } catch (e) {
    throw fsError(e, `cannot open ${path}`);
  }
}

function fsError(e: unknown, message: string): VhdxError {
  const code = (e as { code?: string }).code;
  const errno =
    code === 'ENOSPC' ? 'ENOSPC' : code === 'EROFS' ? 'EROFS' : code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'EIO';
  const detail = e instanceof Error ? `: ${e.message}` : '';
  return new VhdxError(errno, 'IO_ERROR', message + detail, { cause: e });
}
