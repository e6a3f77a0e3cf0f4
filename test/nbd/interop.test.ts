// `vhdx serve` against the NBD clients people use: qemu-img (info, map, compare, convert both
// ways), qemu-io (writes, pattern reads, write-zeroes, discard, flush, FUA), nbdinfo (--map,
// --can, --is, --list), nbdcopy (both ways) and fio's nbd engine (a verify job). Each group
// starts its own server on a Unix socket of its own, so files can run in parallel.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTool } from '../helpers/env.js';
import { exec, must, sha256File, shmScratch, vhdx } from '../helpers/tools.js';
import { startServe, unixUri, type Serve } from './serve.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const dir = shmScratch('nbd-interop-');
const srcRaw = join(dir, 'src.raw');
const disk = join(dir, 'disk.vhdx');

/** Deterministic bytes. */
function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

// Data in [0, 3M), [8M, 8M + 100K) and [40M, 41M); zeros elsewhere. As a VHDX with 1 MiB blocks,
// blocks 0-2, 8 and 40 are allocated and the rest are holes.
const DATA_RANGES: [number, number][] = [
  [0, 3 * MiB],
  [8 * MiB, 100 * 1024],
  [40 * MiB, MiB],
];
/** One entry of `qemu-img map --output=json`. */
interface QemuMapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** One export of `nbdinfo --json`. */
interface NbdinfoExport {
  'export-name': string;
  'export-size': number;
}

const DATA_BLOCKS = [
  [0, 3 * MiB],
  [8 * MiB, MiB],
  [40 * MiB, MiB],
];

