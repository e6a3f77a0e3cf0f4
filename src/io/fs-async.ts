/**
 * Promises over Node's callback file API, for the few calls the library makes. `node:fs/promises`
 * would do the same, but loading it pulls in streams, readline and the directory and watch
 * modules: ~2-3 ms of every command's start, where a short command (`vhdx info`) takes ~130 ms.
 */
import * as fs from 'node:fs';

type Callback<T> = (err: NodeJS.ErrnoException | null, value: T) => void;

function call<T>(start: (cb: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    start((err, value) => (err ? reject(err) : resolve(value)));
  });
}

function done(start: (cb: (err: NodeJS.ErrnoException | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    start((err) => (err ? reject(err) : resolve()));
  });
}

export const open = (path: string, flags: string | number): Promise<number> => call((cb) => fs.open(path, flags, cb));
export const close = (fd: number): Promise<void> => done((cb) => fs.close(fd, cb));
export const fstat = (fd: number): Promise<fs.Stats> => call((cb) => fs.fstat(fd, cb));
/** fstat with 64-bit fields: device and inode numbers exactly (a lock is keyed by them). */
export const fstatBig = (fd: number): Promise<fs.BigIntStats> => call((cb) => fs.fstat(fd, { bigint: true }, cb));
export const lstat = (path: string): Promise<fs.Stats> => call((cb) => fs.lstat(path, cb));
export const stat = (path: string): Promise<fs.Stats> => call((cb) => fs.stat(path, cb));
/** The C library's realpath (as fs/promises uses), not fs.realpath's walk with an lstat per path component. */
export const realpath = (path: string): Promise<string> => call((cb) => fs.realpath.native(path, cb));
export const unlink = (path: string): Promise<void> => done((cb) => fs.unlink(path, cb));
export const rename = (from: string, to: string): Promise<void> => done((cb) => fs.rename(from, to, cb));
export const mkdir = (path: string): Promise<void> => done((cb) => fs.mkdir(path, cb));
export const rmdir = (path: string): Promise<void> => done((cb) => fs.rmdir(path, cb));
export const chmod = (path: string, mode: number): Promise<void> => done((cb) => fs.chmod(path, mode, cb));
export const readdir = (path: string): Promise<string[]> => call((cb) => fs.readdir(path, cb));
export const utimes = (path: string, time: Date): Promise<void> => done((cb) => fs.utimes(path, time, time, cb));
export const readText = (path: string): Promise<string> => call((cb) => fs.readFile(path, 'utf8', cb));
export const fdatasync = (fd: number): Promise<void> => done((cb) => fs.fdatasync(fd, cb));
export const ftruncate = (fd: number, size: number): Promise<void> => done((cb) => fs.ftruncate(fd, size, cb));

/** pread: bytes read into `into` from file offset `position`. */
export const read = (fd: number, into: Uint8Array, position: number): Promise<number> =>
  call((cb) => fs.read(fd, into, 0, into.length, position, cb));

/** pwrite of data[from, to) at file offset `position`: bytes written (maybe fewer than asked). */
const write = (fd: number, data: Uint8Array, from: number, to: number, position: number): Promise<number> =>
  call((cb) => fs.write(fd, data, from, to - from, position, cb));

/** pwrite of all of `data` at file offset `position`, however many calls that takes. */
export async function writeAll(fd: number, data: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const n = await write(fd, data, done, data.length, position + done);
    if (n <= 0) throw new Error('write returned 0 bytes');
    done += n;
  }
}
