// Write interop with QEMU: qemu-io writes into images we create read back right through us, and
// our writes (through the library) into images `qemu-img create` made read back right through
// `qemu-io -c 'read -P ...'` and `qemu-img compare` against a raw model; `qemu-img check` passes
// on every image either side wrote. Skips visibly without qemu-img / qemu-io.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { NodeFileSource, VhdxImage, openFile } from '../src/node.js';
import { planLayout, writeNewImage, type LayoutOptions } from '../src/driver/layout.js';
import { needTool, run, scratch } from './helpers/env.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const skip = needTool('qemu-img', 'qemu-io');

function qemuIo(path: string, commands: readonly string[], { readOnly = false } = {}): void {
  const args = ['-f', 'vhdx', ...(readOnly ? ['-r'] : []), ...commands.flatMap((c) => ['-c', c]), path];
  const r = spawnSync('qemu-io', args, { encoding: 'utf8' });
  // qemu-io reports a failed pattern check with exit status 1 (and says so on stdout).
  assert.equal(r.status, 0, `qemu-io ${commands.join(' ; ')}: ${r.stdout}${r.stderr}`);
  assert.doesNotMatch(r.stdout, /failed|error/i, r.stdout);
}

function qemuCheck(path: string): void {
  const r = spawnSync('qemu-img', ['check', '-f', 'vhdx', path], { encoding: 'utf8' });
  assert.equal(r.status, 0, `qemu-img check ${path}: ${r.stdout}${r.stderr}`);
}

