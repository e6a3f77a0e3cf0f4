import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { NodeFileSource } from '../../dist/node.js';
import { scratch } from '../helpers/env.js';

const dir = scratch('vhdx-lock-');

test('a second writer is refused with EBUSY/LOCKED; readers are not', async () => {
  const f = join(dir, 'a.img');
  writeFileSync(f, new Uint8Array(4096));
  const w = await NodeFileSource.open(f, { readOnly: false });
  await assert.rejects(NodeFileSource.open(f, { readOnly: false }), (e) => e.code === 'EBUSY' && e.reason === 'LOCKED' && /open for writing by process/.test(e.message));
  const r = await NodeFileSource.open(f);
  await r.close();
  await w.close();
  assert.equal(existsSync(`${f}.lock`), false, 'close releases the lock');
  const again = await NodeFileSource.open(f, { readOnly: false });
  await again.close();
});

test('a lock left by a dead process on this host is taken over', async () => {
  const f = join(dir, 'b.img');
  writeFileSync(f, new Uint8Array(4096));
  writeFileSync(`${f}.lock`, `2147483646\n${hostname()}\n`);
  const w = await NodeFileSource.open(f, { readOnly: false });
  await w.close();
  assert.equal(existsSync(`${f}.lock`), false);
});

test('a lock held by another host is respected', async () => {
  const f = join(dir, 'c.img');
  writeFileSync(f, new Uint8Array(4096));
  writeFileSync(`${f}.lock`, `1\nsome-other-host\n`);
  await assert.rejects(NodeFileSource.open(f, { readOnly: false }), (e) => e.reason === 'LOCKED');
});

test('a failed open releases the lock', async () => {
  const f = join(dir, 'missing.img');
  await assert.rejects(NodeFileSource.open(f, { readOnly: false }), (e) => e.reason === 'IO_ERROR');
  assert.equal(existsSync(`${f}.lock`), false);
});
