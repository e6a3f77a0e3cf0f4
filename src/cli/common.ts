/** What every subcommand shares: argument parsing, sizes, output, errors. */
import type { ParentPaths } from '../device/parents.js';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { statSync } from 'node:fs';
import { dirname } from 'node:path';
import { VhdxError } from '../errors.js';

export class UsageError extends Error {}

/** Thrown by `parse` when the arguments ask for help (-h, --help): the command prints its help. */
export class HelpRequested extends Error {}

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

export interface Parsed {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

/**
 * Parse a command's arguments. Every command takes -h / --help (HelpRequested), also beside
 * arguments that would be refused otherwise.
 */
export function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>, usage: string): Parsed {
  const all: NonNullable<ParseArgsConfig['options']> = { help: { type: 'boolean', short: 'h' }, ...options };
  let r;
  try {
    r = parseArgs({ args, options: all, allowPositionals: true, strict: true });
  } catch (e) {
    if (asksForHelp(args, all)) throw new HelpRequested();
    throw new UsageError(`${(e as Error).message}\nusage: ${usage}`);
  }
  if (r.values.help === true) throw new HelpRequested();
  return { values: r.values as Parsed['values'], positionals: r.positionals };
}

function asksForHelp(args: string[], options: NonNullable<ParseArgsConfig['options']>): boolean {
  try {
    const { tokens } = parseArgs({ args, options, allowPositionals: true, strict: false, tokens: true });
    return tokens.some((t) => t.kind === 'option' && t.name === 'help');
  } catch {
    return false;
  }
}

export function outputFormat(value: unknown): 'human' | 'json' {
  const v = value ?? 'human';
  if (v !== 'human' && v !== 'json') throw new UsageError(`--output must be human or json, not ${String(v)}`);
  return v;
}

export { humanSize } from '../human-size.js';

const SIZE_RE = /^(0x[0-9a-f]+|[0-9]+(?:\.[0-9]+)?)([kmgtpe]?)(?:i?b)?$/i;
const SUFFIX: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/**
 * A byte count as the tools take it: plain bytes (`4096`), hexadecimal (`0x1000`), or a number
 * with a binary suffix K, M, G, T, P or E in either case, optionally followed by `B` or `iB`
 * (`64k`, `1.5G`, `8MiB`). `what` names the value in the error. The result is a whole, safe
 * number of bytes.
 */
export function parseSize(text: string, what: string): number {
  const m = SIZE_RE.exec(text.trim());
  if (!m) throw new UsageError(`invalid ${what} '${text}': expected bytes, 0x hex, or a number with a K, M, G or T suffix`);
  const [, num, unit] = m as unknown as [string, string, string];
  if (num.includes('.') && unit === '') throw new UsageError(`invalid ${what} '${text}': a fraction needs a suffix (K, M, G, T)`);
  const base = num.toLowerCase().startsWith('0x') ? parseInt(num, 16) : Number(num);
  const value = base * SUFFIX[unit.toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new UsageError(`invalid ${what} '${text}': not a whole number of bytes below 2^53`);
  return value;
}

/**
 * Run `work`, which concerns the file at `path`: an error it throws that does not name the file
 * (a damaged structure, a range outside the disk) gets the path in front, so that every error
 * about a file names it.
 */
export async function naming<T>(path: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    throw namedError(path, e);
  }
}

export function namedError(path: string, e: unknown): unknown {
  if (!(e instanceof Error) || e instanceof UsageError || e.message.includes(path)) return e;
  const message = `${path}: ${e.message}`;
  return e instanceof VhdxError ? new VhdxError(e.code, e.reason, message, { cause: e }) : new Error(message, { cause: e });
}

/**
 * Refuse to make `path` in a folder that does not exist, saying so (the open that would follow
 * fails with a bare ENOENT, or EACCES for a socket). `what` names the file ("cannot create …").
 */
export function requireDirectory(path: string, what: string): void {
  const dir = dirname(path);
  const st = statSync(dir, { throwIfNoEntry: false });
  if (!st) throw new VhdxError('ENOENT', 'NO_DIRECTORY', `cannot create ${what} ${path}: the directory ${dir} does not exist`);
  if (!st.isDirectory()) throw new VhdxError('ENOENT', 'NO_DIRECTORY', `cannot create ${what} ${path}: ${dir} is not a directory`);
}

/** Map errors to exit codes: usage 1, everything else 1 too (as qemu-img), after one line on stderr. */
export function describeError(e: unknown): string {
  if (e instanceof VhdxError) return e.message;
  if (e instanceof UsageError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** The --parents policy for following a differencing image's parent paths (default relative). */
export function parentPaths(value: unknown): ParentPaths {
  if (value === undefined) return 'relative';
  if (value === 'relative' || value === 'any' || value === 'none') return value;
  throw new UsageError(`--parents must be relative, any or none, not ${String(value)}`);
}
