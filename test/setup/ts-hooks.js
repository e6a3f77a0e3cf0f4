// Module hooks for the tests (registered by test/setup/register.js), on the main thread and in
// every worker thread the tests start:
// - an import of the build's output under dist/ loads the TypeScript source under src/ instead,
//   so that every test, and every helper, fuzz target or worker a test loads, runs one copy of
//   the library: the sources, never a build that may be stale (files the build makes that have
//   no source, the bundles, stay as they are);
// - an import of `x.js` that does not exist loads `x.ts` beside it (TypeScript's own rule), and
//   `.ts` files are compiled by esbuild (types are checked by `tsc -p tsconfig.test.json`).
// Why not tsx: on Node 20 its hooks do not reach worker threads, and the fuzz and corrupt-input
// tests run their cases in workers.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { transform } from 'esbuild';

const root = new URL('../../', import.meta.url);
const dist = new URL('dist/', root).href;
const src = new URL('src/', root).href;
// Compiled files are kept by their source's hash: every test file's process (and worker) loads
// most of src/, and compiling it again in each was about a fifth of the suite's time.
const cache = fileURLToPath(new URL('node_modules/.cache/vhdx-test-ts/', root));

/** The file URL a specifier names, when it names a file by a relative path or a file: URL. */
function fileUrl(specifier, parentURL) {
  if (!parentURL || !(specifier.startsWith('.') || specifier.startsWith('file:') || specifier.startsWith('/'))) return null;
  return new URL(specifier, parentURL);
}

export async function resolve(specifier, context, next) {
  const url = fileUrl(specifier, context.parentURL);
  if (url && url.pathname.endsWith('.js')) {
    const fromDist = url.href.startsWith(dist) ? new URL(url.href.slice(dist.length).replace(/\.js$/, '.ts'), src) : null;
    if (fromDist && existsSync(fileURLToPath(fromDist))) return next(fromDist.href, context);
    if (!existsSync(fileURLToPath(url))) {
      const ts = new URL(url.href.replace(/\.js$/, '.ts'));
      if (existsSync(fileURLToPath(ts))) return next(ts.href, context);
    }
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (url.startsWith('file:') && url.endsWith('.ts')) {
    const path = fileURLToPath(url);
    const text = await readFile(path, 'utf8');
    const kept = `${cache}${createHash('sha1').update(path).update('\0').update(text).digest('hex')}.js`;
    const hit = await readFile(kept, 'utf8').catch(() => null);
    if (hit !== null) return { format: 'module', source: hit, shortCircuit: true };
    const out = await transform(text, { loader: 'ts', format: 'esm', target: 'es2022', sourcemap: 'inline', sourcefile: path });
    // Written under a name of its own, then renamed: processes running side by side never read half a file.
    await mkdir(cache, { recursive: true });
    const temp = `${kept}.${process.pid}.${Math.random().toString(36).slice(2)}`;
    await writeFile(temp, out.code);
    await rename(temp, kept);
    return { format: 'module', source: out.code, shortCircuit: true };
  }
  return next(url, context);
}
