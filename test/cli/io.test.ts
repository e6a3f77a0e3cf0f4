// `vhdx io`: command parsing and sizes, qemu-io style output, pattern verification that names
// the first bad offset, read-only opens, and interop both ways: qemu-io writes into images we
// create read back right through us, and our writes into qemu-created images read back right
// through qemu-io.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { parseSize } from '../../src/cli/common.js';
import { parseCommand } from '../../src/cli/io.js';
import { openFile } from '../../src/node.js';
import type { VhdxImage } from '../../src/driver/image.js';
import { needTool } from '../helpers/env.js';
import { contentModel, exec, must, needPyvhdi, pyvhdiDigest, sha256File, shmScratch, vhdx, vhdxInProcess, type ByteOp, type Segment } from '../helpers/tools.js';

const K = 1024;
const M = K * K;
const dir = shmScratch('vhdx-cli-io-');
const qemuMissing = needTool('qemu-img', 'qemu-io');

test('parseSize: bytes, hex, suffixes in either case, fractions with a suffix', () => {
  const ok = {
    0: 0,
    4096: 4096,
    '0x1000': 4096,
    '0X1f': 31,
    '4k': 4 * K,
    '4K': 4 * K,
    '1M': M,
    '1.5G': 1.5 * K * M,
    '2T': 2 * K * K * M,
    '8MiB': 8 * M,
    '64kb': 64 * K,
    '512b': 512,
    '0x10k': 16 * K,
  };
  for (const [text, value] of Object.entries(ok)) assert.equal(parseSize(text, 'x'), value, text);
  for (const bad of ['', 'x', '1.5', '-1', '0x', '1Q', '1 M M', '0.3k', '9999999P', '1e3']) {
    assert.throws(() => parseSize(bad, 'offset'), /invalid offset/, bad);
  }
});

test('parseCommand: getopt-style flags and operands', () => {
  const w = parseCommand('write -P 0x5a 0 4k');
  assert.deepEqual([w.name, w.pattern, w.offset, w.length, [...w.flags]], ['write', 0x5a, 0, 4096, ['P']]);
  const z = parseCommand('  write -zuf  1M 0x200 ');
  assert.deepEqual([z.name, z.offset, z.length, [...z.flags].sort()], ['write', M, 512, ['f', 'u', 'z']]);
  assert.equal(parseCommand('w -P7 0 1').pattern, 7);
  assert.equal(parseCommand('read -P 255 0 1').pattern, 255);
  assert.equal(parseCommand('flush').name, 'flush');
  assert.equal(parseCommand('discard 4k 4k').name, 'discard');
  const bad: [string, RegExp][] = [
    ['write -z -P 1 0 1', /-z and -P cannot be used together/],
    ['write -u 0 1', /-u needs -z/],
    ['read -z 0 1', /unknown flag -z/],
    ['write 0', /needs OFF and LEN/],
    ['flush 1', /takes no operands/],
    ['read -P 256 0 1', /pattern '256' is not a byte/],
    ['read -P', /-P needs a byte value/],
    ['bogus 0 1', /unknown command 'bogus'/],
    ['', /unknown command ''/],
    ['read 0 lots', /invalid length 'lots'/],
  ];
  for (const [text, message] of bad) assert.throws(() => parseCommand(text), message, text);
});

async function newImage(name: string, opts = 'block_size=1M', size = '16M'): Promise<string> {
  const path = join(dir, name);
  const r = await vhdxInProcess(['create', '-q', '-o', opts, path, size]);
  assert.equal(r.code, 0, r.stderr);
  return path;
}

