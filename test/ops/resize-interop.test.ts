// `vhdx resize` against other tools (issue 16 item 5): qemu-img info/check/compare, vhdiinfo and
// 7zz read the new size; the GPT follows the disk as `sfdisk --relocate gpt-bak-std` (sgdisk -e)
// moves it, so a grown disk compares equal to a raw disk grown and relocated by sfdisk, and
// `sfdisk --verify` is clean; 7zz extracts the same partitions; refusals change nothing; SIGKILL
// of a real run leaves the old size or the new one, an image that opens and checks clean or leaking.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, hasTool, needTool, run, scratch } from '../helpers/env.js';
import { exec, must, sha256File, vhdx } from '../helpers/tools.js';
import { openFile } from '../../src/node.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const dir = scratch('vhdx-resize-');

/** A raw 64 MiB disk with a GPT of two 20 MiB partitions holding patterned data, and its VHDX (1 MiB blocks). */
async function gptDisk(name: string): Promise<{ raw: string; img: string }> {
  const raw = join(dir, `${name}.raw`);
  const img = join(dir, `${name}.vhdx`);
  const bytes = new Uint8Array(64 * MiB);
  for (let at = 2 * MiB; at < 42 * MiB; at += 3 * MiB + 4096) bytes.fill((at / MiB) & 0xff, at, at + 64 * 1024);
  writeFileSync(raw, bytes);
  run('sfdisk', ['-q', raw], { input: 'label: gpt\nsize=20MiB\nsize=20MiB\n' });
  // sfdisk writes only the tables: the patterns stay.
  await must(process.execPath, [cliPath, 'convert', '-f', 'raw', '-O', 'vhdx', '-o', 'block_size=1M', raw, img]);
  return { raw, img };
}

/** `raw` resized to `size` with its GPT backup relocated by sfdisk: what the image must equal. */
async function referenceRaw(raw: string, size: number, name: string): Promise<string> {
  const ref = join(dir, name);
  copyFileSync(raw, ref);
  truncateSync(ref, size);
  await must('sfdisk', ['-q', '--relocate', 'gpt-bak-std', ref]);
  return ref;
}

function virtualSize(info: string): unknown {
  return (JSON.parse(info) as { 'virtual-size'?: unknown })['virtual-size'];
}

