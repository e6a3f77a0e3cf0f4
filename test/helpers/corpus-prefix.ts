// The first bytes of a corpus image, for structure tests that compare fixtures with what Windows
// wrote. Only the prefix is decompressed (the structures these tests read all sit in the first
// few MiB), so a test stays fast even on a machine where corpusFile() has not run yet.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { corpusDir } from './env.js';

/** Skip message when a corpus file is missing: test('x', { skip: needCorpus('a.vhdx.gz') }, ...). */
export function needCorpus(...gzNames: string[]): string | false {
  const missing = gzNames.filter((n) => !existsSync(join(corpusDir, n)));
  return missing.length ? `corpus file ${missing.join(', ')} not found in ${corpusDir}` : false;
}

const cache = new Map<string, Uint8Array>();
const STEP = 1024 * 1024;

/** The first `length` bytes of the decompressed image `gzName` (a Uint8Array, possibly longer). */
export async function corpusPrefix(gzName: string, length: number): Promise<Uint8Array> {
  const hit = cache.get(gzName);
  if (hit && hit.length >= length) return hit;
  // Decompress in steps of 1 MiB, so that tests reading several structures decompress once.
  const want = Math.ceil(length / STEP) * STEP;
  const gunzip = createGunzip({ chunkSize: 1 << 20 });
  gunzip.end(readFileSync(join(corpusDir, gzName)));
  const chunks: Buffer[] = [];
  let got = 0;
  for await (const chunk of gunzip) {
    chunks.push(chunk);
    got += chunk.length;
    if (got >= want) break;
  }
  if (got < length) throw new Error(`${gzName} decompresses to ${got} bytes, fewer than ${length}`);
  const out = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  cache.set(gzName, out);
  return out;
}

/** `length` bytes at `offset` of the decompressed image `gzName`. */
export async function corpusBytes(gzName: string, offset: number, length: number): Promise<Uint8Array> {
  const prefix = await corpusPrefix(gzName, offset + length);
  return prefix.slice(offset, offset + length);
}
