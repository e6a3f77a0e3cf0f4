/**
 * An advisory lock for writers: `FILE.lock` beside the image, created exclusively and holding the
 * owner's pid and host. Node has no flock/fcntl, so this is a lock file; a lock left by a process
 * that died (same host, pid no longer running) is taken over, so a killed writer does not block
 * the next open. It keeps two vhdx writers apart; it does not stop other programs (qemu uses
 * fcntl locks, which this does not see).
 */
import { close, open, readText, unlink, writeAll } from './fs-async.js';
import { hostname } from 'node:os';
import { VhdxError } from '../errors.js';

export interface FileLock {
  readonly path: string;
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}

export async function lockFile(imagePath: string): Promise<FileLock> {
  const path = `${imagePath}.lock`;
  const me = `${process.pid}\n${hostname()}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = await open(path, 'wx');
      try {
        await writeAll(fd, new TextEncoder().encode(me), 0);
      } finally {
        await close(fd);
      }
      let released = false;
      return {
        path,
        async release() {
          if (released) return;
          released = true;
          await unlink(path).catch(() => undefined);
        },
      };
    } catch (e) {
      if ((e as { code?: string }).code !== 'EEXIST') {
        throw new VhdxError('EIO', 'IO_ERROR', `cannot create lock file ${path}: ${(e as Error).message}`, { cause: e });
      }
    }
    const [pidText, host] = (await readText(path).catch(() => '')).split('\n');
    const pid = Number(pidText);
    if (host === hostname() && Number.isSafeInteger(pid) && pid > 0 && !alive(pid)) {
      await unlink(path).catch(() => undefined); // left by a writer that died: take it over
      continue;
    }
    if (!host && !pidText) continue; // the owner is between creating and filling it
    throw new VhdxError('EBUSY', 'LOCKED', `${imagePath} is open for writing by process ${pidText} on ${host} (lock file ${path})`);
  }
  throw new VhdxError('EBUSY', 'LOCKED', `could not take the lock ${path}`);
}
