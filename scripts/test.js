#!/usr/bin/env node
// `npm test`: the test files under test/ (*.test.js and *.test.ts; Node 20's runner does not
// look for .ts files by itself), two at a time, each in its own process with the TypeScript
// hooks (TypeScript tests, and imports of dist/ served from src/: test/setup/ts-hooks.js) and a
// lock folder of its own (test/setup/lock-dir.js). Arguments name files or folders to run instead of test/.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** The test files under a folder, sorted; helpers and setup hold none. */
function testFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      if (name !== 'helpers' && name !== 'setup') out.push(...testFiles(path));
    } else if (/\.test\.[jt]s$/.test(name)) {
      out.push(path);
    }
  }
  return out;
}

const args = process.argv.slice(2);
const options = args.filter((a) => a.startsWith('--'));
const paths = args.filter((a) => !a.startsWith('--'));
const files = (paths.length ? paths : ['test']).flatMap((p) => (statSync(p).isDirectory() ? testFiles(p) : [p]));
// NODE_EXTRA_CA_CERTS makes every Node process parse a CA bundle before any code runs (about
// 50 ms of CPU each on the project's VM). The tests start a Node process for every test file and
// every CLI run, and make no TLS connection to anything: without it, test/cli took 38 s of CPU
// instead of 52.
const env = { ...process.env };
delete env.NODE_EXTRA_CA_CERTS;
const run = spawnSync(process.execPath, [
  '--import', './test/setup/register.js', '--import', './test/setup/lock-dir.js',
  '--test', '--test-concurrency=2', ...options, ...files,
], { stdio: 'inherit', env });
process.exit(run.status ?? 1);
