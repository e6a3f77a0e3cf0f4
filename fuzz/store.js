// Inputs on disk: gzip files (the images are mostly zeros), named by content hash in a corpus
// directory and by the broken rule in a crash directory, with a .txt beside each crash saying
// what happened.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';

export const fuzzRoot = dirname(fileURLToPath(import.meta.url));
export const defaultCorpus = (target) => resolve(fuzzRoot, 'corpus', target);
export const defaultCrashes = (target) => resolve(fuzzRoot, 'crashes', target);

export const hashOf = (bytes) => createHash('sha1').update(bytes).digest('hex').slice(0, 16);

/** Names of the inputs in `dir` (none when it does not exist), sorted. */
export function inputNames(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.gz'))
    .sort();
}

export function readInput(dir, name) {
  return new Uint8Array(gunzipSync(readFileSync(join(dir, name))));
}

/** Every input in `dir`: [{ name, bytes }], sorted by name. */
export function loadInputs(dir) {
  return inputNames(dir).map((name) => ({ name, bytes: readInput(dir, name) }));
}

export function saveInput(dir, name, bytes) {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, name);
  writeFileSync(path, gzipSync(bytes, { level: 9 }));
  return path;
}

export function saveCorpusInput(dir, bytes) {
  return saveInput(dir, `${hashOf(bytes)}.gz`, bytes);
}

/** A crash: RULE-SIGHASH.gz (one per rule and place in the code) and RULE-SIGHASH.txt. */
export function saveCrash(dir, result, bytes, sig) {
  const name = `${result.rule}-${createHash('sha1').update(sig).digest('hex').slice(0, 8)}`;
  const path = saveInput(dir, `${name}.gz`, bytes);
  writeFileSync(join(dir, `${name}.txt`), `rule: ${result.rule}\nsignature: ${sig}\n${result.message}\n\n${result.stack ?? ''}\n`);
  return path;
}
