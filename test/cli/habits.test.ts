// The habits qemu-img users bring (issue 12), one test per finding of the new-user trial: disk
// size and --backing-chain in info, -f everywhere, no silent raw guesses (and no damaged VHDX
// served as raw: issue 11 item 7), commit -d as in qemu-img, one fragmentation figure, a progress
// bar right on tiny and empty copies, Formatting before the work, missing folders named, errors
// naming their file, the missing-parent error on short lines, and traces that point at src/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { shmScratch, vhdx, vhdxInProcess, vhdxOk, type MapEntry } from '../helpers/tools.js';

const dir = shmScratch('vhdx-cli-habits-');
const MiB = 1024 * 1024;

const ok = vhdxOk;

async function image(name: string, size = '16M', ...writes: string[]): Promise<string> {
  const path = join(dir, name);
  await ok(['create', '-q', '-o', 'block_size=1M', path, size]);
  if (writes.length) await ok(['io', '-q', ...writes.flatMap((w) => ['-c', w]), path]);
  return path;
}

test('info: disk size as du counts it beside the file size; JSON filename and actualSize; -f raw as qemu-img info', async () => {
  const path = await image('du.vhdx', '64G', 'write 0 64k');
  const human = (await ok(['info', path])).stdout;
  const blocks = statSync(path).blocks * 512;
  assert.match(human, new RegExp(`^file size: .*\\n^disk size: `, 'm'));
  const j = JSON.parse((await ok(['info', '--output=json', path])).stdout);
  assert.equal(j.filename, path);
  assert.equal(j.actualSize, blocks);
  assert.ok(j.actualSize < j.fileSize / 4, `a sparse new image takes less than its size (${j.actualSize} of ${j.fileSize})`);
  assert.deepEqual(Object.keys(j).slice(0, 6), ['filename', 'format', 'type', 'virtualSize', 'fileSize', 'actualSize']);
  const raw = JSON.parse((await ok(['info', '-f', 'raw', '--output=json', path])).stdout);
  assert.deepEqual(raw, { filename: path, format: 'raw', virtualSize: j.fileSize, fileSize: j.fileSize, actualSize: blocks });
  assert.match((await ok(['info', '-f', 'raw', path])).stdout, /^file format: raw$/m);
});

test('info --backing-chain describes every level in turn; JSON is an array', async () => {
  const base = await image('chain-base.vhdx', '8M', 'write 0 4k');
  const mid = join(dir, 'chain-mid.vhdx');
  const top = join(dir, 'chain-top.vhdx');
  await ok(['create', '-q', '-b', base, mid]);
  await ok(['create', '-q', '-b', mid, top]);
  const human = (await ok(['info', '--backing-chain', top])).stdout;
  assert.deepEqual([...human.matchAll(/^image: (.*)$/gm)].map((m) => m[1]), [top, mid, base]);
  const j = JSON.parse((await ok(['info', '--backing-chain', '--output=json', top])).stdout);
  assert.ok(Array.isArray(j));
  assert.deepEqual(j.map((i) => [i.filename, i.type]), [[top, 'differencing'], [mid, 'differencing'], [base, 'dynamic']]);
  assert.ok(j.every((i) => typeof i.actualSize === 'number'));
});

test('-f is accepted by info, map, check, io, create, commit and rebase; unsupported formats are refused by name', async () => {
  const path = await image('fmt.vhdx', '4M', 'write -P 0x11 0 4k');
  for (const cmd of [['info'], ['map'], ['check']]) await ok([...cmd, '-f', 'vhdx', path]);
  const map = JSON.parse((await ok(['map', '-f', 'raw', '--output=json', path])).stdout);
  assert.deepEqual(map, [{ start: 0, length: statSync(path).size, depth: 0, present: true, zero: false, data: true, offset: 0 }]);
  const check = await vhdxInProcess(['check', '-f', 'raw', path]);
  assert.equal(check.code, 63, 'raw images cannot be checked (qemu-img check exits 63 too)');
  assert.match(check.stderr, /raw images cannot be checked/);
  const raw = join(dir, 'plain.raw');
  writeFileSync(raw, Buffer.alloc(MiB));
  await ok(['io', '-q', '-f', 'raw', '-c', 'write -P 0x42 4096 512', raw]);
  assert.equal(readFileSync(raw)[4096], 0x42, 'io -f raw writes the file itself');
  for (const args of [['io', '-f', 'qcow2', '-c', 'flush', path], ['commit', '-f', 'raw', path], ['rebase', '-f', 'raw', '-u', '-b', path, path], ['create', '-f', 'raw', join(dir, 'x'), '1M']]) {
    const r = await vhdxInProcess(args);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /format (qcow2|raw) is not supported/, args.join(' '));
  }
});

