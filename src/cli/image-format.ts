/**
 * `-f FORMAT` and format probing, shared by every command that names an image. A probe never
 * guesses in silence: a file taken as raw because it is not a VHDX gets a warning (as qemu
 * gives), an empty file is refused, and a file that looks like a damaged VHDX is refused rather
 * than exported or read as a raw disk (a write to it would destroy what is left of its metadata).
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { RECOGNIZE_BYTES, probe, recognize } from '../driver/open.js';
import { VhdxError } from '../errors.js';
import { UsageError, type Io } from './common.js';

export type ImageFormat = 'raw' | 'vhdx' | 'vpc';

/** The value of -f (or -O, -F), checked against the formats the command handles; `vhd` is another name for `vpc` (qemu's name for VHD). */
export function formatOption(value: unknown, what: string, allowed: readonly ImageFormat[] = ['raw', 'vhdx']): ImageFormat | undefined {
  if (value === undefined) return undefined;
  const name = value === 'vhd' ? 'vpc' : value;
  if (typeof name !== 'string' || !(allowed as readonly string[]).includes(name)) {
    throw new UsageError(`${what} format ${String(value)} is not supported (${allowed.length === 1 ? `only ${allowed[0]}` : allowed.join(' or ')})`);
  }
  return name as ImageFormat;
}

/**
 * The format to open `path` as: `given` when -f named one, else what its first bytes show. A
 * file that cannot be read here is left to the open that follows, which says why (as a VHDX).
 * The reads are synchronous: a command has nothing else to do meanwhile, and a round trip
 * through the thread pool costs more than the read.
 */
export function imageFormat(path: string, given: ImageFormat | undefined, io: Io): ImageFormat {
  if (given !== undefined) return given;
  let head: Uint8Array;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    head = new Uint8Array(RECOGNIZE_BYTES);
    // The identifier's 8 bytes settle the usual case; the rest is read only without them.
    let got = 0;
    for (let want = 8; got < head.length; want = head.length) {
      const n = readSync(fd, head, got, want - got, got);
      if (n <= 0) break;
      got += n;
      if (got === 8 && probe(head) > 0) break;
    }
    head = head.subarray(0, got);
  } catch {
    return 'vhdx';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (head.length === 0) {
    throw new VhdxError('EINVAL', 'EMPTY_FILE', `${path} is empty: it is not a disk image (-f raw takes it as a raw disk of 0 bytes)`);
  }
  const kind = recognize(head);
  if (kind === 'vhdx') return 'vhdx';
  if (kind === 'damaged-vhdx') {
    throw new VhdxError(
      'EINVAL',
      'DAMAGED_VHDX',
      `${path} looks like a damaged VHDX (no identifier, but a valid VHDX header or region table at its place), so it is not taken as raw; ` +
        '-f raw uses it as raw bytes anyway',
    );
  }
  io.err(`vhdx: warning: ${path} was probed as raw; use -f raw to silence this\n`);
  return 'raw';
}

/** Bytes the file takes on its file system (as `du`: allocated blocks × 512), or null where the platform does not say. */
export function diskUsage(path: string): number | null {
  const st = statSync(path, { throwIfNoEntry: false });
  return st && typeof st.blocks === 'number' ? st.blocks * 512 : null;
}
