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
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

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
    // Synchronous reads: this runs on the hooks' own thread, and fs/promises (a FileHandle per
    // read) cost more than the reads themselves.
    const text = readFileSync(path, 'utf8');
    const kept = `${cache}${createHash('sha1').update(path).update('\0').update(text).digest('hex')}.js`;
    if (existsSync(kept)) return { format: 'module', source: readFileSync(kept, 'utf8'), shortCircuit: true };
    // esbuild is loaded only when something must be compiled: most processes find everything cached.
    const { transform } = await import('esbuild');
    // The source map goes to a file of its own, named by URL at the end of the code: an inline map
    // was two thirds of every module's text, parsed by every process for nothing unless source
    // maps are on (`NODE_OPTIONS=--enable-source-maps npm test` gives stack traces in .ts lines).
    const out = await transform(text, { loader: 'ts', format: 'esm', target: 'es2022', sourcemap: 'external', sourcefile: path });
    // Node follows a relative path (from the module's own URL, the .ts file's), not a file: URL.
    const code = `${out.code}//# sourceMappingURL=${relative(dirname(path), `${kept}.map`).split(sep).join('/')}\n`;
    // Written under names of their own, then renamed (the map first): processes running side by
    // side never read half a file.
    mkdirSync(cache, { recursive: true });
    const temp = `${kept}.${process.pid}.${Math.random().toString(36).slice(2)}`;
    writeFileSync(`${temp}.map`, out.map);
    renameSync(`${temp}.map`, `${kept}.map`);
    writeFileSync(temp, code);
    renameSync(temp, kept);
    return { format: 'module', source: code, shortCircuit: true };
  }
  return next(url, context);
}
