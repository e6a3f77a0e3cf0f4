// `vhdx convert -O vhdx`: raw -> vhdx and vhdx -> vhdx (re-blocked) pass qemu-img compare
// against their source and stay sparse (zero ranges unallocated); the input format is probed;
// 4 KiB-sector output reads back through pyvhdi; DST handling and option errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openFile } from '../../src/node.js';
import { needTool } from '../helpers/env.js';
import { must, needPyvhdi, pyvhdiDigest, shmScratch, sparseRaw, vhdx, vhdxInProcess } from '../helpers/tools.js';

const K = 1024;
const M = K * K;
const dir = shmScratch('vhdx-cli-convert-');
const qemuMissing = needTool('qemu-img', 'qemu-io');

/** A sparse raw file in this test's folder (test/helpers/tools.ts: sparseRaw). */
const makeRaw = (name: string, size: number, places: [number, Uint8Array][], zeroRun?: [number, number]): string => sparseRaw(dir, name, size, places, zeroRun);

/** Payload block indexes our block status reports as data. */
async function dataBlocks(path: string) {
  const img = await openFile(path);
  try {
    const out: number[] = [];
    for (const e of await img.blockStatus(0, img.size)) {
      if (e.type !== 'data') continue;
      for (let b = Math.floor(e.offset / img.blockSize); b * img.blockSize < e.offset + e.length; b++) out.push(b);
    }
    return { blocks: out, img: { size: img.size, blockSize: img.blockSize, type: img.type, logical: img.logicalSectorSize } };
  } finally {
    await img.close();
  }
}

/** Blocks of `blockSize` that hold any of the places' bytes. */
function expectedBlocks(places: readonly (readonly [number, { length: number }])[], blockSize: number): number[] {
  const s = new Set<number>();
  for (const [at, bytes] of places) for (let b = Math.floor(at / blockSize); b * blockSize < at + bytes.length; b++) s.add(b);
  return [...s].sort((a, b) => a - b);
}

const SIZE = 100 * M + 1000; // not a multiple of 512: the image is rounded up to 100 MiB + 1024
const PLACES: [number, Uint8Array][] = [
  [5000, Buffer.from('hello')],
  [40 * M - 100, randomBytes(3 * M)],
  [70 * M + 64 * K, Buffer.alloc(64 * K, 0x5a)],
  [SIZE - 1000, randomBytes(1000)],
];