before(async () => {
  const raw = Buffer.alloc(SIZE);
  DATA_RANGES.forEach(([at, n], i) => noise(n, 1234 + i).copy(raw, at));
  writeFileSync(srcRaw, raw);
  const r = await vhdx(['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'block_size=1M', srcRaw, disk]);
  assert.equal(r.code, 0, r.stderr);
});

/** A fresh copy of the test image, served read-write on its own socket. */
/** A served copy: the server, the image's path and its socket. */
type Served = Serve & { path: string; sock: string };

async function serveCopy(name: string, extra: string[] = []): Promise<Served> {
  const path = join(dir, `${name}.vhdx`);
  writeFileSync(path, readFileSync(disk));
  const sock = join(dir, `${name}.sock`);
  const s = await startServe([...extra, '--socket', sock, path]);
  return { ...s, path, sock };
}

async function stopped(s: Serve): Promise<void> {
  const { code, signal } = await s.stop();
  assert.equal(code, 0, `server exit ${code ?? signal}: ${s.stderr()}`);
}

describe('qemu-img', { skip: needTool('qemu-img') }, () => {
  let s: Served;
  before(async () => (s = await serveCopy('qimg')));
  after(() => stopped(s));

  it('info shows the virtual size', async () => {
    const info = JSON.parse(await must('qemu-img', ['info', '--output=json', '-f', 'raw', s.uri]));
    assert.equal(info['virtual-size'], SIZE);
  });

  it('map reports the allocated blocks as data and the rest as holes', async () => {
    const map = JSON.parse(await must('qemu-img', ['map', '--output=json', '-f', 'raw', s.uri]));
    const data = map.filter((e: QemuMapEntry) => e.data).map((e: QemuMapEntry) => [e.start, e.length]);
    assert.deepEqual(data, DATA_BLOCKS);
    const holes = map.filter((e: QemuMapEntry) => !e.data);
    assert.ok(holes.length >= 2 && holes.every((e: QemuMapEntry) => e.zero), JSON.stringify(holes));
    assert.equal(
      map.reduce((a: number, e: QemuMapEntry) => a + e.length, 0),
      SIZE,
    );
  });

  it('compare finds the export identical to the raw source', async () => {
    const r = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcRaw, s.uri]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });

  it('convert NBD -> raw reads the disk exactly', async () => {
    const out = join(dir, 'qimg-out.raw');
    await must('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri, out]);
    assert.equal(sha256File(out), sha256File(srcRaw));
  });

  it('convert raw -> NBD writes the disk exactly', async () => {
    const other = join(dir, 'other.raw');
    const b = noise(SIZE, 99);
    b.fill(0, 10 * MiB, 30 * MiB);
    writeFileSync(other, b);
    await must('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', other, s.uri]);
    const r = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', other, s.uri]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });
});

describe('qemu-io', { skip: needTool('qemu-io') }, () => {
  let s: Served;
  before(async () => (s = await serveCopy('qio')));
  after(() => stopped(s));

  const io = (...cmds: string[]) => must('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), s.uri]);

  it('write, read -P, flush, FUA writes, aio writes with aio_flush', async () => {
    await io('write -P 0xab 20M 1M', 'read -P 0xab 20M 1M', 'flush');
    await io('write -f -P 0x11 1M 64k', 'read -P 0x11 1M 64k');
    await io('aio_write -P 0x33 50M 64k', 'aio_write -P 0x44 50176k 64k', 'aio_flush', 'read -P 0x33 50M 64k', 'read -P 0x44 50176k 64k');
    // Unaligned, across a block boundary.
    await io('write -P 0x5c 3145000 2000', 'read -P 0x5c 3145000 2000', 'read -P 0 3147000 1000');
  });

  it('write -z, write -z -u, write -z -n (fast zero) and discard read back as zeros', async () => {
    await io('write -P 0x66 24M 4M');
    await io('write -z 24M 1M', 'read -P 0 24M 1M', 'read -P 0x66 25M 1M');
    await io('write -z -u 25M 1M', 'read -P 0 25M 1M');
    await io('write -z -n 26M 1M', 'read -P 0 26M 1M');
    await io('discard 27M 1M', 'read -P 0 27M 1M');
    // A fast zero that would need to write data is refused, and qemu-io says so.
    const r = await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 28M 1M', '-c', 'write -z -n 28M 4k', s.uri]);
    assert.match(r.stdout + r.stderr, /not supported/i);
  });

  it('32 MiB requests (the maximum) both ways', async () => {
    await io('write -P 0x22 32M 32M', 'read -P 0x22 32M 32M');
  });

  it('the last sector and past the end', async () => {
    await io(`write -P 0x7e ${SIZE - 512} 512`, `read -P 0x7e ${SIZE - 512} 512`);
    const r = await exec('qemu-io', ['-f', 'raw', '-c', `read ${SIZE - 512} 1024`, s.uri]);
    assert.match(r.stdout + r.stderr, /Input\/output error|Invalid argument|out of range|beyond/i);
  });
});

describe('nbdinfo', { skip: needTool('nbdinfo') }, () => {
  let s: Served;
  let ro: Served;
  before(async () => {
    s = await serveCopy('ninfo', ['--export-name', 'disk']);
    ro = await serveCopy('ninfo-ro', ['-r']);
  });
  after(async () => {
    await stopped(s);
    await stopped(ro);
  });

  it('--map shows data and holes from block status', async () => {
    const out = await must('nbdinfo', ['--map', s.uri]);
    const rows = out
      .trim()
      .split('\n')
      .map((l: string) => l.trim().split(/\s+/));
    const data = rows.filter((r: string[]) => r[2] === '0').map((r: string[]) => [Number(r[0]), Number(r[1])]);
    assert.deepEqual(data, DATA_BLOCKS);
    assert.ok(rows.some((r: string[]) => r[2] === '3' && r[3] === 'hole,zero'), out);
    const totals = await must('nbdinfo', ['--map', '--totals', s.uri]);
    assert.match(totals, new RegExp(`^\\s*${5 * MiB}\\s+[\\d.]+%\\s+0\\s+data`, 'm'));
  });

  // qemu-img starts every block of a new VHDX as ZERO (fixed disks too, with their space
  // preallocated): unwritten ranges of a dynamic disk have no storage behind them and must show
  // as holes (clients that skip holes rely on it); a fixed disk's keep their storage: zero alone.
  it('--map over images qemu-img made and qemu-io partly wrote: holes where a dynamic disk was never written, zero alone on a fixed disk', { skip: needTool('qemu-img', 'qemu-io') }, async () => {
    const unwrittenBySubformat: [string, string][] = [
      ['dynamic', '3 hole,zero'],
      ['fixed', '2 zero'],
    ];
    for (const [subformat, unwritten] of unwrittenBySubformat) {
      const path = join(dir, `qemu-${subformat}.vhdx`);
      await must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', `subformat=${subformat},block_size=1M`, path, String(16 * MiB)]);
      await must('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x5a 1M 1M', '-c', 'write -P 0x33 5M 4k', path]);
      const sock = join(dir, `qemu-${subformat}.sock`);
      const q = await startServe(['-r', '--socket', sock, path]);
      try {
        const rows = (await must('nbdinfo', ['--map', q.uri]))
          .trim()
          .split('\n')
          .map((l: string) => l.trim().split(/\s+/));
        assert.deepEqual(
          rows.map((r: string[]) => [Number(r[0]) / MiB, Number(r[1]) / MiB, `${r[2]} ${r[3]}`]),
          [
            [0, 1, unwritten],
            [1, 1, '0 data'],
            [2, 3, unwritten],
            [5, 1, '0 data'],
            [6, 10, unwritten],
          ],
          subformat,
        );
      } finally {
        await stopped(q);
      }
    }
  });

  it('--can reports what is advertised; --is read-only tells the two exports apart', async () => {
    for (const f of ['flush', 'fua', 'trim', 'zero', 'fast-zero', 'multi-conn', 'df', 'cache']) {
      assert.equal((await exec('nbdinfo', ['--can', f, s.uri])).code, 0, f);
    }
    assert.equal((await exec('nbdinfo', ['--is', 'read-only', s.uri])).code, 2);
    assert.equal((await exec('nbdinfo', ['--is', 'read-only', ro.uri])).code, 0);
    for (const f of ['trim', 'zero', 'fua']) assert.equal((await exec('nbdinfo', ['--can', f, ro.uri])).code, 2, `ro ${f}`);
    assert.equal((await exec('nbdinfo', ['--is', 'rotational', s.uri])).code, 2);
  });

  it('--list and --json name the export and its size', async () => {
    assert.equal(s.uri, unixUri(s.sock, 'disk'));
    const list = await must('nbdinfo', ['--list', '--json', unixUri(s.sock)]);
    const j = JSON.parse(list);
    assert.deepEqual(
      j.exports.map((e: NbdinfoExport) => [e['export-name'], e['export-size']]),
      [['disk', SIZE]],
    );
    const one = JSON.parse(await must('nbdinfo', ['--json', s.uri]));
    assert.equal(one.exports[0]['block_size_maximum'], 32 * MiB);
    assert.ok(one.exports[0].contexts.includes('base:allocation'));
  });
});

describe('nbdcopy', { skip: needTool('nbdcopy') }, () => {
  let s: Served;
  before(async () => (s = await serveCopy('ncopy')));
  after(() => stopped(s));

  it('NBD -> file: exact and sparse (holes are not written)', async () => {
    const out = join(dir, 'ncopy-out.raw');
    await must('nbdcopy', [s.uri, out]);
    assert.equal(sha256File(out), sha256File(srcRaw));
    // 5 MiB of data blocks; the holes stay holes in the output.
    assert.ok(statSync(out).blocks * 512 <= 8 * MiB, `allocated ${statSync(out).blocks * 512}`);
  });

  it('file -> NBD with --flush, over several connections (multi-conn)', async () => {
    const other = join(dir, 'ncopy-in.raw');
    const b = noise(SIZE, 7);
    b.fill(0, 5 * MiB, 50 * MiB);
    writeFileSync(other, b);
    await must('nbdcopy', ['--flush', '--connections=4', other, s.uri]);
    const back = join(dir, 'ncopy-back.raw');
    await must('nbdcopy', ['--connections=1', '--synchronous', s.uri, back]);
    assert.equal(sha256File(back), sha256File(other));
  });
});

describe('fio nbd engine', { skip: needTool('fio') }, () => {
  let s: Served;
  before(async () => (s = await serveCopy('fio')));
  after(() => stopped(s));

  it('a write-then-verify job and a short random mixed job', async () => {
    const engines = await exec('fio', ['--enghelp']);
    if (!/\bnbd\b/.test(engines.stdout)) return;
    // In the scratch folder, and without a verify state file: fio leaves nothing behind.
    const opts = { cwd: dir };
    await must('fio', ['--name=v', '--ioengine=nbd', `--uri=${s.uri}`, '--rw=randwrite', '--bs=64k', '--size=16m', '--offset=16m', '--iodepth=16', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0', '--randrepeat=0'], opts);
    await must('fio', ['--name=rw', '--ioengine=nbd', `--uri=${s.uri}`, '--rw=randrw', '--bs=4k', '--size=8m', '--iodepth=32', '--numjobs=2', '--offset_increment=8m', '--io_size=4m', '--fsync=64'], opts);
    await must('fio', ['--name=t', '--ioengine=nbd', `--uri=${s.uri}`, '--rw=randtrim', '--bs=1m', '--size=8m', '--offset=48m'], opts);
  });
});
