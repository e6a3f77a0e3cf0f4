// A differencing image's relative_path is followed by default only inside the child's folder: an
// image from an untrusted source must not make the tool open (or say anything about) files
// elsewhere on the host. With parents 'any' it is followed wherever it leads.
import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createFile, createImage, openFile } from '../../src/node.js';
import type { VhdxError } from '../../src/node.js';
import { FaultySource } from '../../src/testing.js';
import { locatorOf } from '../helpers/chain.js';
import { writeSparseFile } from '../helpers/workload.js';
import { scratch } from '../helpers/env.js';
import { runCli } from '../helpers/env.js';

const MiB = 1024 * 1024;
const dir = scratch('vhdx-parent-paths-');

/** A child file whose locator holds only `relative` (and a linkage nothing matches). */
async function childWith(path: string, relative: string): Promise<void> {
  const src = new FaultySource(new Uint8Array(0), { writeCache: false });
  await createImage(src, { size: 8 * MiB, blockSize: MiB, parentLocator: locatorOf(null, { linkage: '01234567-89ab-cdef-0123-456789abcdef', relative, absolute: null }) });
  writeSparseFile(path, src);
}

test("a relative_path that leaves the child's folder is followed only with parents 'any'", async () => {
  const base = join(dir, 'base.vhdx');
  mkdirSync(join(dir, 'sub'));
  const child = join(dir, 'sub', 'child.vhdx');
  await createFile(base, { size: 8 * MiB });
  await createFile(child, { parent: base }); // relative_path ..\base.vhdx
  await assert.rejects(openFile(child), (e: VhdxError) => {
    assert.equal(e.reason, 'PARENT_NOT_FOUND');
    assert.match(e.message, /relative_path \.\.\\base\.vhdx: not followed: it leaves the child's folder; such paths are followed only with parents 'any' \/ --parents=any/);
    return true;
  });
  const any = await openFile(child, { parents: 'any' });
  assert.equal(any.parent?.name, base);
  await any.close();
  const cli = runCli(['info', child]);
  assert.equal(cli.status, 0, 'info still describes the child');
  assert.match(cli.stdout, /backing chain: not opened: [^]*not followed: it leaves the child's folder/);
  assert.equal(runCli(['info', '--parents=any', child]).status, 0);
});

test('the error for a relative_path outside the folder does not tell whether that file exists', async () => {
  mkdirSync(join(dir, 'deep'));
  mkdirSync(join(dir, 'otherdir'));
  const outside = join(dir, 'secret.bin');
  writeFileSync(outside, 'not a disk');
  const messages: string[] = [];
  for (const target of ['secret.bin', 'missing.bin', 'otherdir']) {
    const c = join(dir, 'deep', `to-${target}.vhdx`);
    await childWith(c, `..\\${target}`);
    await assert.rejects(openFile(c), (e: VhdxError) => {
      assert.equal(e.reason, 'PARENT_NOT_FOUND');
      messages.push(e.message.replaceAll(target, 'X'));
      return true;
    });
  }
  assert.equal(new Set(messages).size, 1, `messages differ:\n${messages.join('\n')}`);
  assert.match(messages[0]!, /not followed/);
  assert.doesNotMatch(messages[0]!, /not found|not a regular file|NOT_VHDX|not a VHDX/);
});

test('a relative_path inside the folder is followed as before, however it is spelled', async () => {
  const base = join(dir, 'inner-base.vhdx');
  await createFile(base, { size: 8 * MiB });
  const child = join(dir, 'inner-child.vhdx');
  await childWith(child, '.\\sub\\..\\inner-base.vhdx');
  // Followed (the linkage then refuses it: this child was not made from that base).
  await assert.rejects(openFile(child), (e: VhdxError) => e.reason === 'PARENT_MISMATCH');
});
