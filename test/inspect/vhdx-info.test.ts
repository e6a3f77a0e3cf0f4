// The inspect layer through VHDX images (made by our own convert and by qemu-img): the same
// partitions, filesystems and used map as the raw disk, and `vhdx info`'s partition fields and
// reclaimable bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { inspectDisk, usedRuns, describeContents, type BlockDevice, type Run, type VhdxError } from '../../src/index.js';
import { openFile } from '../../src/node.js';
import { needTool, run } from '../helpers/env.js';
import { shmScratch, vhdxInProcess } from '../helpers/tools.js';
import { fileDevice, MiB, patchFile, placeFile, sfdisk, sparseFile } from '../helpers/disk.js';

const dir = shmScratch('vhdx-inspect-vhdx-');
const SKIP = needTool('sfdisk', 'mkswap');

/**
 * A 64 MiB GPT disk: 1 swap partition (8 MiB at 1 MiB) with 2 MiB of random bytes in its free
 * part, 2 an unknown-type partition (4 MiB) with random bytes, and a partition left empty.
 */
function buildDisk(): string {
  const raw = join(dir, 'disk.raw');
  sparseFile(raw, 64 * MiB);
  sfdisk(raw, 'label: gpt\nsize=8M, type=swap, name="swap"\nsize=4M, type=linux\nsize=4M, type=linux\n');
  const swap = join(dir, 'swap.img');
  sparseFile(swap, 8 * MiB);
  run('mkswap', ['-q', '-L', 'sw', swap]);
  placeFile(raw, swap, MiB);
  patchFile(raw, 4 * MiB, randomBytes(2 * MiB)); // free swap pages
  patchFile(raw, 9 * MiB, randomBytes(MiB)); // partition 2, unknown contents
  return raw;
}

async function usedOf(dev: BlockDevice): Promise<Run[]> {
  const runs: Run[] = [];
  for await (const r of usedRuns(dev)) runs.push(r);
  return runs;
}

