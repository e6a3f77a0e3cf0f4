// Cache modes as qemu-img has them (issue 12): convert writes its new file with cache mode unsafe
// (no flush: convert was 4.5x slower than qemu-img on a disk-backed file system because it
// fdatasync'ed the whole output), -t writeback flushes once at the end, writethrough and
// directsync open with O_DSYNC, none and directsync with O_DIRECT (-T for the source); every
// mode gives the same bytes. create and io keep flushing. Seen through strace's system calls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, needTool, scratch } from '../helpers/env.js';
import { exec, vhdx, type ExecResult } from '../helpers/tools.js';
import { openFile } from '../../src/node.js';

const dir = scratch('vhdx-cli-cache-'); // the temp folder: disk-backed on most machines
const noStrace = needTool('strace');
const MiB = 1024 * 1024;

/** A CLI run under strace, with the traced calls' lines. */
type Traced = ExecResult & { calls: string[] };

/** Run the CLI under strace: { code, stderr, calls } with the traced calls' lines. */
async function traced(args: string[], calls: string): Promise<Traced> {
  const log = join(dir, `strace-${Math.random().toString(36).slice(2)}.txt`);
  const r = await exec('strace', ['-f', '-qq', '-o', log, '-e', `trace=${calls}`, process.execPath, cliPath, ...args]);
  return { ...r, calls: readFileSync(log, 'utf8').split('\n').filter((l) => l.trim() !== '') };
}

/** The virtual disk of a VHDX, read in this process. */
async function disk(path: string): Promise<Buffer> {
  const img = await openFile(path);
  try {
    const b = Buffer.alloc(img.size);
    await img.read(0, b);
    return b;
  } finally {
    await img.close();
  }
}

const src = join(dir, 'src.raw');
writeFileSync(src, Buffer.alloc(3 * MiB + 1000, 0x5c));
const image = join(dir, 'src.vhdx');

test('convert: no flush of the new file by default, one with -t writeback, O_DSYNC and O_DIRECT where asked; same bytes in every mode', { skip: noStrace }, async () => {
  assert.equal((await vhdx(['convert', '-f', 'raw', '-O', 'vhdx', '-o', 'block_size=1M', src, image])).code, 0);
  const flushes = (r: Traced) => r.calls.filter((l) => /\b(fdatasync|fsync)\(/.test(l)).length;
  // The traced open of the file, or '' when there was none.
  const opened = (r: Traced, name: string) => r.calls.find((l) => l.includes('openat(') && l.includes(name) && !l.includes('.lock')) ?? '';
  const want = readFileSync(src);
  const modes: [string | null, (r: Traced, format: string) => void][] = [
    [null, (r) => assert.equal(flushes(r), 0, 'the default (unsafe, as qemu-img) does not flush')],
    ['unsafe', (r) => assert.equal(flushes(r), 0)],
    // A raw output is flushed once at the end; a VHDX one also where its log needs it.
    ['writeback', (r, format) => (format === 'raw' ? assert.equal(flushes(r), 1) : assert.ok(flushes(r) >= 1))],
    ['writethrough', (r) => assert.match(opened(r, 'out'), /O_DSYNC/)],
    ['none', (r) => assert.match(opened(r, 'out'), /O_DIRECT/)],
    ['directsync', (r) => assert.match(opened(r, 'out'), /O_DIRECT.*O_DSYNC|O_DSYNC.*O_DIRECT/)],
  ];
  for (const [mode, check] of modes) {
    for (const format of ['raw', 'vhdx']) {
      const out = join(dir, `out-${mode}.${format}`);
      const r = await traced(['convert', ...(mode ? ['-t', mode] : []), '-O', format, image, out], 'openat,fdatasync,fsync');
      assert.equal(r.code, 0, r.stderr);
      check(r, format);
      const bytes = format === 'raw' ? readFileSync(out) : await disk(out);
      assert.ok(bytes.subarray(0, want.length).equals(want), `${mode ?? 'default'} -O ${format}: the same bytes`);
    }
  }
  // -T: the source through O_DIRECT.
  const r = await traced(['convert', '-T', 'none', image, join(dir, 'direct-src.raw')], 'openat');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.calls.some((l) => l.includes('src.vhdx') && l.includes('O_DIRECT')), 'the source is opened with O_DIRECT');
  assert.ok(readFileSync(join(dir, 'direct-src.raw')).subarray(0, want.length).equals(want));
});

test('create and io keep their durability: they flush', { skip: noStrace }, async () => {
  const made = await traced(['create', '-q', join(dir, 'durable.vhdx'), '8M'], 'fdatasync,fsync');
  assert.equal(made.code, 0, made.stderr);
  assert.ok(made.calls.some((l) => /fdatasync|fsync/.test(l)), 'create flushes the new image');
  const wrote = await traced(['io', '-q', '-c', 'write 0 4k', join(dir, 'durable.vhdx')], 'fdatasync,fsync');
  assert.equal(wrote.code, 0, wrote.stderr);
  assert.ok(wrote.calls.some((l) => /fdatasync|fsync/.test(l)), 'io commits with flushes');
});

test('an unknown cache mode is a usage error naming the modes', async () => {
  const r = await vhdx(['convert', '-t', 'fast', src, join(dir, 'x.raw')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /-t: unknown cache mode fast \(writeback, unsafe, writethrough, none, directsync\)/);
  const s = await vhdx(['convert', '-T', 'fast', src, join(dir, 'x.raw')]);
  assert.match(s.stderr, /-T: unknown cache mode fast/);
});
