// The fdatasync calls a file source makes, counted by strace on a child process: a flush with
// nothing written since the last one makes no call (src/io/node-file.ts), and a resize within the
// BAT's room makes only the flushes its crash-safe update needs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { cliPath, hasTool, repoRoot, runCli, scratch } from '../helpers/env.js';

const strace = hasTool('strace');

/** fdatasync calls made by `node args` (and its threads), and its stdout. */
function countSyncs(args: readonly string[]): { syncs: number; stdout: string } {
  const out = join(scratch('vhdx-flush-'), 'strace.txt');
  const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=fdatasync', '-o', out, process.execPath, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const syncs = readFileSync(out, 'utf8').split('\n').filter((l) => l.includes('fdatasync(')).length;
  return { syncs, stdout: r.stdout };
}

test('a flush with nothing written since the last one makes no fdatasync; a write or a truncate since makes one', { skip: !strace && 'strace not installed' }, () => {
  const dir = scratch('vhdx-flush-');
  const script = join(dir, 'flushes.mjs');
  const nodeFile = pathToFileURL(join(repoRoot, 'dist', 'io', 'node-file.js')).href;
  // Each step prints the syncs strace will count for it, so the two can be compared one by one.
  writeFileSync(
    script,
    `import { NodeFileSource } from ${JSON.stringify(nodeFile)};
const f = await NodeFileSource.open(${JSON.stringify(join(dir, 'f.bin'))}, { readOnly: false, create: true });
let expected = 0;
await f.write(0, new Uint8Array(4096)); await f.flush(); expected++; // the first flush always syncs
await f.flush(); await f.flush(); // nothing new: no call
await f.write(4096, new Uint8Array(512)); await f.flush(); expected++;
await f.flush();
await f.truncate(2048); await f.flush(); expected++;
await f.flush();
await f.close();
console.log(expected);
`,
  );
  const { syncs, stdout } = countSyncs([script]);
  assert.equal(syncs, Number(stdout.trim()));
  assert.equal(syncs, 3);
});

test('a resize within the BAT room makes the eight flushes of its logged update, and the first one of the session', { skip: !strace && 'strace not installed' }, () => {
  const dir = scratch('vhdx-flush-');
  const file = join(dir, 'grow.vhdx');
  assert.equal(runCli(['create', '-q', '-o', 'block_size=1M', file, '10G']).status, 0);
  assert.equal(runCli(['io', '-q', '-c', 'write -P 7 0 1M', file]).status, 0);
  // Two header updates of two slots each (new write GUIDs; the log's GUID), the log entry, the
  // sectors in place, a third header update emptying the log: eight. Before the skip there were 13.
  const { syncs } = countSyncs([cliPath, 'resize', '-q', file, '11G']);
  assert.equal(syncs, 9);
  const info = JSON.parse(runCli(['info', '--output=json', file]).stdout) as { virtualSize: number };
  assert.equal(info.virtualSize, 11 * 2 ** 30);
});
