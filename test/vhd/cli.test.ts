// The CLI's VHD output (`create -f vpc`, `convert -O vpc`, `-o azure=on|round`) and `check --azure`:
// qemu-img (-f vpc) finds our converts identical to their source, libvhdi/pyvhdi and 7-Zip read
// them to the same bytes and size, holes stay holes, an Azure disk is read at exactly its whole-MiB
// size by every reader, and refusals change nothing on disk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NodeFileSource } from '../../src/node.js';
import { VhdImage, azureProblems, checkVhd, type AzureProblem } from '../../src/index.js';
import { needTool } from '../helpers/env.js';
import { must, needPyvhdi, pyvhdiDigest, shmScratch, sparseRaw, vhdxInProcess as vhdx } from '../helpers/tools.js';
import { pattern } from '../helpers/model.js';
import { KiB, MiB, patchFooter } from '../helpers/vhd.js';

const dir = shmScratch('vhd-cli-');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function ok(args: string[]) {
  const r = await vhdx(args);
  assert.equal(r.code, 0, `vhdx ${args.join(' ')}: ${r.stderr}`);
  return r;
}

async function openVhd(path: string): Promise<VhdImage> {
  return VhdImage.open(await NodeFileSource.open(path));
}

/** Size and SHA-256 of the disk as we read it, and the 2 MiB blocks holding data. */
async function ours(path: string) {
  const img = await openVhd(path);
  try {
    const b = new Uint8Array(img.size);
    await img.read(0, b);
    const blocks = new Set<number>();
    for (const e of await img.blockStatus(0, img.size)) {
      if (e.type !== 'data') continue;
      for (let o = e.offset; o < e.offset + e.length; o += 2 * MiB) blocks.add(Math.floor(o / (2 * MiB)));
    }
    return { size: img.size, sha256: sha(b), blocks: [...blocks].sort((x, y) => x - y), type: img.type, footer: img.footer };
  } finally {
    await img.close();
  }
}

const makeRaw = (name: string, size: number, places: [number, Uint8Array][], zeroRun?: [number, number]) => sparseRaw(dir, name, size, places, zeroRun);

/** A dynamic VHDX of 20 MiB with data in 2 MiB blocks 0, 1 and 7 (of a VHD), the rest holes. */
async function sourceVhdx(name: string): Promise<string> {
  const path = join(dir, name);
  await ok(['create', '-q', '-o', 'block_size=1M', path, '20M']);
  await ok(['io', '-q', '-c', 'write -P 0x5a 1M 3M', '-c', 'write -P 0x33 15M 100k', '-c', 'write -z 8M 1M', path]);
  return path;
}

const rawDigest = (path: string) => {
  const b = readFileSync(path);
  return { size: b.length, sha256: sha(b) };
};

async function sevenZip(path: string) {
  const out = join(dir, `7z-${Math.random().toString(36).slice(2)}`);
  await must('7zz', ['x', '-y', `-o${out}`, path]);
  const name = readdirSync(out)[0]!;
  return rawDigest(join(out, name));
}

test('create -f vpc makes fixed and dynamic VHDs of exactly SIZE that qemu-img and our check accept; vhd is the same name', { skip: needTool('qemu-img') }, async () => {
  const made: [string, string, '100M' | '12M' | '1000K'][] = [['vpc', 'dynamic', '100M'], ['vhd', 'fixed', '12M'], ['vpc', 'dynamic', '1000K']];
  for (const [fmt, subformat, size] of made) {
    const path = join(dir, `new-${subformat}-${size}.vhd`);
    const r = await ok(['create', '-f', fmt, '-o', `subformat=${subformat}`, path, size]);
    assert.match(r.stdout, new RegExp(`^Formatting '.*', fmt=vpc size=\\d+ subformat=${subformat}`));
    const info = JSON.parse(await must('qemu-img', ['info', '-f', 'vpc', '--output=json', path]));
    const bytes = { '100M': 100 * MiB, '12M': 12 * MiB, '1000K': 1000 * KiB }[size];
    assert.equal(info['virtual-size'], bytes, 'not rounded to a CHS geometry');
    const o = await ours(path);
    assert.equal(o.type, subformat);
    assert.equal(o.size, bytes);
    const c = await checkVhd(await NodeFileSource.open(path));
    assert.equal(c.corruptions + c.leaks, 0);
  }
  const dyn = join(dir, 'new-bs.vhd');
  await ok(['create', '-q', '-f', 'vpc', '-o', 'block_size=512K', dyn, '3M']);
  assert.equal(statSync(dyn).size, 512 + 1024 + 512 + 512, 'footer copy, header, BAT of 6 entries in one sector, footer');
  assert.equal((await openVhd(dyn)).blockSize, 512 * KiB);
});