test('no silent guesses: a probed raw file warns, an empty file is refused, a damaged VHDX is refused by convert and serve', async () => {
  const text = join(dir, 'notes.txt');
  writeFileSync(text, 'not a disk\n');
  const probed = await vhdxInProcess(['convert', text, join(dir, 'notes.raw')]);
  assert.equal(probed.code, 0);
  assert.equal(probed.stderr, `vhdx: warning: ${text} was probed as raw; use -f raw to silence this\n`);
  assert.equal((await vhdxInProcess(['convert', '-f', 'raw', text, join(dir, 'notes2.raw')])).stderr, '', '-f raw silences it');

  const empty = join(dir, 'empty');
  writeFileSync(empty, '');
  for (const args of [['convert', empty, join(dir, 'empty.raw')], ['serve', '--socket', join(dir, 'empty.sock'), empty], ['info', empty]]) {
    const r = await vhdx(args);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, /is empty: it is not a disk image/);
  }
  assert.equal(existsSync(join(dir, 'empty.raw')), false);

  // A VHDX whose identifier was overwritten still has its headers and region tables.
  const damaged = await image('damaged.vhdx', '4M', 'write -P 0x33 0 4k');
  const bytes = readFileSync(damaged);
  bytes.fill(0, 0, 8);
  writeFileSync(damaged, bytes);
  for (const args of [['convert', damaged, join(dir, 'damaged.raw')], ['serve', '--socket', join(dir, 'damaged.sock'), damaged], ['map', damaged]]) {
    const r = await vhdx(args);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, /looks like a damaged VHDX .*not taken as raw/);
  }
  assert.ok(readFileSync(damaged).equals(bytes), 'nothing was written to it');
  // A valid header alone, or a region table alone, is enough to recognise it.
  for (const [from, to] of [[64 * 1024, 192 * 1024], [0, 192 * 1024], [192 * 1024, 320 * 1024]]) {
    const part = Buffer.from(bytes);
    part.fill(0, from, to);
    writeFileSync(damaged, part);
    assert.match((await vhdxInProcess(['convert', damaged, join(dir, 'damaged.raw')])).stderr, /looks like a damaged VHDX/);
  }
  await ok(['convert', '-f', 'raw', damaged, join(dir, 'damaged.raw')]);
});

test('commit -d keeps the child as it is (as qemu-img); --remove deletes it; both together are refused', async () => {
  const parent = await image('cp.vhdx', '4M');
  const child = join(dir, 'cc.vhdx');
  await ok(['create', '-q', '-b', parent, child]);
  await ok(['io', '-q', '-c', 'write -P 0x61 1M 64k', child]);
  assert.match((await ok(['commit', '-d', child])).stdout, /the child keeps its data\.$/m);
  const map = JSON.parse((await ok(['map', '--output=json', child])).stdout);
  assert.ok(map.some((e: MapEntry) => e.depth === 0 && e.data && e.start <= MiB && e.start + e.length >= MiB + 65536), 'the child still holds its data');
  await ok(['io', '-q', '-r', '-c', 'read -P 0x61 1M 64k', child]);
  await ok(['io', '-q', '-r', '-c', 'read -P 0x61 1M 64k', parent]);
  assert.equal((await vhdxInProcess(['commit', '-d', '--remove', child])).code, 1);
  assert.match((await ok(['commit', '--remove', child])).stdout, /the child was removed/);
  assert.equal(existsSync(child), false);
});