test('raw -> vhdx: qemu-img compare equal, zero ranges unallocated, size rounded to the sector', { skip: needTool('qemu-img') }, async (t) => {
  const raw = makeRaw('src.raw', SIZE, PLACES, [20 * M, 2 * M]);
  const layouts: [string, string[], number][] = [
    ['default options', [], 32 * M],
    ['block_size=1M', ['-o', 'block_size=1M'], M],
    ['block_size=4M, a larger log, -f raw', ['-f', 'raw', '-o', 'block_size=4M', '-o', 'log_size=2M'], 4 * M],
  ];
  for (const [name, opts, bs] of layouts) {
    await t.test(name, async () => {
      const out = join(dir, `raw-${bs}.vhdx`);
      const r = await vhdxInProcess(['convert', '-O', 'vhdx', ...opts, raw, out]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', raw, out]), /identical/);
      assert.match(await must('qemu-img', ['check', '-f', 'vhdx', out]), /No errors/);
      const { blocks, img } = await dataBlocks(out);
      assert.equal(img.size, 100 * M + 1024);
      assert.equal(img.blockSize, bs);
      assert.equal(img.type, 'dynamic');
      assert.deepEqual(blocks, expectedBlocks(PLACES, bs), 'only blocks holding data are allocated');
      assert.ok(statSync(out).size < 12 * M + 4 * bs, `the image stays small: ${statSync(out).size}`);
    });
  }
});

test('vhdx -> vhdx re-blocks: qemu-made 1 MiB blocks into 8 MiB and 32 MiB, and back to 1 MiB', { skip: qemuMissing }, async () => {
  const src = join(dir, 'q.vhdx');
  const size = 200 * M;
  await must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', src, String(size)]);
  const places: [number, number, number][] = [
    [0, 4096, 0x11],
    [9 * M - 512, 1024, 0x22],
    [64 * M, 5 * M, 0x33],
    [size - 512, 512, 0x44],
  ];
  await must('qemu-io', ['-f', 'vhdx', ...places.flatMap(([at, len, p]) => ['-c', `write -P ${p} ${at} ${len}`]), '-c', `write -z ${65 * M} ${M}`, src]);
  const asBytes = places.map(([at, len]): [number, { length: number }] => [at, { length: len }]);
  asBytes[2] = [64 * M, { length: M }]; // block 65 was zeroed again
  asBytes.splice(3, 0, [66 * M, { length: 3 * M }]);
  let from = src;
  for (const bs of [8 * M, 32 * M, M]) {
    const out = join(dir, `reblock-${bs}.vhdx`);
    const r = await vhdxInProcess(['convert', '-O', 'vhdx', '-o', `block_size=${bs}`, from, out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(await must('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', src, out]), /identical/);
    assert.match(await must('qemu-img', ['check', '-f', 'vhdx', out]), /No errors/);
    const { blocks, img } = await dataBlocks(out);
    assert.equal(img.blockSize, bs);
    assert.deepEqual(blocks, expectedBlocks(asBytes, bs), `allocated blocks at ${bs / M} MiB`);
    from = out; // the next step converts our own output
  }
});

test('fixed output, and -p progress', { skip: needTool('qemu-img') }, async () => {
  const raw = makeRaw('fixed-src.raw', 12 * M, [[3 * M, randomBytes(100)]]);
  const out = join(dir, 'fixed.vhdx');
  const r = await vhdx(['convert', '-p', '-O', 'vhdx', '-o', 'subformat=fixed,block_size=2M', raw, out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /converting .*100%/);
  assert.match(await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', raw, out]), /identical/);
  const { blocks, img } = await dataBlocks(out);
  assert.equal(img.type, 'fixed');
  assert.deepEqual(blocks, [0, 1, 2, 3, 4, 5]);
  const st = statSync(out);
  assert.ok(st.blocks * 512 >= st.size, 'fixed output is allocated');
});

test('4 KiB logical sectors: raw -> vhdx reads back through pyvhdi; vhdx -> vhdx keeps the sector size', async (t) => {
  const skip = await needPyvhdi();
  if (skip) return t.skip(skip);
  const size = 9 * M + 100; // rounded up to 9 MiB + 4096
  const raw = makeRaw('s4k.raw', size, [[4096 * 3 + 1, randomBytes(9000)], [size - 100, randomBytes(100)]]);
  const out = join(dir, 's4k.vhdx');
  const r = await vhdxInProcess(['convert', '-O', 'vhdx', '-o', 'logical_sector_size=4096,block_size=1M', raw, out]);
  assert.equal(r.code, 0, r.stderr);
  const padded = Buffer.concat([readFileSync(raw), Buffer.alloc(9 * M + 4096 - size)]);
  const got = await pyvhdiDigest(out);
  assert.equal(got.size, 9 * M + 4096);
  assert.equal(got.sha256, createHash('sha256').update(padded).digest('hex'));
  const again = join(dir, 's4k-again.vhdx');
  assert.equal((await vhdxInProcess(['convert', '-O', 'vhdx', out, again])).code, 0);
  const { img } = await dataBlocks(again);
  assert.equal(img.logical, 4096, 'the source sector size is kept');
  assert.equal((await pyvhdiDigest(again)).sha256, got.sha256);
});

test('the input format is probed; -f raw reads an image file as bytes', async () => {
  const img = join(dir, 'probe.vhdx');
  assert.equal((await vhdxInProcess(['create', '-q', '-o', 'block_size=1M', img, '4M'])).code, 0);
  assert.equal((await vhdxInProcess(['io', '-q', '-c', 'write -P 0x77 1M 4k', img])).code, 0);
  const viaProbe = join(dir, 'probe.raw');
  assert.equal((await vhdxInProcess(['convert', img, viaProbe])).code, 0);
  const b = readFileSync(viaProbe);
  assert.equal(b.length, 4 * M);
  assert.ok(b.subarray(M, M + 4096).every((x) => x === 0x77) && b[M - 1] === 0 && b[M + 4096] === 0);
  const asRaw = join(dir, 'bytes.raw');
  assert.equal((await vhdxInProcess(['convert', '-f', 'raw', img, asRaw])).code, 0);
  assert.ok(readFileSync(asRaw).equals(readFileSync(img)), '-f raw copies the file itself');
});

test('DST is replaced; same file, -o without -O vhdx and bad options are refused', async () => {
  const raw = makeRaw('small.raw', M, [[0, Buffer.from('abc')]]);
  const out = join(dir, 'replaced.vhdx');
  writeFileSync(out, 'old content');
  assert.equal((await vhdxInProcess(['convert', '-O', 'vhdx', raw, out])).code, 0);
  assert.equal((await dataBlocks(out)).img.size, M);
  const cases: [string[], RegExp][] = [
    [['convert', '-O', 'vhdx', raw, raw], /SRC and DST are the same file/],
    [['convert', '-o', 'block_size=1M', raw, join(dir, 'x.raw')], /-o options apply to -O vhdx and -O vpc only/],
    [['convert', '-O', 'qcow2', raw, join(dir, 'x.qcow2')], /output format qcow2 is not supported/],
    [['convert', '-f', 'vmdk', raw, join(dir, 'x.raw')], /source format vmdk is not supported/],
    [['convert', '-O', 'vhdx', '-o', 'block_size=3M', raw, join(dir, 'bad.vhdx')], /block size 3 MiB/],
    [['convert', '-O', 'vhdx', '-o', 'logical_sector_size=4096,physical_sector_size=512', raw, join(dir, 'bad2.vhdx')], /smaller than the logical/],
    [['convert', '-f', 'raw', '-O', 'vhdx', makeRaw('empty.raw', 0, []), join(dir, 'bad3.vhdx')], /the source is empty/],
  ];
  for (const [args, message] of cases) {
    const r = await vhdxInProcess(args);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, message);
  }
  assert.equal(existsSync(join(dir, 'bad.vhdx')), false);
  assert.equal(existsSync(join(dir, 'bad2.vhdx')), false);
  assert.equal(existsSync(join(dir, 'bad3.vhdx')), false);
  assert.equal(readFileSync(raw).subarray(0, 3).toString(), 'abc', 'the source is untouched');
});