test('commands run in order with one line each, as qemu-io prints them', async () => {
  const path = await newImage('lines.vhdx');
  // The real command (bin/vhdx.cjs), for its exit status and output.
  const r = await vhdx([
    'io',
    '-c', 'write -P 0x5a 0 4k',
    '-c', 'write 1M 100',
    '-c', 'write -z 0x800 1k',
    '-c', 'write -f -P 7 15M 1M',
    '-c', 'discard 8M 1M',
    '-c', 'flush',
    '-c', 'read -P 0x5a 0 2k',
    '-c', 'read -P 0 2k 1k',
    '-c', 'read -P 0xcd 1M 100',
    path,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.equal(
    r.stdout,
    [
      'wrote 4096/4096 bytes at offset 0',
      'wrote 100/100 bytes at offset 1048576',
      'wrote 1024/1024 bytes at offset 2048',
      'wrote 1048576/1048576 bytes at offset 15728640',
      'discard 1048576/1048576 bytes at offset 8388608',
      'read 2048/2048 bytes at offset 0',
      'read 1024/1024 bytes at offset 2048',
      'read 100/100 bytes at offset 1048576',
      '',
    ].join('\n'),
  );
  const img = await openFile(path);
  const b = new Uint8Array(4096);
  await img.read(0, b);
  assert.ok(b.subarray(0, 2048).every((x) => x === 0x5a) && b.subarray(2048, 3072).every((x) => x === 0) && b.subarray(3072).every((x) => x === 0x5a));
  await img.read(15 * M + M - 4096, b);
  assert.ok(b.every((x) => x === 7));
  assert.equal(img.layout.log.dirty, false, 'closed cleanly');
  await img.close();
});

test('read -P: a mismatch exits non-zero naming the first bad offset, and stops the run', async () => {
  const path = await newImage('mismatch.vhdx');
  assert.equal((await vhdxInProcess(['io', '-q', '-c', 'write -P 0x5a 0 8k', '-c', 'write -z 4196 100', path])).code, 0);
  const r = await vhdx(['io', '-c', 'read -P 0x5a 0 4k', '-c', 'read -P 0x5a 0 8k', '-c', 'write -P 1 1M 4k', path]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, 'read 4096/4096 bytes at offset 0\n');
  assert.equal(r.stderr, `vhdx: ${path}: pattern verification failed at offset 4196 (0x1064): expected 0x5a, read 0x00\n`);
  // The write after the failing read did not run.
  const check = await vhdxInProcess(['io', '-r', '-c', 'read -P 0 1M 4k', path]);
  assert.equal(check.code, 0, check.stderr);
  // A mismatch deep in a long read (past the first 4 MiB piece) is found too.
  assert.equal((await vhdxInProcess(['io', '-q', '-c', 'write -P 3 0 16M', '-c', 'write -P 4 12345678 1', path])).code, 0);
  const deep = await vhdxInProcess(['io', '-c', 'read -P 3 0 16M', path]);
  assert.equal(deep.code, 1);
  assert.match(deep.stderr, /failed at offset 12345678 \(0xbc614e\): expected 0x03, read 0x04/);
});

test('-r opens read-only; a bad command changes nothing', async () => {
  const path = await newImage('ro.vhdx');
  const before = sha256File(path);
  const ro = await vhdxInProcess(['io', '-r', '-c', 'read 0 4k', '-c', 'write 0 4k', path]);
  assert.equal(ro.code, 1);
  assert.match(ro.stderr, /read-only/);
  const typo = await vhdxInProcess(['io', '-c', 'write 0 4k', '-c', 'wirte 0 4k', path]);
  assert.equal(typo.code, 1);
  assert.match(typo.stderr, /unknown command 'wirte'/);
  const range = await vhdxInProcess(['io', '-r', '-c', 'read 16M 1', path]);
  assert.equal(range.code, 1);
  assert.match(range.stderr, /outside the 16777216-byte disk/);
  assert.equal(sha256File(path), before, 'file unchanged');
  const none = await vhdxInProcess(['io', path]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /at least one -c COMMAND/);
});

// ---- interop ----

type IoOp = ByteOp;

/** Check [s.start, s.end) of `img` holds s.value, 4 MiB at a time; fails naming the first bad byte. */
async function checkSegment(img: VhdxImage, s: Segment): Promise<void> {
  const piece = Buffer.alloc(Math.min(4 * M, s.end - s.start));
  const want = Buffer.alloc(piece.length, s.value);
  for (let at = s.start; at < s.end; at += piece.length) {
    const n = Math.min(piece.length, s.end - at);
    const b = piece.subarray(0, n);
    await img.read(at, b);
    if (!b.equals(want.subarray(0, n))) {
      const bad = b.findIndex((x) => x !== s.value);
      assert.fail(`byte ${at + bad} should be ${s.value}, is ${b[bad]}`);
    }
  }
}
const W = (pattern: number, offset: number, length: number): IoOp => ({ op: 'write', pattern, offset, length });
const Z = (offset: number, length: number): IoOp => ({ op: 'zero', offset, length });
const D = (offset: number, length: number): IoOp => ({ op: 'discard', offset, length });
const cmd = (o: IoOp) => (o.op === 'write' ? `write -P ${o.pattern} ${o.offset} ${o.length}` : o.op === 'zero' ? `write -z ${o.offset} ${o.length}` : `discard ${o.offset} ${o.length}`);

function ops(bs: number, size: number): IoOp[] {
  return [
    W(0x11, 0, 4096),
    W(0x22, bs - 1000, 3000), // unaligned, across a block boundary
    W(0x33, bs + 12345, 777),
    W(0x44, 2 * bs - 512, bs + 1024), // a whole block and a sector each side
    Z(2 * bs + 4096, 8192),
    D(3 * bs, bs), // a whole block
    Z(bs - 512, 1024),
    W(0x55, size - 512, 512), // the last sector
  ];
}

const CASES = [
  { name: 'dynamic 1M', o: 'block_size=1M', bs: M, size: 12 * M },
  { name: 'fixed 2M', o: 'subformat=fixed,block_size=2M', bs: 2 * M, size: 9 * M + 512 },
  { name: 'dynamic 32M (default)', o: '', bs: 32 * M, size: 130 * M },
];
// qemu-io reads large ranges slowly: the other direction uses 8 MiB blocks instead of 32 MiB.
const QEMU_CASES = [...CASES.slice(0, 2), { name: 'dynamic 8M', o: 'block_size=8M', bs: 8 * M, size: 33 * M + 4096 }];

test('qemu-io writes into images we create read back right through us', { skip: qemuMissing }, async (t) => {
  for (const c of CASES) {
    await t.test(c.name, async () => {
      const path = join(dir, `q-into-ours-${c.bs}.vhdx`);
      assert.equal((await vhdxInProcess(['create', '-q', ...(c.o ? ['-o', c.o] : []), path, String(c.size)])).code, 0);
      const list = ops(c.bs, c.size);
      // A discarded range of our image may read as zeros or as what was there (-1: anything).
      const expected = contentModel(c.size, list, -1);
      await must('qemu-io', ['-f', 'vhdx', ...list.flatMap((o) => ['-c', cmd(o)]), path]);
      assert.match(await must('qemu-img', ['check', '-f', 'vhdx', path]), /No errors/);
      const img = await openFile(path);
      try {
        for (const s of expected) {
          if (s.value >= 0) await checkSegment(img, s);
        }
      } finally {
        await img.close();
      }
      // And through our io tool's own verification, one segment per command.
      const reads = expected.filter((s) => s.value >= 0).flatMap((s) => ['-c', `read -P ${s.value} ${s.start} ${s.end - s.start}`]);
      const r = await vhdxInProcess(['io', '-r', '-q', ...reads, path]);
      assert.equal(r.code, 0, r.stderr);
    });
  }
});

test('vhdx io writes into qemu-created images read back right through qemu-io', { skip: qemuMissing }, async (t) => {
  for (const c of QEMU_CASES) {
    await t.test(c.name, async () => {
      const path = join(dir, `ours-into-q-${c.bs}.vhdx`);
      await must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', c.o, path, String(c.size)]);
      // Our discard guarantees zeros afterwards.
      const list = ops(c.bs, c.size);
      const w = await vhdxInProcess(['io', '-q', ...list.flatMap((o) => ['-c', cmd(o)]), '-c', 'flush', path]);
      assert.equal(w.code, 0, w.stderr);
      assert.match(await must('qemu-img', ['check', '-f', 'vhdx', path]), /No errors/);
      const reads = contentModel(c.size, list, 0).flatMap((s) => ['-c', `read -P ${s.value} ${s.start} ${s.end - s.start}`]);
      const r = await exec('qemu-io', ['-f', 'vhdx', '-r', ...reads, path]);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stdout + r.stderr, /fail/i);
      assert.equal((r.stdout.match(/^read \d+\/\d+ bytes/gm) ?? []).length, reads.length / 2, r.stdout);
    });
  }
});

test('an image vhdx io wrote and closed never leaks: write -z -u and discard, then vhdx check and qemu-img check are clean', async (t) => {
  const path = join(dir, 'no-leak.vhdx');
  assert.equal((await vhdxInProcess(['create', '-q', '-o', 'block_size=1M', path, String(16 * M)])).code, 0);
  const io = async (...cmds: string[]) => {
    const r = await vhdxInProcess(['io', '-q', ...cmds.flatMap((c) => ['-c', c]), path]);
    assert.equal(r.code, 0, r.stderr);
  };
  const checkClean = async (what: string) => {
    const r = await vhdxInProcess(['check', path]);
    assert.equal(r.code, 0, `${what}: vhdx check exited ${r.code}: ${r.stdout}${r.stderr}`);
    if (!qemuMissing) assert.match(await must('qemu-img', ['check', '-f', 'vhdx', path]), /No errors/, what);
  };
  await io('write -P 0x11 0 8M');
  await io('write -z -u 2M 1M'); // inside the file
  await checkClean('write -z -u inside');
  await io('write -z -u 7M 1M'); // the last block
  await checkClean('write -z -u at the end');
  await io('discard 3M 2M');
  await checkClean('discard');
  await io('write -P 0x22 12M 4k', 'discard 0 1M', 'write -P 0x33 14M 1M');
  await checkClean('reuse');
  // Other readers see discarded blocks that keep their place, and reused places, as we do.
  const ours = await vhdxInProcess(['io', '-r', '-q', '-c', 'read -P 0 0 1M', '-c', 'read -P 0x11 1M 1M', '-c', 'read -P 0 2M 3M', '-c', 'read -P 0x11 5M 2M', '-c', 'read -P 0 7M 5M', '-c', 'read -P 0x22 12M 4k', '-c', 'read -P 0 12292k 2044k', '-c', 'read -P 0x33 14M 1M', '-c', 'read -P 0 15M 1M', path]);
  assert.equal(ours.code, 0, ours.stdout + ours.stderr);
  if (!qemuMissing) {
    const raw = join(dir, 'no-leak.raw');
    await must('qemu-img', ['convert', '-O', 'raw', path, raw]);
    const q = await exec('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0 0 1M', '-c', 'read -P 0x11 1M 1M', '-c', 'read -P 0 2M 3M', '-c', 'read -P 0x22 12M 4k', '-c', 'read -P 0x33 14M 1M', raw]);
    assert.doesNotMatch(q.stdout + q.stderr, /fail/i, 'qemu reads the same');
    if (!(await needPyvhdi())) assert.equal((await pyvhdiDigest(path)).sha256, sha256File(raw), 'libvhdi reads the same');
  }
  // Five discard-and-rewrite rounds of the whole disk, each step its own `vhdx io`.
  const before = statSync(path).size;
  for (let round = 0; round < 5; round++) {
    await io(`write -P ${0x40 + round} 0 16M`);
    await io('discard 0 16M');
  }
  await io('write -P 0x66 0 16M');
  const after = statSync(path).size;
  t.diagnostic(`16 MiB disk of 1 MiB blocks: ${before / M} MiB before the rounds, ${after / M} MiB after five`);
  assert.equal(after, 4 * M + 16 * M, 'the structures and one place per block');
  await checkClean('after the rounds');
  const r = await vhdxInProcess(['io', '-r', '-q', '-c', 'read -P 0x66 0 16M', path]);
  assert.equal(r.code, 0, r.stderr);
});
