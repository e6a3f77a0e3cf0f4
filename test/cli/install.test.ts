// Install from a clone (issue 12): the package is not on the registry yet, so the README's route is
// `npm ci && npm link`. This runs that link into a scratch prefix (not the machine's global one)
// and uses the command it puts on PATH, including the serving form the README recommends: the
// linked `vhdx` is node itself, so SIGTERM reaches the server (npx's wrapper does not forward it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { needTool, repoRoot, scratch } from '../helpers/env.js';
import { exec, must } from '../helpers/tools.js';

const dir = scratch('vhdx-install-');

test('npm link puts a working vhdx on PATH; vhdx serve started through it stops on SIGTERM', { skip: needTool('npm') }, async () => {
  const prefix = join(dir, 'prefix');
  // --ignore-scripts: the suite has built the package already (npm link would run prepare again).
  await must('npm', ['link', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: repoRoot, env: { ...process.env, npm_config_prefix: prefix } });
  const env = { ...process.env, PATH: `${join(prefix, 'bin')}:${process.env.PATH}` };
  const version = await exec('vhdx', ['--version'], { env });
  assert.equal(version.code, 0, version.stderr);
  assert.match(version.stdout, /^vhdx \d+\.\d+\.\d+/);

  const image = join(dir, 'disk.vhdx');
  await must('vhdx', ['create', '-q', image, '16M'], { env });
  const socket = join(dir, 'disk.sock');
  const server = spawn('vhdx', ['serve', '--socket', socket, image], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => server.once('exit', (code, signal) => resolve({ code, signal })));
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    server.stderr.on('data', (d: Buffer) => {
      stderr += d;
      if (/serving .* on nbd/.test(stderr)) resolve();
    });
    exited.then(() => reject(new Error(`vhdx serve exited before listening: ${stderr}`)));
  });
  server.kill('SIGTERM');
  assert.deepEqual(await exited, { code: 0, signal: null }, 'the server got SIGTERM and stopped cleanly');
  // It released the image: a writer opens it, and it checks clean.
  await must('vhdx', ['io', '-q', '-c', 'write 0 4k', image], { env });
  assert.equal((await exec('vhdx', ['check', image], { env })).code, 0);
});