test('create -f vpc refuses bad options, an existing file and -b, and makes no file then', async () => {
  const existing = join(dir, 'exists.vhd');
  writeFileSync(existing, 'keep');
  const refusals: [string[], RegExp][] = [
    [['-o', 'block_size=3M'], /block size 3145728 is not a power of two/],
    [['-o', 'log_size=1M'], /unknown vpc option 'log_size'/],
    [['-o', 'azure=on'], /azure is a convert option/],
    [['-o', 'subformat=sparse'], /subformat must be dynamic or fixed/],
  ];
  for (const [args, message] of refusals) {
    const path = join(dir, 'refused.vhd');
    const r = await vhdx(['create', '-f', 'vpc', ...args, path, '10M']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, message);
    assert.equal(existsSync(path), false, `${args.join(' ')} made no file`);
  }
  const odd = await vhdx(['create', '-f', 'vpc', join(dir, 'odd.vhd'), '1000']);
  assert.match(odd.stderr, /not a positive multiple of 512/);
  const b = await vhdx(['create', '-f', 'vpc', '-b', existing, join(dir, 'child.vhd')]);
  assert.match(b.stderr, /-b is for -f vhdx/);
  const again = await vhdx(['create', '-f', 'vpc', existing, '10M']);
  assert.match(again.stderr, /already exists/);
  assert.equal(readFileSync(existing, 'utf8'), 'keep');
  assert.match((await ok(['create', '-f', 'vpc', '-o', 'help'])).stdout, /azure=on\|round\|off/);
});

test('convert -O vpc from a VHDX: qemu-img compare finds both types identical, holes stay holes', { skip: needTool('qemu-img') }, async () => {
  const src = await sourceVhdx('src.vhdx');
  for (const subformat of ['dynamic', 'fixed']) {
    const dst = join(dir, `from-vhdx-${subformat}.vhd`);
    await ok(['convert', '-O', 'vpc', '-o', `subformat=${subformat}`, src, dst]);
    await must('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vpc', src, dst]);
    const o = await ours(dst);
    assert.equal(o.size, 20 * MiB);
    assert.equal(o.type, subformat);
    if (subformat === 'dynamic') {
      assert.deepEqual(o.blocks, [0, 1, 7], 'only blocks with data are allocated (the written zeros at 8M are not)');
      assert.equal(statSync(dst).size, 512 + 1024 + 512 + 3 * (2 * MiB + 512) + 512);
    } else {
      assert.ok(statSync(dst).blocks * 512 < 5 * MiB, 'the fixed VHD is sparse where the source has holes');
    }
  }
});

test('convert -O vpc from raw keeps holes, and pads an odd size to 512 bytes', { skip: needTool('qemu-img') }, async () => {
  const raw = makeRaw('src.raw', 9 * MiB + 100, [[5 * MiB, pattern(1, 64 * KiB)], [9 * MiB, pattern(2, 100)]], [1 * MiB, MiB]);
  const dst = join(dir, 'from-raw.vhd');
  await ok(['convert', '-f', 'raw', '-O', 'vhd', raw, dst]);
  const o = await ours(dst);
  assert.equal(o.size, 9 * MiB + 512);
  assert.deepEqual(o.blocks, [2, 4]);
  await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, dst]);
});