function qemuCompare(path: string, rawPath: string): void {
  const r = spawnSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', path, rawPath], { encoding: 'utf8' });
  assert.equal(r.status, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

async function readAll(img: VhdxImage): Promise<Uint8Array> {
  const b = new Uint8Array(img.size);
  await img.read(0, b);
  return b;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Apply a qemu-io style command list to a raw model (write -P, write -z). */
function applyQemuCommands(model: Uint8Array, commands: readonly string[]): void {
  for (const c of commands) {
    let m: RegExpExecArray | null;
    if ((m = /^write -P (0x[0-9a-f]+) (\d+) (\d+)$/.exec(c))) model.fill(Number(m[1]), Number(m[2]), Number(m[2]) + Number(m[3]));
    else if ((m = /^write -z (\d+) (\d+)$/.exec(c))) model.fill(0, Number(m[1]), Number(m[1]) + Number(m[2]));
    else throw new Error(`unknown command ${c}`);
  }
}

const OUR_LAYOUTS: { name: string; layout: LayoutOptions & { blockSize: number } }[] = [
  { name: 'dynamic, 1 MiB blocks', layout: { virtualSize: 64 * MiB, blockSize: MiB } },
  // (QEMU opens only 512-byte logical sectors.)
  { name: 'dynamic, 4 MiB blocks, 2 MiB log', layout: { virtualSize: 48 * MiB, blockSize: 4 * MiB, logSize: 2 * MiB } },
  { name: 'fixed, 1 MiB blocks', layout: { virtualSize: 24 * MiB, blockSize: MiB, fixed: true } },
];

for (const { name, layout } of OUR_LAYOUTS) {
  test(`interop: qemu-io writes into our ${name} image read back right through us`, { skip }, async () => {
    const dir = scratch('vhdx-interop-w-');
    const path = join(dir, 'ours.vhdx');
    const src = await NodeFileSource.open(path, { readOnly: false, create: true });
    await writeNewImage(src, planLayout(layout));
    await src.close();
    const size = layout.virtualSize;
    const bs = layout.blockSize;
    const commands = [
      `write -P 0xa1 0 ${64 * KiB}`,
      `write -P 0xb2 ${bs - 4 * KiB} ${bs + 8 * KiB}`, // across a block boundary
      `write -P 0xc3 ${3 * bs} ${bs}`, // a whole block
      `write -P 0xd4 ${size - 4 * KiB} ${4 * KiB}`, // the last sector(s)
      `write -P 0xe5 ${5 * bs + 12 * KiB} ${4 * KiB}`,
      `write -z ${3 * bs} ${bs}`, // zero a whole block qemu wrote
      `write -z ${5 * bs + 8 * KiB} ${8 * KiB}`, // zero part of a block (qemu's VHDX discard is advisory: not used)
      `write -P 0xf6 ${32 * KiB} ${4 * KiB}`, // overwrite in place
    ];
    qemuIo(path, commands);
    const model = new Uint8Array(size);
    applyQemuCommands(model, commands);
    qemuCheck(path);

    const img = await openFile(path);
    const got = await readAll(img);
    const i = firstDifference(got, model);
    assert.equal(i, -1, `byte ${i} reads ${got[i]} through us, qemu-io wrote ${model[i]}`);
    await img.close();

    // Then we write on top, and qemu reads it all back.
    const rw = await openFile(path, { readOnly: false });
    const ours = new Uint8Array(bs).fill(0x5a);
    await rw.write(2 * bs + 512, ours.subarray(0, 8 * KiB));
    model.fill(0x5a, 2 * bs + 512, 2 * bs + 512 + 8 * KiB);
    await rw.write(0, ours.subarray(0, 4 * KiB), { fua: true });
    model.fill(0x5a, 0, 4 * KiB);
    await rw.writeZeroes(bs, bs);
    model.fill(0, bs, 2 * bs);
    await rw.close();
    const rawPath = join(dir, 'model.raw');
    writeFileSync(rawPath, model);
    qemuCompare(path, rawPath);
    qemuCheck(path);
  });
}

const QEMU_IMAGES = [
  { name: 'dynamic, 1 MiB blocks', opts: 'subformat=dynamic,block_size=1M', size: 64 * MiB, bs: MiB },
  { name: 'dynamic, default blocks (8 MiB)', opts: 'subformat=dynamic', size: 96 * MiB, bs: 8 * MiB },
  { name: 'dynamic, 1 MiB blocks, block_state_zero=off', opts: 'subformat=dynamic,block_size=1M,block_state_zero=off', size: 32 * MiB, bs: MiB },
  { name: 'fixed, 1 MiB blocks', opts: 'subformat=fixed,block_size=1M', size: 24 * MiB, bs: MiB },
];

for (const q of QEMU_IMAGES) {
  test(`interop: our writes into a qemu-img ${q.name} image read back right through qemu`, { skip }, async () => {
    const dir = scratch('vhdx-interop-q-');
    const path = join(dir, 'qemu.vhdx');
    run('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', q.opts, path, String(q.size)]);
    const img = await openFile(path, { readOnly: false });
    assert.equal(img.blockSize, q.bs, 'block size as expected');
    const model = new Uint8Array(q.size);
    const bs = q.bs;
    // Writes whose final ranges do not overlap, each with one byte value, for qemu-io read -P.
    const writes = [
      { p: 0x11, off: 0, len: 4 * KiB },
      { p: 0x22, off: bs - 2 * KiB, len: 6 * KiB }, // across a block boundary
      { p: 0x33, off: 2 * bs + 777, len: 1000 }, // unaligned
      { p: 0x44, off: 4 * bs, len: bs }, // a whole block
      { p: 0x55, off: q.size - 8 * KiB, len: 8 * KiB }, // the end of the disk
      { p: 0x66, off: 5 * bs + 64 * KiB, len: 128 * KiB, fua: true },
    ];
    await Promise.all(writes.slice(0, 3).map((w) => img.write(w.off, new Uint8Array(w.len).fill(w.p))));
    await img.flush();
    for (const w of writes.slice(3)) await img.write(w.off, new Uint8Array(w.len).fill(w.p), { fua: w.fua });
    for (const w of writes) model.fill(w.p, w.off, w.off + w.len);
    // Zeroing and discard: a whole block, part of an allocated block, and an unallocated range.
    await img.write(6 * bs, new Uint8Array(bs).fill(0x77));
    await img.writeZeroes(6 * bs, bs);
    await img.write(7 * bs, new Uint8Array(bs).fill(0x78));
    model.fill(0x78, 7 * bs, 8 * bs);
    await img.writeZeroes(7 * bs + 4 * KiB, 8 * KiB);
    model.fill(0, 7 * bs + 4 * KiB, 7 * bs + 12 * KiB);
    await img.discard(7 * bs + bs / 2, 4 * KiB);
    model.fill(0, 7 * bs + bs / 2, 7 * bs + bs / 2 + 4 * KiB);
    await img.discard(8 * bs, 2 * bs);
    await img.close();

    qemuCheck(path);
    const reads = writes.map((w) => `read -P ${'0x' + w.p.toString(16)} ${w.off} ${w.len}`);
    reads.push(`read -P 0 ${6 * bs} ${bs}`, `read -P 0 ${7 * bs + 4 * KiB} ${8 * KiB}`, `read -P 0x78 ${7 * bs} ${4 * KiB}`);
    qemuIo(path, reads, { readOnly: true });
    const rawPath = join(dir, 'model.raw');
    writeFileSync(rawPath, model);
    qemuCompare(path, rawPath);

    // And our reader agrees with the model after a second session reopens it.
    const ro = await VhdxImage.open(await NodeFileSource.open(path));
    const got = await readAll(ro);
    const i = firstDifference(got, model);
    assert.equal(i, -1, `byte ${i} reads ${got[i]}, the model has ${model[i]}`);
    await ro.close();
  });
}
