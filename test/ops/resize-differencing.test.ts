// A differencing child grown past its parent (issue 16): below the parent's end the parent shows
// through, past it zeros; writes there (partial sectors too) keep the rest zero; the chain checks
// clean; a power loss at every write and flush of the grow leaves the old child or the new one;
// commit grows the parent to the child's size first (as `qemu-img commit` grows a smaller base);
// a child smaller than its parent stays refused. By path: `vhdx resize` of a child, `vhdx check`,
// `vhdx convert` of the chain, libvhdi (below the parent's end: past it libvhdi fails to read, see
// README), and the chain served over NBD read by qemu-io.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { VhdxImage, checkImage, commitChild, resize, type VhdxError } from '../../src/index.js';
import { FaultySource, type CrashImageOptions } from '../../src/testing.js';
import { compareWith, makeBase, makeChild, openChain } from '../helpers/chain.js';
import { checkInvariants } from '../helpers/invariants.js';
import { pattern, type SparseModel } from '../helpers/model.js';
import { needTool, scratch } from '../helpers/env.js';
import { PYVHDI_PYTHON, must, needPyvhdi, vhdx } from '../helpers/tools.js';
import { startServe } from '../nbd/serve.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PARENT = 8 * MiB;

/** A parent of 8 MiB with data over most of it, and a child (1 MiB blocks) with its own writes. */
async function chain(): Promise<{ psrc: FaultySource; csrc: FaultySource; model: SparseModel }> {
  const { src: psrc, model } = await makeBase({ size: PARENT, fill: [{ kind: 'data', offset: 0, length: PARENT - 4096 }] });
  const parent = await VhdxImage.open(psrc);
  const csrc = await makeChild(parent, { blockSize: MiB });
  await parent.close();
  const c = await openChain([csrc, psrc]);
  const writes: [number, Uint8Array][] = [[MiB + 512, pattern(1, 3000)], [PARENT - MiB, pattern(2, MiB)]];
  for (const [at, data] of writes) {
    await c.write(at, data);
    model.write(at, data);
  }
  await c.close();
  return { psrc, csrc, model };
}