test('convert -O vpc -o azure=on makes a fixed VHD that qemu-img, libvhdi, pyvhdi, 7-Zip and check --azure take at exactly its size', { skip: needTool('qemu-img', 'vhdiinfo', '7zz') }, async (t) => {
  // 10 MiB is not CHS-exact: the specification's geometry gives 10 MiB − 6 KiB, which qemu 7.2
  // would read for any creator outside its Current Size list.
  const raw = makeRaw('azure.raw', 10 * MiB, [[0, pattern(3, 300 * KiB)], [10 * MiB - 4096, pattern(4, 4096)]]);
  const dst = join(dir, 'azure.vhd');
  await ok(['convert', '-f', 'raw', '-O', 'vpc', '-o', 'azure=on', raw, dst]);
  assert.equal(statSync(dst).size, 10 * MiB + 512);
  const want = rawDigest(raw);
  const o = await ours(dst);
  assert.deepEqual({ size: o.size, sha256: o.sha256 }, want);
  assert.equal(o.type, 'fixed');
  assert.equal(o.footer.creatorApplication, 'win ');
  assert.notEqual(o.footer.cylinders * o.footer.heads * o.footer.sectorsPerTrack * 512, 10 * MiB, 'the geometry is not exact here, so the creator decides');
  const info = JSON.parse(await must('qemu-img', ['info', '-f', 'vpc', '--output=json', dst]));
  assert.equal(info['virtual-size'], 10 * MiB);
  await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, dst]);
  assert.match(await must('vhdiinfo', [dst]), /Media size\s*:.*\(10485760 bytes\)/);
  assert.deepEqual(await sevenZip(dst), want);
  if (await needPyvhdi()) t.diagnostic('pyvhdi not installed: its digest not compared');
  else assert.deepEqual(await pyvhdiDigest(dst), want);
  assert.deepEqual(await azureProblems(await NodeFileSource.open(dst)), [], 'no rule broken and no reader disagreeing');
  const check = await vhdx(['check', '--azure', dst]);
  assert.equal(check.code, 0);
  assert.match(check.stdout, /Azure accepts this VHD/);
});

test('convert -o azure=on refuses a size that is not whole MiB, naming the next one, and leaves DST alone; azure=round pads with zeros', { skip: needTool('qemu-img') }, async () => {
  const raw = makeRaw('odd.raw', 3 * MiB + 1000, [[3 * MiB, pattern(5, 1000)]]);
  const dst = join(dir, 'odd.vhd');
  writeFileSync(dst, 'old');
  const r = await vhdx(['convert', '-f', 'raw', '-O', 'vpc', '-o', 'azure=on', raw, dst]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /3146728 bytes .* the next valid size is 4194304 bytes \(4 MiB\), which azure=round pads to/);
  assert.equal(readFileSync(dst, 'utf8'), 'old', 'DST is not replaced by a refused conversion');
  await ok(['convert', '-f', 'raw', '-O', 'vpc', '-o', 'azure=round', raw, dst]);
  assert.equal(statSync(dst).size, 4 * MiB + 512);
  await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, dst]); // the padding reads as zeros
  assert.equal((await vhdx(['check', '--azure', dst])).code, 0);
});

