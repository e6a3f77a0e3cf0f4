// The image lock (src/io/lock.ts) in one process: who is refused, what is stale, what the errors
// say. test/cli/lock.test.ts runs the same contests between real processes.
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, linkSync, mkdirSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { NodeFileSource, createFile, openFile } from '../../src/node.js';
import type { VhdxError } from '../../src/node.js';
import { lockPaths, UNREADABLE_STALE_MS } from '../../src/io/lock.js';
import { scratch } from '../helpers/env.js';
import { lockRecords } from '../helpers/tools.js';

const dir = scratch('vhdx-lock-');
let n = 0;
function file(): string {
  const f = join(dir, `f${n++}.img`);
  writeFileSync(f, new Uint8Array(4096));
  return f;
}
const locked = (re: RegExp) => (e: VhdxError): boolean => e.code === 'EBUSY' && e.reason === 'LOCKED' && re.test(e.message);

/** The pid of a process that has exited. */
function deadPid(): number {
  return spawnSync('true').pid;
}

/** Put a record in the file's write lock, as a writer that died would leave it. */
async function plantWriter(f: string, content: string | object, name = 'planted'): Promise<string> {
  const { writer } = await lockPaths(f);
  mkdirSync(writer, { recursive: true });
  const p = join(writer, name);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
}

