'use strict';
// Loads the bundled CLI (dist/vhdx-cli.cjs) with the V8 code cache made at build time
// (dist/vhdx-cli.cjs.cache), as CommonJS would load it. Copied into dist/ by the build; used by
// bin/vhdx.cjs, and by scripts/bundle-cli.js to make the cache.
const { readFileSync } = require('node:fs');
const { createRequire, wrap } = require('node:module');
const { dirname, join } = require('node:path');
const { Script } = require('node:vm');

const bundle = join(__dirname, 'vhdx-cli.cjs');

/**
 * The bundle's exports; with `script: true`, also the vm.Script (to make a cache from). With
 * VHDX_DEBUG=1 the bundle is required as usual with source maps enabled (no code cache: start-up
 * speed does not matter then), so that stack traces name the TypeScript sources.
 */
function loadCli({ script: wantScript = false } = {}) {
  if (process.env.VHDX_DEBUG === '1' && !wantScript) {
    process.setSourceMapsEnabled(true);
    return require(bundle);
  }
  let cachedData;
  try {
    cachedData = readFileSync(`${bundle}.cache`);
  } catch {
    cachedData = undefined; // no cache: compile as usual
  }
  const script = new Script(wrap(readFileSync(bundle, 'utf8')), { filename: bundle, cachedData });
  const module = { exports: {}, filename: bundle, id: bundle };
  script.runInThisContext().call(module.exports, module.exports, createRequire(bundle), module, bundle, dirname(bundle));
  return wantScript ? { ...module.exports, script } : module.exports;
}

module.exports = { loadCli };
