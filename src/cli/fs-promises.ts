/**
 * The part of `node:fs/promises` that src/ uses, over Node's callback file API, for the CLI
 * alone: the CLI bundle (scripts/bundle-cli.js) resolves every import of `node:fs/promises` to
 * this module, while the library, and everything that runs it unbundled, uses the real one. Why:
 * loading `node:fs/promises` pulls in streams, readline and the directory and watch modules,
 * ~1 ms (1.1-1.2 ms measured with `require` on Node 20) of every command's start, where a short
 * command (`vhdx info`) takes ~130 ms. This and the launcher's synchronous loading of the bundle
 * with its code cache (bin/vhdx.cjs, scripts/load-cli.cjs) are the CLI's start-up measures; they
 * stay at its edge. Only the calls and argument forms src/ uses are here: the bundle fails to
 * build when an import asks for a name this module lacks.
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

/** The FileHandle methods the library calls, on a file descriptor. */
export class FileHandle {
  constructor(readonly fd: number) {}

  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number; buffer: Uint8Array }> {
    return call<number>((cb) => fs.read(this.fd, buffer, offset, length, position, cb)).then((bytesRead) => ({ bytesRead, buffer }));
  }

  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number; buffer: Uint8Array }> {
    return call<number>((cb) => fs.write(this.fd, buffer, offset, length, position, cb)).then((bytesWritten) => ({ bytesWritten, buffer }));
  }

  stat(opts?: { bigint?: boolean }): Promise<fs.Stats | fs.BigIntStats> {
    return opts?.bigint ? call((cb) => fs.fstat(this.fd, { bigint: true }, cb)) : call((cb) => fs.fstat(this.fd, cb));
  }

  datasync(): Promise<void> {
    return done((cb) => fs.fdatasync(this.fd, cb));
  }

  truncate(len = 0): Promise<void> {
    return done((cb) => fs.ftruncate(this.fd, len, cb));
  }

  close(): Promise<void> {
    return done((cb) => fs.close(this.fd, cb));
  }
}

export const constants = fs.constants;
export const open = (path: string, flags: string | number): Promise<FileHandle> =>
  call<number>((cb) => fs.open(path, flags, cb)).then((fd) => new FileHandle(fd));
export const stat = (path: string, opts?: { bigint?: boolean }): Promise<fs.Stats | fs.BigIntStats> =>
  opts?.bigint ? call((cb) => fs.stat(path, { bigint: true }, cb)) : call((cb) => fs.stat(path, cb));
export const lstat = (path: string): Promise<fs.Stats> => call((cb) => fs.lstat(path, cb));
/** The C library's realpath, as fs/promises uses (not fs.realpath's walk with an lstat per path component). */
export const realpath = (path: string): Promise<string> => call((cb) => fs.realpath.native(path, cb));
export const access = (path: string, mode?: number): Promise<void> => done((cb) => fs.access(path, mode, cb));
export const unlink = (path: string): Promise<void> => done((cb) => fs.unlink(path, cb));
export const rename = (from: string, to: string): Promise<void> => done((cb) => fs.rename(from, to, cb));
export const mkdir = (path: string): Promise<void> => done((cb) => fs.mkdir(path, cb));
export const rmdir = (path: string): Promise<void> => done((cb) => fs.rmdir(path, cb));
export const chmod = (path: string, mode: number): Promise<void> => done((cb) => fs.chmod(path, mode, cb));
export const readdir = (path: string): Promise<string[]> => call((cb) => fs.readdir(path, cb));
export const utimes = (path: string, atime: Date, mtime: Date): Promise<void> => done((cb) => fs.utimes(path, atime, mtime, cb));
export function readFile(path: string): Promise<Buffer>;
export function readFile(path: string, encoding: 'utf8'): Promise<string>;
export function readFile(path: string, encoding?: 'utf8'): Promise<Buffer | string> {
  return encoding ? call<string>((cb) => fs.readFile(path, encoding, cb)) : call<Buffer>((cb) => fs.readFile(path, cb));
}
export const writeFile = (path: string, data: string, opts: { flag: string }): Promise<void> => done((cb) => fs.writeFile(path, data, opts, cb));
