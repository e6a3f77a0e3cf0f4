// Bundle the CLI (src/cli/main.ts and everything it imports) into one CommonJS file,
// dist/vhdx-cli.cjs, loaded by bin/vhdx.cjs. One file instead of ~40 ES modules, and CommonJS
// instead of ESM, because start-up is most of a short command's time: Node's ESM loader costs
// ~10 ms before the first line runs, resolving and linking each module more. `import.meta.url`
// (used to find package.json) has no CommonJS meaning, so it is defined from __filename.
// Minified: less to parse at every start (~5 ms of `vhdx info`). One file rather than one per
// command: a command's modules in one shared bundle stay unevaluated until first use, whereas a
// per-command bundle evaluates everything it holds at load, which measured slower.
//
// The source map costs a start nothing: Node reads it only once source maps are enabled.
//
// Imports of node:fs/promises resolve to src/cli/fs-promises.ts (callback fs): see why there.
//
// Then a V8 code cache for the bundle (dist/vhdx-cli.cjs.cache): a child process loads the
// bundle, runs info and map on a scratch image so that the functions those run are compiled, and
// saves what V8 compiled. Only the short commands, whose time is mostly start-up: a cache is
// loaded whole at every start, and one trained on every command (230 KB against 127 KB) cost
// more to load than it saved for info.
import { build } from 'esbuild';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/** The CLI's stand-in for node:fs/promises (src/cli/fs-promises.ts says why). */
const fsPromises = {
  name: 'fs-promises-over-callbacks',
  setup(b) {
    b.onResolve({ filter: /^(node:)?fs\/promises$/ }, () => ({ path: resolve('src/cli/fs-promises.ts') }));
  },
};

await build({
  entryPoints: ['src/cli/main.ts'],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  outfile: 'dist/vhdx-cli.cjs',
  minify: true,
  // A source map beside the bundle (without the sources' text), used only when VHDX_DEBUG=1
  // (scripts/load-cli.cjs), so that stack traces point at src/ rather than the minified file.
  sourcemap: 'linked',
  sourcesContent: false,
  external: ['cli-progress'],
  plugins: [fsPromises],
  banner: { js: "const __vhdxImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
  define: { 'import.meta.url': '__vhdxImportMetaUrl' },
  logLevel: 'warning',
});
copyFileSync('scripts/load-cli.cjs', 'dist/load-cli.cjs');
rmSync('dist/vhdx-cli.cjs.cache', { force: true });

const dir = mkdtempSync(join(tmpdir(), 'vhdx-code-cache-'));
try {
  // The image to train on, made by the CLI itself (before there is a cache).
  const image = join(dir, 'train.vhdx');
  for (const args of [['create', '-q', image, '64M'], ['io', '-q', '-c', 'write 0 4k', image]]) {
    const made = spawnSync(process.execPath, ['bin/vhdx.cjs', ...args], { encoding: 'utf8' });
    if (made.status !== 0) throw new Error(`vhdx ${args[0]} for the code cache failed: ${made.stderr}`);
  }
  const train = `
    const { writeFileSync } = require('node:fs');
    const { main, script } = require(${JSON.stringify(join(process.cwd(), 'dist/load-cli.cjs'))}).loadCli({ script: true });
    const io = { out() {}, err() {} };
    const img = ${JSON.stringify(join(dir, 'train.vhdx'))};
    (async () => {
      for (const args of [['info', img], ['info', '--output=json', img], ['map', img], ['map', '--output=json', img]]) {
        const code = await main(args, io);
        if (code !== 0) throw new Error('training run ' + args[0] + ' exited ' + code);
      }
      writeFileSync(process.argv[1], script.createCachedData());
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', train, 'dist/vhdx-cli.cjs.cache'], { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`making the code cache failed (exit ${r.status})`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
