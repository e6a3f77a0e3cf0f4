// `vhdx create`: images pass qemu-img check and info and open in libvhdi for every option
// combination qemu accepts; fixed images are allocated on disk; bad options give one line and
// no file; 4 KiB-sector images (which qemu refuses) read back through pyvhdi as written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTool } from '../helpers/env.js';
import { must, needPyvhdi, pyvhdiDigest, shmScratch, vhdx, vhdxInProcess } from '../helpers/tools.js';

const K = 1024;
const M = K * K;
const G = K * M;
const T = K * G;
const dir = shmScratch('vhdx-cli-create-');

// Combinations QEMU accepts (it opens 512-byte logical sectors only). Sizes include a partial
// last block, a BAT with a chunk's sector bitmap entry inside it (4160 MiB at 2 MiB blocks:
// 2048 blocks per chunk), hex sizes, and the 64 TiB maximum.
const MATRIX = [
  { size: '1G', o: [] },
  { size: '100M', o: ['subformat=dynamic', 'block_size=1M', 'log_size=1M', 'physical_sector_size=512'] },
  { size: String(12 * M + 1536), o: ['subformat=fixed', 'block_size=1M', 'log_size=2M'] },
  { size: '24M', o: ['subformat=fixed', 'block_size=8M', 'physical_sector_size=512', 'logical_sector_size=512'] },
  { size: '600M', o: ['block_size=256M', 'log_size=4M', 'physical_sector_size=4096'] },
  { size: '10M', o: ['subformat=fixed', 'block_size=64M'] },
  { size: '4160M', o: ['block_size=2M', 'log_size=0x200000'] },
  { size: '0x3200000', o: ['subformat=fixed', 'block_size=16M', 'log_size=8M', 'physical_sector_size=512'] },
  { size: '64T', o: [] },
];

function parseSizeText(s: string): number {
  const m = /^(0x[0-9a-f]+|\d+)([KMGT]?)$/i.exec(s)!;
  const unit: Record<string, number> = { '': 1, K, M, G, T };
  return Number(m[1]) * unit[m[2]!.toUpperCase()]!;
}

const qemuMissing = needTool('qemu-img');
const vhdiMissing = needTool('vhdiinfo');

test('created images pass qemu-img check and info, and open in vhdiinfo', { concurrency: 2 }, async (t) => {
  const runs = [];
  for (const [i, c] of MATRIX.entries()) {
    runs.push(t.test(`${c.size} ${c.o.join(',') || '(defaults)'}`, async (t2) => {
      const path = join(dir, `m${i}.vhdx`);
      const args = ['create', ...(c.o.length ? ['-o', c.o.join(',')] : []), path, c.size];
      const r = await vhdxInProcess(args);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Formatting '.*m\d\.vhdx', fmt=vhdx size=\d+ /);
      const size = parseSizeText(c.size);
      const opt = Object.fromEntries(c.o.map((kv) => kv.split('=')));
      const bs = opt.block_size ? parseSizeText(opt.block_size) : 32 * M;
      const fixed = opt.subformat === 'fixed';

      const info = JSON.parse((await vhdxInProcess(['info', '--output=json', path])).stdout);
      assert.equal(info.type, fixed ? 'fixed' : 'dynamic');
      assert.equal(info.virtualSize, size);
      assert.equal(info.blockSize, bs);
      assert.equal(info.logicalSectorSize, 512);
      assert.equal(info.physicalSectorSize, Number(opt.physical_sector_size ?? 4096));
      assert.equal(info.log.length, opt.log_size ? parseSizeText(opt.log_size) : M);

      if (fixed) {
        const st = statSync(path);
        assert.ok(st.blocks * 512 >= st.size, `fixed image allocated: ${st.blocks * 512} of ${st.size} bytes`);
        assert.ok(st.size >= size + 4 * M);
      }
      await t2.test('qemu-img check and info', { skip: qemuMissing }, async () => {
        const check = await must('qemu-img', ['check', '-f', 'vhdx', path]);
        assert.match(check, /No errors were found on the image/);
        const q = JSON.parse(await must('qemu-img', ['info', '-f', 'vhdx', '--output=json', path]));
        assert.equal(q.format, 'vhdx');
        assert.equal(q['virtual-size'], size);
        assert.equal(q['cluster-size'], bs);
      });
      await t2.test('vhdiinfo', { skip: vhdiMissing }, async () => {
        const v = await must('vhdiinfo', [path]);
        assert.match(v, new RegExp(`Media size\\s*: .*\\(${size} bytes\\)`));
        assert.match(v, /Bytes per sector\s*: 512 bytes/);
        assert.match(v, new RegExp(`Disk type\\s*: ${fixed ? 'Fixed' : 'Dynamic'}`));
      });
    }));
  }
  await Promise.all(runs);
});