test('info and check report the same fragmentation percentage', async () => {
  const path = await image('frag.vhdx', '32M', ...[5, 1, 3, 0, 2, 9, 10].map((b) => `write ${b}M 4k`));
  const info = JSON.parse((await ok(['info', '--output=json', path])).stdout);
  const check = JSON.parse((await ok(['check', '--output=json', path])).stdout);
  assert.equal(info.fragmentationPercentage, 83.33, '5 of the 6 blocks after the first are out of place');
  assert.equal(check.fragmentationPercentage, info.fragmentationPercentage);
  assert.match((await ok(['check', path])).stdout, /, 83\.33% fragmented,/);
  assert.match((await ok(['info', path])).stdout, /^fragmentation: 83\.33%$/m);
});

test('the progress bar ends at 100% on tiny and empty copies, with no NaN or infinite ETA', async () => {
  const tiny = join(dir, 'tiny.raw');
  writeFileSync(tiny, Buffer.alloc(5000, 1));
  const empty = join(dir, 'empty0.raw');
  writeFileSync(empty, '');
  for (const src of [tiny, empty]) {
    const r = await vhdx(['convert', '-p', '-f', 'raw', src, `${src}.out`]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.trim().split('\n').filter((l: string) => l.trim() !== '');
    assert.match(lines.at(-1)!, /^converting \[=+\] 100% \| /, r.stderr);
    assert.doesNotMatch(r.stderr, /NaN|NF|INF|Infinity/);
  }
});

test('create prints Formatting before the work (so it is there even when the work fails)', async () => {
  const path = join(dir, 'taken.vhdx');
  writeFileSync(path, 'keep');
  const r = await vhdxInProcess(['create', path, '1G']);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^Formatting '.*taken\.vhdx', fmt=vhdx size=1073741824 /);
  assert.match(r.stderr, /already exists/);
});

test('a missing directory is named as such: create, convert output, serve --socket', async () => {
  const src = await image('src-for-missing.vhdx', '1M');
  const cases: [string[], string][] = [
    [['create', '/missing/dir/x.vhdx', '1M'], 'image /missing/dir/x.vhdx'],
    [['convert', src, '/missing/dir/x.raw'], 'output /missing/dir/x.raw'],
    [['serve', '--socket', '/missing/dir/s', src], 'socket /missing/dir/s'],
  ];
  for (const [args, what] of cases) {
    const r = await vhdx(args);
    assert.equal(r.code, 1, args.join(' '));
    assert.equal(r.stderr, `vhdx: cannot create ${what}: the directory /missing/dir does not exist\n`);
  }
});

test('errors about a file name it', async () => {
  const path = await image('named.vhdx', '4M');
  const pattern = await vhdxInProcess(['io', '-c', 'read -P 1 0 4k', path]);
  assert.match(pattern.stderr, new RegExp(`^vhdx: ${path}: pattern verification failed`));
  const broken = join(dir, 'broken.vhdx');
  const bytes = readFileSync(path);
  bytes.fill(0, 64 * 1024, 192 * 1024); // both headers gone; the identifier stays
  writeFileSync(broken, bytes);
  for (const cmd of ['info', 'map', 'convert']) {
    const r = await vhdxInProcess(cmd === 'convert' ? [cmd, broken, join(dir, 'b.raw')] : [cmd, broken]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^vhdx: ${broken}: neither header`), cmd);
  }
});

test('a missing parent: a short first line, then the paths tried, one per line, printed as paths', async () => {
  const base = await image('mp-base.vhdx', '4M');
  const child = join(dir, 'mp-child.vhdx');
  await ok(['create', '-q', '-b', base, child]);
  renameSync(base, join(dir, 'mp-base-moved.vhdx'));
  const r = await vhdx(['map', '--parents=any', child]);
  assert.equal(r.code, 1);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines[0], `vhdx: cannot open the parent of ${child}: paths tried:`);
  assert.equal(lines[1], `vhdx:   relative_path .\\mp-base.vhdx -> ${base}: not found`, 'the locator value as stored (one backslash), then the host path');
  assert.equal(lines[2], `vhdx:   absolute_win32_path ${base}: not found`);
  assert.equal(lines.length, 3);
});

test('VHDX_DEBUG=1 stack traces point at the TypeScript sources', async () => {
  const r = await vhdx(['info', join(dir, 'no-such-file.vhdx')], { env: { ...process.env, VHDX_DEBUG: '1' } });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /\bat .*src\/[a-z/-]+\.ts:\d+:\d+/);
  assert.doesNotMatch(r.stderr, /vhdx-cli\.cjs:\d+/);
});