test('a grown and a shrunk image read as sfdisk resizes a raw disk, and qemu-img, vhdiinfo, 7zz and sfdisk --verify agree', { skip: needTool('qemu-img', 'sfdisk') }, async () => {
  const { raw, img } = await gptDisk('g');
  const grow = await vhdx(['resize', img, '+136M']);
  assert.equal(grow.code, 0, grow.stderr);
  assert.match(grow.stdout, /resized from 64 MiB to 200 MiB .*GPT backup moved to LBA 409599/);
  assert.equal(virtualSize(await must('qemu-img', ['info', '--output=json', img])), 200 * MiB);
  await must('qemu-img', ['check', img]);
  await must('qemu-img', ['compare', await referenceRaw(raw, 200 * MiB, 'g200.raw'), img]);
  const out = join(dir, 'g-out.raw');
  await must(process.execPath, [cliPath, 'convert', '-O', 'raw', img, out]);
  assert.match(await must('sfdisk', ['--verify', out]), /No errors detected/);
  if (hasTool('vhdiinfo')) assert.match(await must('vhdiinfo', [img]), /Media size\s*:.*\(209715200 bytes\)/);
  if (hasTool('7zz')) {
    assert.match(await must('7zz', ['l', '-slt', img]), /^Size = 209715200$/m);
    const x = join(dir, 'x');
    await must('7zz', ['x', `-o${x}`, img]);
    const disk = readFileSync(out);
    assert.ok(readFileSync(join(x, '0.img')).equals(disk.subarray(MiB, 21 * MiB)), '7zz extracts partition 1 as it was');
    assert.ok(readFileSync(join(x, '1.img')).equals(disk.subarray(21 * MiB, 41 * MiB)), '7zz extracts partition 2 as it was');
  }
  // Shrinks: refused through a partition (nothing changes), then to the minimum.
  const before = sha256File(img);
  const cut = await vhdx(['resize', '--shrink', img, '30M']);
  assert.notEqual(cut.code, 0);
  assert.match(cut.stderr, /would cut through the disk's partitions.*need 43008512 bytes/);
  const noFlag = await vhdx(['resize', img, '-100M']);
  assert.notEqual(noFlag.code, 0);
  assert.match(noFlag.stderr, /needs --shrink/);
  assert.equal(sha256File(img), before, 'refusals change nothing');
  const min = await vhdx(['resize', '--to-minimum', img]);
  assert.equal(min.code, 0, min.stderr);
  assert.equal(virtualSize(await must('qemu-img', ['info', '--output=json', img])), 42 * MiB);
  await must('qemu-img', ['check', img]);
  // (sfdisk --relocate does not move a backup that lies past a disk's end: compare the partitions.)
  await must(process.execPath, [cliPath, 'convert', '-O', 'raw', img, out]);
  assert.ok(readFileSync(out).subarray(MiB, 41 * MiB).equals(readFileSync(raw).subarray(MiB, 41 * MiB)), 'the partitions are intact');
  assert.match(await must('sfdisk', ['--verify', out]), /No errors detected/);
  assert.ok(statSync(img).size < 48 * MiB, `the file was cut (${statSync(img).size})`);
  // --no-gpt-fix leaves the table: the disk reads as the raw one grown, nothing relocated.
  const { raw: raw2, img: img2 } = await gptDisk('n');
  assert.equal((await vhdx(['resize', '--no-gpt-fix', img2, '100M'])).code, 0);
  const grown = join(dir, 'n100.raw');
  copyFileSync(raw2, grown);
  truncateSync(grown, 100 * MiB);
  await must('qemu-img', ['compare', grown, img2]);
});

test('growing a 1 MiB-block image past its BAT region keeps every byte, and other tools read the new size', { skip: needTool('qemu-img') }, async () => {
  const sectors: [string, number][] = [['b512', 512], ['b4k', 4096]];
  for (const [name, lss] of sectors) {
    const img = join(dir, `${name}.vhdx`);
    await must(process.execPath, [cliPath, 'create', '-q', '-o', `block_size=1M,logical_sector_size=${lss}`, img, '64M']);
    await must(process.execPath, [cliPath, 'io', '-q', '-c', 'write -P 0x5a 0 3M', '-c', 'write -P 0xa5 60M 4M', img]);
    const r = await vhdx(['resize', img, '130G']);
    assert.equal(r.code, 0, r.stderr);
    const check = await vhdx(['check', img]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    const io = await vhdx(['io', '-r', '-c', 'read -P 0x5a 0 3M', '-c', 'read -P 0xa5 60M 4M', '-c', 'read -P 0 64M 1M', '-c', `read -P 0 ${130 * GiB - MiB} 1M`, img]);
    assert.equal(io.code, 0, io.stdout + io.stderr);
    if (lss === 512) {
      assert.equal(virtualSize(await must('qemu-img', ['info', '--output=json', img])), 130 * GiB);
      await must('qemu-img', ['check', img]);
    }
    if (hasTool('vhdiinfo')) assert.match(await must('vhdiinfo', [img]), new RegExp(`\\(${130 * GiB} bytes\\)`));
    if (hasTool('7zz')) assert.match(await must('7zz', ['l', '-slt', img]), new RegExp(`^VirtualDiskSize: ${130 * GiB}$`, 'm'));
  }
});

test('growing a qemu-img image (metadata right after the BAT) past its BAT region writes the BAT elsewhere; qemu-img, qemu-io, vhdiinfo and 7zz read it', { skip: needTool('qemu-img', 'qemu-io') }, async () => {
  const img = join(dir, 'qemu-made.vhdx');
  await must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', img, '64M']);
  await must('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x5a 0 3M', '-c', 'write -P 0xa5 60M 4M', img]);
  const r = await vhdx(['resize', img, '130G']);
  assert.equal(r.code, 0, r.stderr);
  /** The part of `vhdx info --output=json` read here. */
  type Info = { regionTable: { regions: { name: string; fileOffset: number; length: number }[] } };
  const info = JSON.parse(await must(process.execPath, [cliPath, 'info', '--output=json', img])) as Info;
  const bat = info.regionTable.regions.find((x) => x.name === 'bat');
  assert.ok(bat, 'the region table names the BAT');
  assert.ok(bat.fileOffset > 4 * MiB && bat.length === 2 * MiB, `the BAT moved: ${JSON.stringify(bat)}`);
  assert.equal(virtualSize(await must('qemu-img', ['info', '--output=json', img])), 130 * GiB);
  await must('qemu-img', ['check', img]);
  await must('qemu-io', ['-f', 'vhdx', '-r', '-c', 'read -P 0x5a 0 3M', '-c', 'read -P 0xa5 60M 4M', '-c', 'read -P 0 64M 1M', '-c', `read -P 0 ${130 * GiB - MiB} 1M`, img]);
  // Our check: no corruption; the old BAT's place is space no structure names (a leak, exit 3).
  const check = await vhdx(['check', '--output=json', img]);
  assert.equal((JSON.parse(check.stdout) as { corruptions?: unknown }).corruptions, 0, check.stdout);
  assert.ok(check.code === 0 || check.code === 3, check.stdout);
  // Writes after the move land and read back through qemu-io.
  await must(process.execPath, [cliPath, 'io', '-q', '-c', `write -P 0x3c ${100 * GiB} 2M`, img]);
  await must('qemu-io', ['-f', 'vhdx', '-r', '-c', `read -P 0x3c ${100 * GiB} 2M`, img]);
  if (hasTool('vhdiinfo')) assert.match(await must('vhdiinfo', [img]), new RegExp(`\\(${130 * GiB} bytes\\)`));
  if (hasTool('7zz')) assert.match(await must('7zz', ['l', '-slt', img]), new RegExp(`^VirtualDiskSize: ${130 * GiB}$`, 'm'));
});

/** Start `vhdx resize` and SIGKILL it when `ready()` says so (or let it finish). */
function resizeAndKill(args: readonly string[], ready: () => boolean): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, 'resize', ...args], { stdio: 'ignore' });
    const timer = setInterval(() => {
      if (ready()) {
        child.kill('SIGKILL');
        clearInterval(timer);
      }
    }, 1);
    child.on('exit', (code, signal) => {
      clearInterval(timer);
      resolve({ code, signal });
    });
  });
}

