// Shared test helpers: where the corpus is, which peer tools exist, scratch folders.
import { execFileSync, spawnSync, type SpawnSyncOptionsWithStringEncoding } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createGunzip } from 'node:zlib';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const corpusDir = process.env.VHDX_CORPUS ?? resolve(repoRoot, '..', 'shared', 'corpus');
export const cliPath = join(repoRoot, 'bin', 'vhdx.cjs');

/** One image of the corpus manifest (../shared/corpus/manifest.json). */
export interface CorpusEntry {
  file: string;
  origin: string;
  commit: string | null;
  license: string;
  creator: string;
  type: string;
  virtualSize: number;
  blockSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  diskId: string | null;
  dirtyLog: boolean;
  parent: string | null;
  imageSha256: string;
  rawSha256: string | null;
  notes?: string;
  parentFile?: string;
}
export type CorpusManifest = CorpusEntry[];

/** The corpus manifest, or null when the corpus is not beside the repository. */
export function corpusManifest(): CorpusManifest | null {
  const p = join(corpusDir, 'manifest.json');
  return existsSync(p) ? (JSON.parse(readFileSync(p, 'utf8')) as CorpusManifest) : null;
}

const cacheDir = join(tmpdir(), 'vhdx-test-corpus');

/** Decompress a corpus file (once per machine) and return the path of the decompressed copy. */
export async function corpusFile(gzName: string): Promise<string> {
  mkdirSync(cacheDir, { recursive: true });
  const out = join(cacheDir, gzName.replace(/\.gz$/, ''));
  if (!existsSync(out)) {
    const tmp = `${out}.${process.pid}.tmp`;
    await pipeline(createReadStream(join(corpusDir, gzName)), createGunzip(), createWriteStream(tmp));
    execFileSync('mv', [tmp, out]);
  }
  return out;
}

const toolCache = new Map<string, boolean>();
/** True when the command exists on PATH. */
export function hasTool(name: string): boolean {
  let found = toolCache.get(name);
  if (found === undefined) {
    found = spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
    toolCache.set(name, found);
  }
  return found;
}

/** Skip message for tests that need a tool. Use as: test('x', { skip: needTool('qemu-img') }, ...). */
export function needTool(...names: string[]): string | false {
  const missing = names.filter((n) => !hasTool(n));
  return missing.length ? `${missing.join(', ')} not installed` : false;
}

/** A fresh scratch folder, removed when the process exits. */
export function scratch(prefix = 'vhdx-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  process.on('exit', () => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Run a command, throwing with its stderr on failure; returns stdout as text. */
export function run(cmd: string, args: readonly string[], opts: Partial<SpawnSyncOptionsWithStringEncoding> = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** Run the vhdx CLI; returns { status, stdout, stderr } without throwing. */
export function runCli(args: readonly string[], opts: Partial<SpawnSyncOptionsWithStringEncoding> = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cliPath, ...args], { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