test('a GPT disk read through VHDX images made by vhdx convert and qemu-img gives the same table, filesystems and used map as the raw disk', { skip: SKIP }, async () => {
  const raw = buildDisk();
  const rawDev = await fileDevice(raw);
  const expected = await inspectDisk(rawDev);
  const expectedUsed = await usedOf(rawDev);
  await rawDev.close();
  assert.equal(expected.partitionScheme, 'gpt');
  assert.equal(expected.partitions[0]?.filesystem?.type, 'swap');
  assert.equal(expected.partitions[1]?.filesystem, null);
  // Used: everything but swap's pages after its header.
  assert.deepEqual(expectedUsed, [
    { start: 0, length: MiB + 4096 },
    { start: 9 * MiB, length: 55 * MiB },
  ]);
  const images: string[] = [];
  const ours = join(dir, 'ours.vhdx');
  assert.equal((await vhdxInProcess(['convert', '-O', 'vhdx', '-o', 'block_size=1M', raw, ours])).code, 0);
  images.push(ours);
  if (!needTool('qemu-img')) {
    const theirs = join(dir, 'qemu.vhdx');
    run('qemu-img', ['convert', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', raw, theirs]);
    images.push(theirs);
  }
  for (const path of images) {
    const img = await openFile(path);
    try {
      assert.deepEqual(await inspectDisk(img), expected, path);
      assert.deepEqual(await usedOf(img), expectedUsed, path);
      // Reclaimable: the 2 MiB of random bytes in free swap pages (blocks 4 and 5), nothing else
      // (the swap header's block and partition 2's block are used).
      const c = await describeContents(img, { blockSize: MiB, scanZeros: true });
      const rc = c.reclaimable;
      assert.ok(rc && rc.zeroBytes !== null, `${path}: reclaimable bytes computed, allocated blocks scanned for zeros`);
      assert.equal(rc.unusedBytes, 2 * MiB, path);
      assert.equal(c.reclaimableBytes, rc.unusedBytes + rc.zeroBytes);
    } finally {
      await img.close();
    }
  }
});

test('vhdx info --output=json: partitionScheme, partitions with filesystems, reclaimableBytes; human output lists them', { skip: SKIP }, async () => {
  const raw = buildDisk();
  const path = join(dir, 'info.vhdx');
  assert.equal((await vhdxInProcess(['convert', '-O', 'vhdx', '-o', 'block_size=1M', raw, path])).code, 0);
  const r = await vhdxInProcess(['info', '--output=json', path]);
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.equal(info.partitionScheme, 'gpt');
  assert.deepEqual(
    info.partitions.map((p: { index: number; start: number; length: number; type: string; name: string | null }) => [p.index, p.start, p.length, p.type, p.name]),
    [
      [1, MiB, 8 * MiB, '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f', 'swap'],
      [2, 9 * MiB, 4 * MiB, '0fc63daf-8483-4772-8e79-3d69d8477de4', null],
      [3, 13 * MiB, 4 * MiB, '0fc63daf-8483-4772-8e79-3d69d8477de4', null],
    ],
  );
  const fs = info.partitions[0].filesystem;
  assert.deepEqual([fs.type, fs.label, fs.state, fs.usedBytes, fs.freeBytes, fs.trusted], ['swap', 'sw', 'clean', 4096, 8 * MiB - 4096, true]);
  assert.equal(typeof fs.uuid, 'string');
  assert.equal(info.partitions[1].filesystem, null);
  // The image is small: its allocated blocks were read for zeros too.
  assert.equal(info.reclaimable.unusedBytes, 2 * MiB);
  assert.equal(typeof info.reclaimable.zeroBytes, 'number');
  assert.equal(info.reclaimableBytes, info.reclaimable.unusedBytes + info.reclaimable.zeroBytes);
  const never = JSON.parse((await vhdxInProcess(['info', '--output=json', '--allocation=never', path])).stdout);
  assert.equal(never.reclaimableBytes, null);
  assert.equal(never.partitionScheme, 'gpt');
  const human = await vhdxInProcess(['info', path]);
  assert.match(human.stdout, /partition table: gpt/);
  assert.match(human.stdout, /filesystem: swap, label "sw"/);
  assert.match(human.stdout, /reclaimable: 2 MiB/);
});

test('used map honours an aborted signal (ECANCELED) and reports progress up to the disk size', { skip: SKIP }, async () => {
  const raw = buildDisk();
  const dev = await fileDevice(raw);
  const seen: [number, number][] = [];
  for await (const _ of usedRuns(dev, { onProgress: (d, t) => seen.push([d, t]) }));
  assert.deepEqual(seen[seen.length - 1], [64 * MiB, 64 * MiB]);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(async () => {
    for await (const _ of usedRuns(dev, { signal: ac.signal }));
  }, (e: VhdxError) => e.code === 'ECANCELED' && e.reason === 'ABORTED');
  await dev.close();
});

test('vhdx info: ext usage from the group descriptors by default, the same bytes as from the bitmaps with --allocation=always', { skip: needTool('sfdisk', 'mke2fs') }, async () => {
  // A 256 MiB disk, ext4 of 200 MiB with 1 KiB blocks (25 groups of 8 MiB) in a GPT partition, 3 MiB of files.
  const raw = join(dir, 'ext.raw');
  sparseFile(raw, 256 * MiB);
  sfdisk(raw, 'label: gpt\nstart=2048, type=linux\n');
  const files = join(dir, 'ext-files');
  mkdirSync(files, { recursive: true });
  writeFileSync(join(files, 'r.bin'), randomBytes(3 * MiB));
  run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '1024', '-d', files, '-E', `offset=${MiB}`, raw, `${200 * 1024}k`]);
  const path = join(dir, 'ext.vhdx');
  assert.equal((await vhdxInProcess(['convert', '-O', 'vhdx', '-o', 'block_size=1M', raw, path])).code, 0);
  const cheap = JSON.parse((await vhdxInProcess(['info', '--output=json', path])).stdout);
  const exact = JSON.parse((await vhdxInProcess(['info', '--output=json', '--allocation=always', path])).stdout);
  /** The part of `vhdx info --output=json` read here. */
  type Info = { partitions: { filesystem: { type: string; trusted: boolean; untrustedReason?: string; usedBytes: number; freeBytes: number } }[] };
  const fs = (i: Info) => i.partitions[0]!.filesystem;
  assert.equal(fs(cheap).type, 'ext4');
  assert.equal(fs(cheap).trusted, true, fs(cheap).untrustedReason);
  assert.deepEqual([fs(cheap).usedBytes, fs(cheap).freeBytes], [fs(exact).usedBytes, fs(exact).freeBytes]);
  assert.equal(cheap.usedBytes, exact.usedBytes);
  // The coarse map frees less or the same, never more.
  assert.ok(cheap.reclaimable.unusedBytes <= exact.reclaimable.unusedBytes);
});
