// Bundle the web page (web/) into dist/web/: index.html and app.js, one classic script that holds
// the worker's code as a string (a worker made from a Blob URL, and a classic script, both work
// when the page is opened from a file:// URL, where module scripts and worker files do not).
// The worker bundles the browser-safe library entry (src/index.ts). Type-checks web/ first.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', 'web/tsconfig.json'], { stdio: 'inherit' });

const common = { bundle: true, platform: 'browser', format: 'iife', target: 'es2022', minify: true, logLevel: 'warning', legalComments: 'none' };
const worker = await build({ ...common, entryPoints: ['web/worker.ts'], write: false });
mkdirSync('dist/web', { recursive: true });
await build({
  ...common,
  entryPoints: ['web/app.ts'],
  outfile: 'dist/web/app.js',
  define: { WORKER_SOURCE: JSON.stringify(worker.outputFiles[0].text) },
});
copyFileSync('web/index.html', 'dist/web/index.html');