test('a second writer is refused with EBUSY/LOCKED; a reader too, unless it forces sharing', async () => {
  const f = file();
  const w = await NodeFileSource.open(f, { readOnly: false });
  await assert.rejects(NodeFileSource.open(f, { readOnly: false }), locked(/open for writing by process \d+ \(this process\).*lock record /));
  await assert.rejects(NodeFileSource.open(f), locked(/open for writing by process .*-U \(forceShare\) to read it anyway \(unsafe/));
  const r = await NodeFileSource.open(f, { forceShare: true });
  await r.close();
  await assert.rejects(NodeFileSource.open(f, { readOnly: false, forceShare: true }), (e: VhdxError) => e.reason === 'BAD_ARGUMENT');
  await w.close();
  assert.deepEqual(await lockRecords(f), [], 'close releases the lock');
  const again = await NodeFileSource.open(f, { readOnly: false });
  await again.close();
});

test('one writer per file whatever name reaches it: a symbolic link and a hard link reach the same lock', async () => {
  const f = file();
  const sym = join(dir, `sym${n}`);
  const hard = join(dir, `hard${n}`);
  symlinkSync(f, sym);
  linkSync(f, hard);
  const w = await NodeFileSource.open(hard, { readOnly: false });
  for (const name of [f, sym]) {
    await assert.rejects(NodeFileSource.open(name, { readOnly: false }), locked(/open for writing/));
    await assert.rejects(NodeFileSource.open(name), locked(/open for writing/));
  }
  await w.close();
  const r = await NodeFileSource.open(sym);
  await assert.rejects(NodeFileSource.open(hard, { readOnly: false }), locked(/open read-only by process \d+ .*close it there first/));
  await r.close();
});

test('readers share; a writer waits for the last reader', async () => {
  const f = file();
  const a = await NodeFileSource.open(f);
  const b = await NodeFileSource.open(f);
  await a.close();
  await assert.rejects(NodeFileSource.open(f, { readOnly: false }), locked(/open read-only/));
  await b.close();
  await (await NodeFileSource.open(f, { readOnly: false })).close();
});

test('a lock left by a dead process on this host is taken over', async () => {
  const f = file();
  await plantWriter(f, { pid: deadPid(), host: hostname(), mode: 'write' });
  const w = await NodeFileSource.open(f, { readOnly: false });
  await w.close();
  assert.deepEqual(await lockRecords(f), []);
});

test('a lock whose pid now belongs to another process (another start time, another boot) is stale', async () => {
  for (const extra of [{ start: '1' }, { boot: 'another-boot' }]) {
    const f = file();
    await plantWriter(f, { pid: process.pid, host: hostname(), mode: 'write', ...extra });
    await (await NodeFileSource.open(f, { readOnly: false })).close();
    assert.deepEqual(await lockRecords(f), []);
  }
});

test('a lock held by another host is respected, and the error says how to remove it', async () => {
  const f = file();
  const p = await plantWriter(f, { pid: 1, host: 'some-other-host', mode: 'write' });
  await assert.rejects(NodeFileSource.open(f, { readOnly: false }), locked(new RegExp(`on host some-other-host .*remove ${p}`)));
  rmSync(dirname(p), { recursive: true });
});

test("a writer removes other files' records left by processes that are gone, and only those", async () => {
  const f = file();
  const { dir: lockDir } = await lockPaths(f);
  const dead = deadPid();
  const rec = (pid: number, host = hostname()): string => JSON.stringify({ pid, host, mode: 'read' });
  const gone: [string, string, string, string, ...string[]] = [join(lockDir, `.new.${dead}-0-x`), join(lockDir, `0-1.read.${dead}-1-x`), join(lockDir, `0-2.write`), join(lockDir, `.new.${dead}-3-x`)];
  writeFileSync(gone[0], rec(dead));
  writeFileSync(gone[1], rec(dead));
  mkdirSync(gone[2]);
  writeFileSync(join(gone[2], `${dead}-2-x`), rec(dead));
  mkdirSync(gone[3]);
  writeFileSync(join(gone[3], `${dead}-3-x`), rec(dead));
  const odd = join(lockDir, '0-6.write');
  mkdirSync(odd);
  writeFileSync(join(odd, 'not-a-token'), ''); // empty, and old: stale by its content
  const old = (Date.now() - UNREADABLE_STALE_MS - 1000) / 1000;
  utimesSync(join(odd, 'not-a-token'), old, old);
  gone.push(odd);
  const kept: [string, string] = [join(lockDir, `0-4.read.${process.pid}-4-x`), join(lockDir, `0-5.read.${dead}-5-x`)];
  writeFileSync(kept[0], rec(process.pid)); // alive
  writeFileSync(kept[1], rec(dead, 'some-other-host')); // cannot be judged here
  await (await NodeFileSource.open(f, { readOnly: false })).close();
  for (const p of gone) assert.ok(!existsSync(p), p);
  for (const p of kept) assert.ok(existsSync(p), p);
  for (const p of kept) rmSync(p);
});

test('an empty or garbled lock record blocks only until it is a few seconds old, and the error says so', async () => {
  for (const content of ['', 'garbage\n\0\0', '{"pid":"x"}']) {
    const f = file();
    const p = await plantWriter(f, content);
    await assert.rejects(NodeFileSource.open(f, { readOnly: false }), locked(new RegExp(`empty or unreadable lock record ${p}.*stale 5 s after`)));
    await assert.rejects(NodeFileSource.open(f), locked(/empty or unreadable/), 'readers respect it too');
    const old = (Date.now() - UNREADABLE_STALE_MS - 1000) / 1000;
    utimesSync(p, old, old);
    await (await NodeFileSource.open(f, { readOnly: false })).close();
    assert.deepEqual(await lockRecords(f), []);
  }
});

test('a stale reader does not block a writer, and is removed', async () => {
  const f = file();
  const { dir: lockDir, readerPrefix } = await lockPaths(f);
  writeFileSync(join(lockDir, `${readerPrefix}planted`), JSON.stringify({ pid: deadPid(), host: hostname(), mode: 'read' }));
  await (await NodeFileSource.open(f, { readOnly: false })).close();
  assert.deepEqual(await lockRecords(f), []);
});

test('a failed open leaves no lock behind', async () => {
  await assert.rejects(NodeFileSource.open(join(dir, 'missing.img'), { readOnly: false }), (e: VhdxError) => e.reason === 'IO_ERROR');
  const f = file(); // not a VHDX: the open fails after the lock was taken
  await assert.rejects(openFile(f, { readOnly: false }), (e: VhdxError) => e.reason === 'NOT_VHDX');
  await assert.rejects(openFile(f), (e: VhdxError) => e.reason === 'NOT_VHDX');
  assert.deepEqual(await lockRecords(f), []);
});

test('replacing a file (create + truncate) empties it only once it is locked', async () => {
  const f = file();
  writeFileSync(f, 'precious');
  const r = await NodeFileSource.open(f);
  await assert.rejects(NodeFileSource.open(f, { readOnly: false, create: true, truncate: true }), locked(/open read-only/));
  await r.close();
  assert.ok(existsSync(f));
  const w = await NodeFileSource.open(f, { readOnly: false, create: true, truncate: true });
  assert.equal(w.size, 0);
  await w.close();
});

test('the parents of an open chain are locked shared: no one writes a parent under a live child', async () => {
  const P = join(dir, 'parent.vhdx');
  const C = join(dir, 'child.vhdx');
  await createFile(P, { size: 8 << 20, blockSize: 1 << 20 });
  await createFile(C, { parent: P });
  const child = await openFile(C, { readOnly: false });
  await assert.rejects(openFile(P, { readOnly: false }), locked(/open read-only by process/));
  await child.close();
  const child2 = await openFile(C);
  await assert.rejects(openFile(P, { readOnly: false }), locked(/open read-only/));
  await child2.close();
  // A parent open for writing: the child cannot open its chain, unless it forces sharing.
  const parent = await openFile(P, { readOnly: false });
  await assert.rejects(openFile(C), locked(/open for writing/));
  await (await openFile(C, { forceShare: true })).close();
  await parent.close();
  assert.deepEqual(await lockRecords(P), []);
  assert.deepEqual(await lockRecords(C), []);
});

test('VHDX_LOCK_DIR moves the lock folder; a folder removed meanwhile (a /tmp cleaner) is made again', async () => {
  const mine = join(dir, 'own-lock-dir');
  const before = process.env.VHDX_LOCK_DIR;
  process.env.VHDX_LOCK_DIR = mine;
  try {
    const f = file();
    await (await NodeFileSource.open(f, { readOnly: false })).close();
    assert.ok(existsSync(mine));
    rmSync(mine, { recursive: true });
    const w = await NodeFileSource.open(f, { readOnly: false });
    assert.ok(existsSync(mine), 'made again');
    assert.equal((await lockPaths(f)).dir, mine);
    await assert.rejects(NodeFileSource.open(f), locked(new RegExp(`lock record ${mine}/`)));
    await w.close();
  } finally {
    if (before === undefined) delete process.env.VHDX_LOCK_DIR;
    else process.env.VHDX_LOCK_DIR = before;
  }
});
