#!/usr/bin/env node
'use strict';
// CommonJS on purpose: Node starts a CommonJS entry ~10 ms sooner than an ES module, and start-up
// is most of a short command (`vhdx info`). The CLI itself is one bundled file (built by
// `npm run build` from src/cli/main.ts; see scripts/bundle-cli.js), compiled with the V8 code
// cache the build leaves beside it: ~6 ms less per command. A cache this Node cannot use (another
// V8 version) is ignored by V8 and the file is compiled as usual. (Loading reads files
// synchronously, so libuv's I/O pool has not started when main() sizes it for the command.)
const { main } = require('../dist/load-cli.cjs').loadCli();
main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
