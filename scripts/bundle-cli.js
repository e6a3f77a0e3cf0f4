// Bundle the CLI (src/cli/main.ts and everything it imports) into one CommonJS file,
// dist/vhdx-cli.cjs, loaded by bin/vhdx.cjs. One file instead of ~40 ES modules, and CommonJS
// instead of ESM, because start-up is most of a short command's time: Node's ESM loader costs
// ~10 ms before the first line runs, resolving and linking each module more. `import.meta.url`
// (used to find package.json) has no CommonJS meaning, so it is defined from __filename.
import { build } from 'esbuild';

await build({
  entryPoints: ['src/cli/main.ts'],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  outfile: 'dist/vhdx-cli.cjs',
  external: ['cli-progress'],
  banner: { js: "const __vhdxImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
  define: { 'import.meta.url': '__vhdxImportMetaUrl' },
  logLevel: 'warning',
});
