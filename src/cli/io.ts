/**
 * `vhdx io [-r] [-q] -c CMD... FILE`: run qemu-io style commands against an image, in order,
 * then close it (which commits). Commands:
 *   read [-P BYTE] OFF LEN         read; with -P check every byte equals BYTE
 *   write [-P BYTE] [-z [-u]] [-f] OFF LEN
 *                                  write BYTE (default 0xcd) or, with -z, zeroes (-u: may deallocate);
 *                                  -f: forced unit access (durable when the command ends)
 *   discard OFF LEN                deallocate; the range reads as zeros after
 *   flush                          make every earlier write durable
 * OFF and LEN are bytes, 0x hex, or take K, M, G, T suffixes. The first failing command stops
 * the run (exit status 1) after the image is closed.
 */
import type { WritableBlockDevice } from '../device/block-device.js';
import { formatOption, openImage, READ_FORMATS } from './image-format.js';
import { formatOffset } from '../errors.js';
import { bytesEqual } from '../codec/bytes.js';
import { namedError, naming, parentPaths, parse, parseSize, UsageError, type Io } from './common.js';

export { IO_USAGE, IO_COMMANDS_HELP } from './usage.js';
import { IO_USAGE, IO_COMMANDS_HELP } from './usage.js';

/** Largest buffer one command uses; longer ranges are done in pieces of this size. */
const PIECE = 4 * 1024 * 1024;
const DEFAULT_PATTERN = 0xcd;

interface Command {
  name: 'read' | 'write' | 'discard' | 'flush';
  flags: Set<string>;
  pattern: number | undefined;
  offset: number;
  length: number;
}

const ALIASES: Record<string, Command['name']> = {
  read: 'read',
  r: 'read',
  write: 'write',
  w: 'write',
  discard: 'discard',
  d: 'discard',
  flush: 'flush',
  f: 'flush',
};
/** Flags each command takes; `P` takes a value. */
const FLAGS: Record<Command['name'], string> = { read: 'P', write: 'Pzuf', discard: '', flush: '' };

/** Parse one -c string: a command, getopt-style flags (`-zf`, `-P 0xcd`, `-P0xcd`), operands. */
export function parseCommand(text: string): Command {
  const words = text.trim().split(/\s+/).filter((w) => w !== '');
  const head = words.shift();
  const name = head === undefined ? undefined : ALIASES[head];
  if (name === undefined) throw new UsageError(`unknown command '${head ?? ''}' in -c '${text}' (commands: read, write, discard, flush)`);
  const flags = new Set<string>();
  let pattern: number | undefined;
  const operands: string[] = [];
  while (words.length > 0) {
    const w = words.shift()!;
    if (w.length > 1 && w.startsWith('-') && operands.length === 0) {
      for (let i = 1; i < w.length; i++) {
        const f = w[i]!;
        if (!FLAGS[name].includes(f)) throw new UsageError(`${name}: unknown flag -${f} in '${text}'`);
        if (f === 'P') {
          const v = i + 1 < w.length ? w.slice(i + 1) : words.shift();
          if (v === undefined) throw new UsageError(`${name}: -P needs a byte value in '${text}'`);
          pattern = patternByte(v, text);
          flags.add('P');
          break;
        }
        flags.add(f);
      }
    } else operands.push(w);
  }
  if (name === 'flush') {
    if (operands.length !== 0) throw new UsageError(`flush takes no operands: '${text}'`);
    return { name, flags, pattern, offset: 0, length: 0 };
  }
  if (operands.length !== 2) throw new UsageError(`${name} needs OFF and LEN: '${text}'`);
  if (flags.has('z') && flags.has('P')) throw new UsageError(`write: -z and -P cannot be used together: '${text}'`);
  if (flags.has('u') && !flags.has('z')) throw new UsageError(`write: -u needs -z: '${text}'`);
  return { name, flags, pattern, offset: parseSize(operands[0]!, 'offset'), length: parseSize(operands[1]!, 'length') };
}

