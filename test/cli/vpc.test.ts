// VHD (qemu's vpc) through the device layer's opener in every reading command: a fixed VHD is
// probed as vpc (never as raw, since its footer is at the end), `-f vhd` is `-f vpc`, map reads the
// BAT and bitmaps, check and convert read VHDs, and a differencing VHD on files finds its parent by
// the same parent policy as a VHDX (relative locator first, absolute only with --parents=any),
// with the parent's modification time accepted as its time stamp.
import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { NodeFileSource, VhdImage, createVhd, type CreateVhdOptions, type VhdParentPath } from '../../src/node.js';
import { shmScratch, vhdxInProcess, vhdxOk, type MapEntry } from '../helpers/tools.js';

const dir = shmScratch('vhdx-cli-vpc-');
const MiB = 1024 * 1024;

const ok = vhdxOk;

/** A new VHD file (fixed or dynamic), or a differencing one over `parent` (a path). */
type VhdFileOptions = (CreateVhdOptions & { parent?: undefined }) | { parent: string; parentPaths: VhdParentPath[] };

async function vhdFile(path: string, opts: VhdFileOptions): Promise<string> {
  const src = await NodeFileSource.open(path, { readOnly: false, create: true });
  try {
    if (typeof opts.parent === 'string') {
      const parent = await VhdImage.open(await NodeFileSource.open(opts.parent), { name: opts.parent });
      try {
        await createVhd(src, { parent, parentModifiedTime: statSync(opts.parent).mtimeMs, parentPaths: opts.parentPaths });
      } finally {
        await parent.close();
      }
    } else await createVhd(src, opts);
  } finally {
    await src.close();
  }
  return path;
}

test('a fixed VHD is probed as vpc, not raw; info describes its type, size rule, geometry and creator', async () => {
  const fixed = await vhdFile(join(dir, 'fixed.vhd'), { size: 4 * MiB, subformat: 'fixed' });
  const r = await ok(['info', fixed]);
  assert.equal(r.stderr, '', 'no raw warning');
  assert.match(r.stdout, /^file format: vpc$/m);
  assert.match(r.stdout, /^type: fixed$/m);
  assert.match(r.stdout, /^virtual size: 4 MiB \(4194304 bytes\)$/m);
  assert.match(r.stdout, /^size rule: current-size: /m);
  assert.match(r.stdout, /^geometry: \d+ cylinders, \d+ heads, \d+ sectors per track$/m);
  assert.match(r.stdout, /^creator: "vhdx" version 1\.0 on "Wi2k"$/m);
  const j = JSON.parse((await ok(['info', '--output=json', '-f', 'vhd', fixed])).stdout);
  assert.equal(j.format, 'vpc');
  assert.equal(j.virtualSize, 4 * MiB);
  assert.equal(j.fileSize, 4 * MiB + 512);
  assert.equal(j.http, undefined, 'no HTTP figures for a file');
  const bad = await vhdxInProcess(['info', '-f', 'qcow2', fixed]);
  assert.match(bad.stderr, /image format qcow2 is not supported \(raw, vhdx or vpc\)/);
});

test('a dynamic VHD: io writes it, map shows the BAT and bitmaps, check is clean, convert to raw and to VHDX keeps data and holes', async () => {
  const dyn = await vhdFile(join(dir, 'dyn.vhd'), { size: 8 * MiB, blockSize: MiB });
  await ok(['io', '-q', '-c', 'write -P 0x5a 1M 4k', '-c', 'write -P 0x33 5M 512', dyn]);
  const map = JSON.parse((await ok(['map', '--output=json', dyn])).stdout);
  // A write allocates its block (this writer marks the whole block's sectors in the bitmap).
  const data = map.filter((e: MapEntry) => e.data).map((e: MapEntry) => [e.start, e.length]);
  assert.deepEqual(data, [[MiB, MiB], [5 * MiB, MiB]]);
  assert.ok(map.some((e: MapEntry) => !e.present), 'unallocated blocks are holes');
  const check = await vhdxInProcess(['check', '--output=json', dyn]);
  assert.equal(check.code, 0, check.stderr);
  assert.equal(JSON.parse(check.stdout).format, 'vpc');
  assert.match((await ok(['check', dyn])).stdout, /No errors were found on the image\./);

  const raw = join(dir, 'dyn.raw');
  await ok(['convert', dyn, raw]);
  const bytes = readFileSync(raw);
  assert.equal(bytes.length, 8 * MiB);
  assert.ok(bytes.subarray(MiB, MiB + 4096).every((b) => b === 0x5a));
  assert.ok(bytes.subarray(5 * MiB, 5 * MiB + 512).every((b) => b === 0x33));
  assert.equal(bytes.subarray(0, MiB).some((b) => b !== 0), false);

  const vhdx = join(dir, 'dyn.vhdx');
  await ok(['convert', '-f', 'vpc', '-O', 'vhdx', '-o', 'block_size=1M', dyn, vhdx]);
  const vmap = JSON.parse((await ok(['map', '--output=json', vhdx])).stdout);
  for (const e of vmap.filter((x: MapEntry) => x.data)) assert.ok(e.start >= MiB && e.start + e.length <= 6 * MiB && !(e.start >= 2 * MiB && e.start < 5 * MiB), `data only where the VHD had blocks: ${JSON.stringify(e)}`);
  assert.ok(vmap.filter((e: MapEntry) => !e.present).reduce((n: number, e: MapEntry) => n + e.length, 0) >= 6 * MiB, 'holes stay holes');
  await ok(['io', '-r', '-q', '-c', 'read -P 0x5a 1M 4k', '-c', 'read -P 0 0 1M', vhdx]);
});

test('a differencing VHD on files finds its parent by the relative locator; absolute paths only with --parents=any', async () => {
  const base = await vhdFile(join(dir, 'base.vhd'), { size: 4 * MiB, blockSize: MiB });
  await ok(['io', '-q', '-c', 'write -P 0x11 0 1M', base]);
  mkdirSync(join(dir, 'kids'));
  const child = await vhdFile(join(dir, 'kids', 'child.vhd'), { parent: base, parentPaths: [{ platform: 'W2ru', path: '..\\base.vhd' }] });
  // The relative path leaves the child's folder: followed only with --parents=any.
  const refused = await vhdxInProcess(['io', '-r', '-c', 'read -P 0x11 0 1M', child]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /W2ru \.\.\\base\.vhd: not followed: it leaves the child's folder/);
  await ok(['io', '-r', '--parents=any', '-c', 'read -P 0x11 0 1M', child]);

  const near = await vhdFile(join(dir, 'near.vhd'), { parent: base, parentPaths: [{ platform: 'W2ru', path: '.\\base.vhd' }, { platform: 'W2ku', path: base }] });
  await ok(['io', '-q', '-c', 'write -P 0x22 1M 4k', near]);
  await ok(['io', '-r', '-q', '-c', 'read -P 0x11 0 1M', '-c', 'read -P 0x22 1M 4k', near]);
  const info = await ok(['info', '--backing-chain', near]);
  assert.match(info.stdout, /^type: differencing$/m);
  assert.match(info.stdout, /backing file \(depth 1\): .*base\.vhd, dynamic/);
  const absOnly = await vhdFile(join(dir, 'kids', 'abs.vhd'), { parent: base, parentPaths: [{ platform: 'W2ku', path: base }] });
  const r = await vhdxInProcess(['map', absOnly]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /W2ku \S+base\.vhd: not followed \(absolute parent paths are followed only with parents 'any'/);
  await ok(['map', '--parents=any', absOnly]);
});
