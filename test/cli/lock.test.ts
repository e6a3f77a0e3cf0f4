// Image locks between real processes: writers that start together through different names or
// against a stale lock (exactly one wins, over many trials), readers and writers starting
// together, the CLI refusing a parent written under a live child, -U, and QEMU's own locks.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { linkSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { lockPaths, procLocksId } from '../../src/io/lock.js';
import { needTool, repoRoot } from '../helpers/env.js';
import { lockRecords, shmScratch, vhdx } from '../helpers/tools.js';
import { startServe } from '../nbd/serve.js';

const dir = shmScratch('vhdx-cli-lock-');
const CONTENDERS = 6;
const TRIALS = 30;

/** A lock-contender process (test/helpers/lock-contender.js) driven line by line. */
/** A contender: send one command line, get its answer line. */
interface Contender {
  send(cmd: string): Promise<string>;
  end(): Promise<void>;
}

/** What a contender opens, and how. */
interface Open {
  mode: 'read' | 'write';
  path: string;
}

function contender(): Contender {
  const child = spawn(process.execPath, [join(repoRoot, 'test', 'helpers', 'lock-contender.js'), 'serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: ((line: string) => void)[] = [];
  createInterface({ input: child.stdout }).on('line', (l: string) => waiting.shift()?.(l));
  return {
    send(cmd: string) {
      return new Promise<string>((resolve) => {
        waiting.push(resolve);
        child.stdin.write(`${cmd}\n`);
      });
    },
    async end() {
      child.stdin.end();
      await once(child, 'exit');
    },
  };
}

async function withContenders(fn: (all: Contender[]) => Promise<void>): Promise<void> {
  const all = Array.from({ length: CONTENDERS }, contender);
  try {
    await fn(all);
  } finally {
    await Promise.all(all.map((c) => c.end()));
  }
}

/** Every contender opens at once (each with its own name and mode); the answers, in order. */
async function race(all: Contender[], opens: Open[]): Promise<string[]> {
  const at = Date.now() + 20; // long enough for every contender to have its line
  const answers = await Promise.all(all.map((c, i) => c.send(`open ${at} ${opens[i]!.mode} ${opens[i]!.path}`)));
  for (const a of answers) assert.match(a, /^(ok|refused LOCKED )/, a);
  return answers;
}

async function closeAll(all: Contender[]): Promise<void> {
  for (const answer of await Promise.all(all.map((c) => c.send('close')))) assert.equal(answer, 'closed');
}

function imageFile(name: string): string {
  const f = join(dir, name);
  writeFileSync(f, new Uint8Array(64 * 1024));
  return f;
}

/** The record a writer killed outright leaves: its pid is gone. */
async function plantStaleWriter(f: string): Promise<void> {
  const { writer } = await lockPaths(f);
  mkdirSync(writer, { recursive: true });
  const pid = spawnSync('true').pid;
  writeFileSync(join(writer, `dead-${pid}`), JSON.stringify({ pid, host: hostname(), mode: 'write' }));
}

test('two writers through a symlink and a hard link: exactly one wins, in every trial (real processes)', async () => {
  const f = imageFile('names.img');
  const sym = join(dir, 'names-sym');
  const hard = join(dir, 'names-hard');
  const symToHard = join(dir, 'names-sym-to-hard');
  const names = [f, sym, hard, symToHard];
  symlinkSync(f, sym);
  linkSync(f, hard);
  symlinkSync(hard, symToHard);
  await withContenders(async (all) => {
    for (let t = 0; t < TRIALS; t++) {
      const answers = await race(all, all.map((_, i): Open => ({ mode: 'write', path: names[(i + t) % names.length]! })));
      assert.equal(answers.filter((a) => a === 'ok').length, 1, `trial ${t}: ${answers.join(' | ')}`);
      await closeAll(all);
    }
  });
  assert.deepEqual(await lockRecords(f), []);
});

test('a stale lock left by a dead writer: of many writers starting at once, exactly one takes it over, in every trial', async () => {
  const f = imageFile('stale.img');
  const sym = join(dir, 'stale-sym');
  symlinkSync(f, sym);
  await withContenders(async (all) => {
    for (let t = 0; t < TRIALS; t++) {
      await plantStaleWriter(f);
      const answers = await race(all, all.map((_, i): Open => ({ mode: 'write', path: i % 2 ? sym : f })));
      assert.equal(answers.filter((a) => a === 'ok').length, 1, `trial ${t}: ${answers.join(' | ')}`);
      for (const a of answers.filter((x) => x !== 'ok')) assert.match(a, /open for writing by process \d+ .*lock record /);
      await closeAll(all);
    }
  });
  assert.deepEqual(await lockRecords(f), []);
});

test('readers and writers starting together: a writer that wins is alone, in every trial', async () => {
  const f = imageFile('rw.img');
  await withContenders(async (all) => {
    let writerWon = 0;
    let readersWon = 0;
    for (let t = 0; t < TRIALS; t++) {
      // Writers at rotating places among readers.
      const opens = all.map((_, i): Open => ({ mode: (i + t) % 3 === 0 ? 'write' : 'read', path: f }));
      const answers = await race(all, opens);
      const winners = opens.filter((o, i) => answers[i] === 'ok');
      if (winners.some((o) => o.mode === 'write')) {
        writerWon++;
        assert.equal(winners.length, 1, `trial ${t}: a writer beside others: ${answers.join(' | ')}`);
      } else if (winners.length > 0) readersWon++;
      await closeAll(all);
    }
    assert.ok(writerWon + readersWon > 0, 'someone got in');
  });
  assert.deepEqual(await lockRecords(f), []);
});

test('CLI: a parent written under a live child is refused; the chain stays intact', async () => {
  const base = join(dir, 'base.vhdx');
  const child = join(dir, 'child.vhdx');
  assert.equal((await vhdx(['create', '-q', base, '16M'])).code, 0);
  assert.equal((await vhdx(['io', '-q', '-c', 'write -P 0x61 0 1M', base])).code, 0);
  assert.equal((await vhdx(['create', '-q', '-b', base, child])).code, 0);
  const s = await startServe(['--socket', join(dir, 'child.sock'), child]);
  try {
    const w = await vhdx(['io', '-c', 'write -P 0x62 0 4k', base]);
    assert.equal(w.code, 1);
    assert.match(w.stderr, /^vhdx: .*base\.vhdx is open read-only by process \d+ \(vhdx serve .*\) \(lock record \/.*\).*close it there first/);
    const commit = await vhdx(['commit', child]);
    assert.equal(commit.code, 1, 'commit would write the parent (and the child) under the server');
    assert.match(commit.stderr, /LOCKED|open for writing|open read-only/);
    // Readers of the child or the base are fine beside a reader of the base, not beside the writer of the child.
    assert.equal((await vhdx(['info', base])).code, 0);
    const info = await vhdx(['info', child]);
    assert.equal(info.code, 1);
    assert.match(info.stderr, /child\.vhdx is open for writing by process \d+ .*-U \(forceShare\)/);
    assert.equal((await vhdx(['info', '-U', child])).code, 0, '-U reads anyway');
    assert.equal((await vhdx(['io', '-r', '-U', '-c', 'read -P 0x61 0 1M', child])).code, 0);
    assert.equal((await vhdx(['io', '-U', '-c', 'read 0 1', child])).code, 1, '-U needs -r');
    assert.equal((await vhdx(['check', '-U', '-r', 'all', child])).code, 1, '-U is refused with a repair');
  } finally {
    assert.equal((await s.stop()).code, 0);
  }
  assert.deepEqual(await lockRecords(base), []);
  assert.deepEqual(await lockRecords(child), []);
  assert.equal((await vhdx(['check', child])).code, 0, 'the chain is intact: no PARENT_MISMATCH');
  assert.equal((await vhdx(['io', '-r', '-c', 'read -P 0x61 0 1M', child])).code, 0);
});

test('CLI: a writer through another name is refused while a server holds the image', async () => {
  const img = join(dir, 'served.vhdx');
  assert.equal((await vhdx(['create', '-q', img, '16M'])).code, 0);
  const hard = join(dir, 'served-hard.vhdx');
  const sym = join(dir, 'served-sym.vhdx');
  linkSync(img, hard);
  symlinkSync(hard, sym);
  const s = await startServe(['--socket', join(dir, 'served.sock'), img]);
  try {
    for (const name of [hard, sym]) {
      const r = await vhdx(['io', '-c', 'write 0 4k', name]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /is open for writing by process \d+ \(vhdx serve .*\) \(lock record /);
    }
  } finally {
    assert.equal((await s.stop()).code, 0);
  }
  assert.equal((await vhdx(['io', '-q', '-c', 'write 0 4k', sym])).code, 0);
});

test('CLI: a writer killed outright leaves a lock the next writer takes over', async () => {
  const img = join(dir, 'killed.vhdx');
  assert.equal((await vhdx(['create', '-q', img, '16M'])).code, 0);
  const s = await startServe(['--socket', join(dir, 'killed.sock'), img]);
  assert.equal((await s.stop('SIGKILL')).signal, 'SIGKILL');
  assert.ok((await lockRecords(img)).length > 0, 'the killed server left its records');
  const r = await vhdx(['io', '-c', 'write -P 0x33 0 4k', img]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await lockRecords(img), []);
});

/** The /proc/locks lines naming `file`. */
function procLocks(file: string): string[] {
  const { dev, ino } = statSync(file, { bigint: true });
  const id = procLocksId(dev, ino);
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .filter((l) => l.includes(` ${id} `));
}

/** Start `cmd args`, then wait until /proc/locks shows its locks on bytes 100 and 201 of `file`. */
async function holding(cmd: string, args: string[], file: string) {
  const child = spawn(cmd, args, { stdio: 'ignore' });
  const ready = () => {
    const lines = procLocks(file).join('\n');
    return / 100 10[01]$/m.test(lines) && / 201 201$/m.test(lines);
  };
  for (let i = 0; i < 500 && !ready(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ready(), `${cmd} took no lock on ${file}: ${procLocks(file).join('; ')}`);
  return {
    async stop() {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

test('QEMU holding an image: vhdx writers respect its locks', { skip: process.platform !== 'linux' ? 'Linux /proc/locks' : needTool('qemu-img', 'qemu-io') }, async () => {
  const img = join(dir, 'qemu.vhdx');
  assert.equal((await vhdx(['create', '-q', img, '16M'])).code, 0);
  // qemu-io read-write: no one else writes it.
  let q = await holding('qemu-io', ['-f', 'vhdx', '-c', 'sleep 60000', img], img);
  try {
    const w = await vhdx(['io', '-c', 'write 0 4k', img]);
    assert.equal(w.code, 1);
    assert.match(w.stderr, /is open for writing by another program \(QEMU's "write" lock: OFDLCK lock on bytes .* in \/proc\/locks\).*fuser -v/);
    // Readers do not look at /proc/locks (see src/io/lock.ts: it costs an RCU grace period).
    assert.equal((await vhdx(['info', img])).code, 0);
  } finally {
    await q.stop();
  }
  // qemu-io read-only: others may read, not write.
  q = await holding('qemu-io', ['-r', '-f', 'vhdx', '-c', 'sleep 60000', img], img);
  try {
    const w = await vhdx(['io', '-c', 'write 0 4k', img]);
    assert.equal(w.code, 1);
    assert.match(w.stderr, /is open by another program that lets no one else write it/);
    assert.equal((await vhdx(['info', img])).code, 0);
  } finally {
    await q.stop();
  }
  assert.equal((await vhdx(['io', '-q', '-c', 'write 0 4k', img])).code, 0, 'free again once QEMU is gone');
});