test('SIGKILL of vhdx resize leaves the old size or the new one, an image that opens and checks clean or leaking', { skip: needTool('qemu-img'), timeout: 120_000 }, async () => {
  const base = join(dir, 'k-base.vhdx');
  // A fixed disk: growing it writes its new blocks, so the kill can land at many moments.
  await must(process.execPath, [cliPath, 'create', '-q', '-o', 'subformat=fixed,block_size=1M', base, '16M']);
  await must(process.execPath, [cliPath, 'io', '-q', '-c', 'write -P 0x77 1M 2M', base]);
  const NEW = 160 * MiB;
  const sizes = new Set<number>();
  for (const fraction of [0.1, 0.6, 1.01]) {
    const img = join(dir, `k${fraction}.vhdx`);
    copyFileSync(base, img);
    const start = statSync(img).size;
    await resizeAndKill([img, String(NEW)], () => existsSync(img) && statSync(img).size >= start + fraction * NEW);
    const image = await openFile(img, { readOnly: false });
    const size = image.size;
    await image.close();
    assert.ok(size === 16 * MiB || size === NEW, `killed at ${fraction}: size ${size}`);
    sizes.add(size);
    const check = await exec('qemu-img', ['check', img]);
    assert.ok(check.code === 0 || check.code === 3, `killed at ${fraction}: qemu-img check ${check.code} ${check.stdout}`);
    const io = await vhdx(['io', '-r', '-c', 'read -P 0x77 1M 2M', img]);
    assert.equal(io.code, 0, io.stdout + io.stderr);
  }
  assert.ok(sizes.has(16 * MiB), 'some kill landed before the size change');
});