test('bad options: one line on stderr, exit 1, no file', { concurrency: 4 }, async (t) => {
  const cases: [string[], RegExp][] = [
    [['-o', 'block_size=3M'], /block size 3 MiB is not a power of two from 1 MiB to 256 MiB/],
    [['-o', 'block_size=512K'], /block size/],
    [['-o', 'block_size=512M'], /block size/],
    [['-o', 'log_size=1536K'], /log size/],
    [['-o', 'log_size=0'], /log size/],
    [['-o', 'logical_sector_size=1024'], /logical_sector_size must be 512 or 4096/],
    [['-o', 'physical_sector_size=1k'], /physical_sector_size must be 512 or 4096/],
    [['-o', 'logical_sector_size=4096,physical_sector_size=512'], /physical sector size 512 is smaller than the logical sector size 4096/],
    [['-o', 'subformat=sparse'], /subformat must be dynamic or fixed/],
    [['-o', 'cluster_size=1M'], /unknown create option 'cluster_size'/],
    [['-o', 'block_size'], /expected key=value/],
    [['-o', 'block_size=lots'], /invalid block_size 'lots'/],
    [['-f', 'qcow2'], /format qcow2 is not supported/],
  ];
  const sizes: [string, RegExp][] = [
    ['1000', /size 1000 is not a multiple of the 512-byte logical sector size/],
    ['0', /size 0 is not a positive/],
    ['65T', /larger than the format's 64 TiB/],
    ['12X', /invalid size '12X'/],
    ['1.5', /a fraction needs a suffix/],
  ];
  const all: [string[], string, RegExp][] = [...cases.map(([a, m]): [string[], string, RegExp] => [[...a], '1G', m]), ...sizes.map(([s, m]): [string[], string, RegExp] => [[], s, m])];
  const runs = [];
  for (const [i, [opts, size, message]] of all.entries()) {
    runs.push(t.test(`${opts.join(' ')} ${size}`, async () => {
      const path = join(dir, `bad${i}.vhdx`);
      const r = await vhdxInProcess(['create', ...opts, path, size]);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '', 'nothing printed before the error');
      assert.match(r.stderr, /^vhdx: [^\n]+\n$/, `one line: ${JSON.stringify(r.stderr)}`);
      assert.match(r.stderr, message);
      assert.equal(existsSync(path), false, 'no file left');
    }));
  }
  await Promise.all(runs);
});

test('an existing FILE is refused and left untouched; missing operands are a usage error', async () => {
  const path = join(dir, 'existing.vhdx');
  writeFileSync(path, 'keep me');
  const r = await vhdx(['create', '-q', path, '1G']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /already exists \(it is not overwritten\)/);
  assert.equal(readFileSync(path, 'utf8'), 'keep me');
  const u = await vhdxInProcess(['create', path]);
  assert.equal(u.code, 1);
  assert.match(u.stderr, /expected FILE and SIZE/);
});

test('-o help lists the options; -p shows progress for a fixed image; -q prints nothing', async () => {
  const h = await vhdxInProcess(['create', '-o', 'help']);
  assert.equal(h.code, 0);
  for (const k of ['subformat', 'block_size', 'log_size', 'logical_sector_size', 'physical_sector_size']) assert.ok(h.stdout.includes(k), k);
  const path = join(dir, 'progress.vhdx');
  const r = await vhdx(['create', '-q', '-p', '-o', 'subformat=fixed,block_size=1M', path, '64M']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /allocating .*100%/);
});

test('4 KiB-sector images read back through pyvhdi as written with vhdx io', async (t) => {
  const skip = (await needPyvhdi()) || needTool('vhdiinfo');
  if (skip) return t.skip(skip);
  const layouts: [string, string, number][] = [
    ['dynamic', 'logical_sector_size=4096,block_size=1M', 20 * M + 8192],
    ['fixed', 'logical_sector_size=4096,physical_sector_size=4096,subformat=fixed,block_size=2M', 6 * M],
  ];
  for (const [name, o, size] of layouts) {
    const path = join(dir, `s4k-${name}.vhdx`);
    assert.equal((await vhdx(['create', '-q', '-o', o, path, String(size)])).code, 0);
    const expected = new Uint8Array(size);
    const writes: [number, number, number][] = [
      [0x11, 0, 4096],
      [0x22, M - 4096, 3 * 4096], // across the first block boundary
      [0x33, 5 * M + 12288, 64 * K],
      [0x44, size - 4096, 4096], // the last sector
    ];
    const cmds = [];
    for (const [p, off, len] of writes) {
      cmds.push('-c', `write -P ${p} ${off} ${len}`);
      expected.fill(p, off, off + len);
    }
    const w = await vhdx(['io', ...cmds, path]);
    assert.equal(w.code, 0, w.stderr);
    const v = await must('vhdiinfo', [path]);
    assert.match(v, /Bytes per sector\s*: 4096 bytes/);
    const got = await pyvhdiDigest(path);
    assert.equal(got.size, size);
    assert.equal(got.sha256, createHash('sha256').update(expected).digest('hex'), `${name}: pyvhdi reads what was written`);
  }
});