test('convert -O vpc refuses contradicting options and sizes a VHD cannot hold before touching DST', async () => {
  const raw = makeRaw('small.raw', MiB, []);
  // Sparse files: nothing is read before the refusal.
  const huge = makeRaw('huge.raw', 2041 * 1024 * MiB, []);
  const past8T = makeRaw('past8t.raw', 8 * 1024 * 1024 * MiB + 1, []);
  const dst = join(dir, 'refused-convert.vhd');
  const refusals: [string[], RegExp, string?][] = [
    [['-O', 'vpc'], /a dynamic VHD is at most 2190433320960 bytes/, huge],
    [['-O', 'vpc', '-o', 'azure=round'], /Azure takes disks of at most 8796091973632 bytes/, past8T],
    [['-O', 'vpc', '-o', 'azure=on,subformat=dynamic'], /azure takes a fixed VHD only/],
    [['-O', 'vpc', '-o', 'subformat=fixed,azure=round,block_size=1M'], /has no blocks/],
    [['-O', 'vpc', '-o', 'azure=yes'], /azure must be on, round or off/],
    [['-O', 'vpc', '-o', 'log_size=1M'], /unknown vpc option 'log_size'/],
    [['-O', 'vpc', '-o', 'block_size=1000'], /block size 1000 is not a power of two/],
    [['-O', 'raw', '-o', 'subformat=fixed'], /-o options apply to -O vhdx and -O vpc only/],
    [['-O', 'qcow2'], /output format qcow2 is not supported \(raw, vhdx or vpc\)/],
  ];
  for (const [args, message, from = raw] of refusals) {
    const r = await vhdx(['convert', '-f', 'raw', ...args, from, dst]);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, message);
    assert.equal(existsSync(dst), false, `${args.join(' ')} made no file`);
  }
});

test('check --azure lists every rule a file breaks and exits 2; JSON names the rules', { skip: needTool('qemu-img') }, async () => {
  const cases: [string, string[], RegExp][] = [];
  // qemu-img's own fixed VHD of "100M" (no force_size): rounded up to a CHS size, not whole MiB.
  const q = join(dir, 'qemu-100m.vhd');
  await must('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', q, '100M']);
  cases.push([q, ['whole-mib'], /the next valid size is 105906176 bytes/]);
  const dyn = join(dir, 'az-dynamic.vhd');
  await ok(['create', '-q', '-f', 'vpc', dyn, '4M']);
  cases.push([dyn, ['fixed'], /Azure takes only fixed VHDs/]);
  const raw = makeRaw('az.raw', 2 * MiB, []);
  cases.push([raw, ['footer'], /no valid VHD footer/]);
  const sum = join(dir, 'az-checksum.vhd');
  await ok(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', sum, '2M']);
  const bytes = readFileSync(sum);
  bytes[bytes.length - 512 + 70]! ^= 1; // the unique id: only the checksum notices
  writeFileSync(sum, bytes);
  cases.push([sum, ['checksum'], /fails its checksum/]);
  const odd = join(dir, 'az-odd-dynamic.vhd');
  await ok(['create', '-q', '-f', 'vpc', odd, '1500K']);
  cases.push([odd, ['fixed', 'whole-mib'], /1\.4648438 MiB/]);
  const legacy = join(dir, 'az-wa.vhd');
  await ok(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', legacy, '10M']);
  writeFileSync(legacy, patchFooter(readFileSync(legacy), () => ({ creatorApplication: 'wa\0\0', cylinders: 301, heads: 4, sectorsPerTrack: 17 }), { at0: false }));
  for (const [path, rules, message] of cases) {
    const r = await vhdx(['check', '--azure', path]);
    assert.equal(r.code, 2, `${path}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout, message);
    const j = await vhdx(['check', '--azure', '--output=json', path]);
    const out = JSON.parse(j.stdout);
    assert.deepEqual(out.azure.problems.filter((p: AzureProblem) => p.severity === 'error').map((p: AzureProblem) => p.rule), rules, path);
    assert.equal(out.azure.accepted, false);
    assert.equal(out.exitCode, 2);
  }
  // Azure takes this one, but readers disagree on its size: a warning, exit 0.
  const w = await vhdx(['check', '--azure', legacy]);
  assert.equal(w.code, 0);
  assert.match(w.stdout, /Warning: \[same-size-everywhere\] readers disagree on the size/);
  assert.match((await vhdx(['check', '--azure', '-r', 'all', legacy])).stderr, /--azure only checks/);
});