async function readAt(img: VhdxImage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

test('a child grown past its parent reads its parent below the parent\'s end and zeros past it; writes there work; it checks clean', async () => {
  const { psrc, csrc, model } = await chain();
  const newSize = 20 * MiB + 512;
  const r = await resize(await openChain([csrc, psrc]), newSize);
  assert.equal(r.image.size, newSize);
  await r.image.close();
  const c = await openChain([csrc, psrc]);
  assert.equal(await compareWith(c, model, 0, PARENT), null);
  assert.ok(isZero(await readAt(c, PARENT, newSize - PARENT)), 'zeros past the parent');
  // Block status: nothing at depth 1 past the parent's end; zeros there.
  for (const x of await c.blockStatus(PARENT, newSize - PARENT)) {
    assert.equal(x.depth, 0, JSON.stringify(x));
    assert.equal(x.type, 'zero', JSON.stringify(x));
  }
  // Writes across the parent's end (the sector below completed from the parent, the one above
  // from zeros), past it in part of a sector, and in the disk's last, short block.
  const writes: [number, Uint8Array][] = [[PARENT - 50, pattern(3, 100)], [12 * MiB + 7, pattern(4, 10)], [newSize - 512, pattern(5, 512)]];
  for (const [at, data] of writes) {
    await c.write(at, data);
    model.write(at, data);
  }
  await c.close();
  const again = await openChain([csrc, psrc]);
  assert.equal(await compareWith(again, model, 0, newSize), null);
  await again.close();
  const report = await checkImage(csrc, { parent: () => VhdxImage.open(psrc) });
  assert.equal(report.corruptions + report.warnings, 0, JSON.stringify(report.findings));
  // Shrinking below the parent stays refused, with force too (a child smaller than its parent
  // is refused at open: differencing.test.ts).
  const rw = await openChain([csrc, psrc]);
  await assert.rejects(resize(rw, PARENT - MiB, { shrink: true, force: true }), (e: VhdxError) => e.reason === 'SHRINK_CUTS_DATA');
  await rw.close();
});

test('power loss at every write and flush of a child\'s grow past its parent (the BAT region extended) leaves the old child or the new one', async () => {
  const { psrc, csrc, model } = await chain();
  const bytes = csrc.bytes().slice();
  const newSize = 130 * GiB;
  const work = async (src: FaultySource) => {
    const r = await resize(await openChain([src, psrc]), newSize);
    assert.ok(r.batGrowth > 0, 'the BAT region grew');
    await r.image.close();
  };
  const dry = new FaultySource(bytes, { writeCache: true });
  await work(dry);
  const total = dry.mutations;
  const seen = new Set<number>();
  const verify = async (src: FaultySource, what: string) => {
    const c = await openChain([src, psrc], { writable: [] });
    assert.ok(c.size === PARENT || c.size === newSize, `${what}: size ${c.size}`);
    seen.add(c.size);
    assert.equal(await compareWith(c, model, 0, PARENT), null, what);
    if (c.size > PARENT) for (const at of [PARENT, newSize - MiB]) assert.ok(isZero(await readAt(c, at, MiB)), `${what}: zeros at ${at}`);
    await c.close();
    const w = await openChain([src, psrc]);
    await w.close();
    assert.deepEqual(await checkInvariants(src), [], what);
  };
  for (let n = 1; n <= total; n++) {
    const dying = new FaultySource(bytes, { crashAt: n });
    await assert.rejects(work(dying), `crash at ${n}`);
    const variants: CrashImageOptions[] = [{ keep: 'none' }, { keep: 'random', seed: n, tear: true }];
    for (const v of variants) await verify(dying.crashImage(v), `crash at ${n}/${total} ${JSON.stringify(v)}`);
  }
  await verify(dry, 'no crash');
  assert.deepEqual([...seen].sort((a, b) => a - b), [PARENT, newSize]);
});

test('commit of a child grown past its parent grows the parent to the child\'s size first', async () => {
  const { psrc, csrc, model } = await chain();
  const newSize = 12 * MiB;
  await (await resize(await openChain([csrc, psrc]), newSize)).image.close();
  const c = await openChain([csrc, psrc], { writable: [0, 1] });
  const data = pattern(6, 4096);
  await c.write(10 * MiB, data);
  model.write(10 * MiB, data);
  const r = await commitChild(c);
  assert.equal(r.parentGrowth, newSize - PARENT);
  assert.notEqual(r.image, c, 'the child was reopened over the grown parent');
  await r.image.close();
  const p = await VhdxImage.open(psrc);
  assert.equal(p.size, newSize);
  assert.equal(await compareWith(p, model, 0, newSize), null);
  await p.close();
  const chainAfter = await openChain([csrc, psrc], { writable: [] });
  assert.equal(await compareWith(chainAfter, model, 0, newSize), null);
  await chainAfter.close();
  for (const src of [psrc, csrc]) assert.deepEqual(await checkInvariants(src), []);
});

test('by path: vhdx resize of a child, check, convert of the chain, libvhdi below the parent\'s end, NBD', { skip: needTool('qemu-io') }, async () => {
  const dir = scratch('vhdx-resize-diff-');
  const base = join(dir, 'base.vhdx');
  const child = join(dir, 'child.vhdx');
  assert.equal((await vhdx(['create', '-q', '-f', 'vhdx', base, '64M'])).code, 0);
  assert.equal((await vhdx(['io', '-q', '-c', 'write -P 0x5a 0 64M', base])).code, 0);
  assert.equal((await vhdx(['create', '-q', '-b', base, child])).code, 0);
  const grown = await vhdx(['resize', child, '96M']);
  assert.equal(grown.code, 0, grown.stderr);
  assert.equal((await vhdx(['io', '-q', '-c', 'write -P 0x22 80M 1M', child])).code, 0);
  const chk = await vhdx(['check', child]);
  assert.equal(chk.code, 0, chk.stdout + chk.stderr);
  const raw = join(dir, 'chain.raw');
  assert.equal((await vhdx(['convert', '-O', 'raw', child, raw])).code, 0);
  const b = readFileSync(raw);
  assert.equal(b.length, 96 * MiB);
  assert.ok(b.subarray(0, 64 * MiB).every((x) => x === 0x5a), 'the parent below its end');
  assert.ok(isZero(b.subarray(64 * MiB, 80 * MiB)) && isZero(b.subarray(81 * MiB)), 'zeros past it');
  assert.ok(b.subarray(80 * MiB, 81 * MiB).every((x) => x === 0x22), 'the child\'s own data past it');
  if (!(await needPyvhdi())) {
    const py = `import pyvhdi, sys, hashlib
c = pyvhdi.file(); c.open(sys.argv[1]); p = pyvhdi.file(); p.open(sys.argv[2]); c.set_parent(p)
print(c.get_media_size(), hashlib.sha256(c.read_buffer_at_offset(64 << 20, 0)).hexdigest(), c.read_buffer_at_offset(4096, 80 << 20) == b'"' * 4096)`;
    const [size, digest, own] = (await must(PYVHDI_PYTHON, ['-c', py, child, base])).trim().split(' ');
    assert.equal(Number(size), 96 * MiB);
    assert.equal(digest, (await import('node:crypto')).createHash('sha256').update(b.subarray(0, 64 * MiB)).digest('hex'));
    assert.equal(own, 'True');
  }
  const s = await startServe(['--socket', join(dir, 'nbd.sock'), '-r', child]);
  try {
    await must('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x5a 63M 1M', '-c', 'read -P 0 64M 16M', '-c', 'read -P 0x22 80M 1M', '-c', 'read -P 0 95M 1M', s.uri]);
  } finally {
    assert.equal((await s.stop()).code, 0);
  }
  // Commit grows the parent (qemu-img commit grows a smaller base the same way).
  const com = await vhdx(['commit', child]);
  assert.equal(com.code, 0, com.stderr);
  assert.match(com.stdout, /the parent grew by 32 MiB/);
  const flat = join(dir, 'base.raw');
  assert.equal((await vhdx(['convert', '-O', 'raw', base, flat])).code, 0);
  assert.ok(readFileSync(flat).equals(b), 'the parent holds what the chain showed');
});