function patternByte(v: string, text: string): number {
  const n = /^(0x[0-9a-f]{1,2}|[0-9]{1,3})$/i.test(v) ? Number(v) : NaN;
  if (!(n >= 0 && n <= 255)) throw new UsageError(`pattern '${v}' is not a byte (0..255 or 0x00..0xff) in '${text}'`);
  return n;
}

export async function ioCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      cmd: { type: 'string', short: 'c', multiple: true },
      'read-only': { type: 'boolean', short: 'r' },
      quiet: { type: 'boolean', short: 'q' },
      format: { type: 'string', short: 'f' },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
    },
    IO_USAGE,
  );
  const fmt = formatOption(values.format, 'image', READ_FORMATS);
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${IO_USAGE}`);
  const texts = (values.cmd as string[] | undefined) ?? [];
  if (texts.length === 0) throw new UsageError(`give at least one -c COMMAND\nusage: ${IO_USAGE}\n${IO_COMMANDS_HELP}`);
  // Every command is parsed before the image is opened: a typo changes nothing.
  const commands = texts.map(parseCommand);
  const quiet = values.quiet === true;
  const path = positionals[0]!;
  const readOnly = values['read-only'] === true;
  const forceShare = values['force-share'] === true;
  if (forceShare && !readOnly) throw new UsageError('-U (--force-share) needs -r: only a read-only open may skip the lock');
  // A file that is neither VHDX nor VHD is written as raw only when -f raw says so.
  const img: WritableBlockDevice = await naming(path, () => openImage(path, fmt, { readOnly, parents: parentPaths(values.parents), forceShare, probeRaw: false }, io));
  let failure: unknown = null;
  try {
    for (const c of commands) {
      const line = await runCommand(img, c);
      if (line !== null && !quiet) io.out(line + '\n');
    }
  } catch (e) {
    failure = e;
  }
  try {
    await img.close();
  } catch (e) {
    failure ??= e;
  }
  if (failure !== null) throw namedError(path, failure);
  return 0;
}

async function runCommand(img: WritableBlockDevice, c: Command): Promise<string | null> {
  const { offset, length } = c;
  // Reads and writes go in pieces: the whole request is checked first, so a request that cannot
  // be done in full changes nothing, and the error names it as it was typed.
  if (c.name !== 'flush') await img.checkRequest(c.name === 'write' && c.flags.has('z') ? 'write zeroes' : c.name, offset, length);
  switch (c.name) {
    case 'flush':
      await img.flush();
      return null;
    case 'discard':
      await img.discard(offset, length);
      return `discard ${length}/${length} bytes at offset ${offset}`;
    case 'read': {
      const buf = new Uint8Array(Math.min(PIECE, length));
      const want = c.pattern === undefined ? null : new Uint8Array(buf.length).fill(c.pattern);
      for (let done = 0; done < length; ) {
        const n = Math.min(buf.length, length - done);
        const part = buf.subarray(0, n);
        await img.read(offset + done, part);
        // Compare natively first; look for the byte only when something differs.
        if (want && !bytesEqual(part, want.subarray(0, n))) {
          const bad = part.findIndex((b) => b !== c.pattern);
          const at = offset + done + bad;
          throw new Error(
            `pattern verification failed at offset ${at} (${formatOffset(at)}): expected ${hexByte(c.pattern!)}, read ${hexByte(part[bad]!)}`,
          );
        }
        done += n;
      }
      return `read ${length}/${length} bytes at offset ${offset}`;
    }
    case 'write': {
      const fua = c.flags.has('f');
      if (c.flags.has('z')) {
        await img.writeZeroes(offset, length, { mayDiscard: c.flags.has('u') });
        if (fua) await img.flush();
      } else {
        const buf = new Uint8Array(Math.min(PIECE, length)).fill(c.pattern ?? DEFAULT_PATTERN);
        if (length <= buf.length) await img.write(offset, buf, { fua });
        else {
          for (let done = 0; done < length; done += buf.length) await img.write(offset + done, buf.subarray(0, Math.min(buf.length, length - done)));
          if (fua) await img.flush();
        }
      }
      return `wrote ${length}/${length} bytes at offset ${offset}`;
    }
  }
}

function hexByte(b: number): string {
  return `0x${b.toString(16).padStart(2, '0')}`;
}
