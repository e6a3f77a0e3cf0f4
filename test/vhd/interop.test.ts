// VHD interop with the peer tools: qemu-img (-f vpc) reads our images as we do and we read its
// own (fixed and dynamic, with and without force_size, sizes that are and are not CHS-exact);
// libvhdi (vhdiinfo, pyvhdi) and 7-Zip (7zz x) read ours, differencing chains included, to the
// same bytes; footers naming each creator application are sized by each reader as
// geometry.ts says. Content is compared by SHA-256 of the whole virtual disk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemorySource, VhdImage, type CreateVhdOptions } from '../../src/index.js';
import { chsForSectors, chsRoundUp, sizesByReader } from '../../src/vhd/geometry.js';
import { needTool } from '../helpers/env.js';
import { must, needPyvhdi, pyvhdiDigest, shmScratch } from '../helpers/tools.js';
import { pattern } from '../helpers/model.js';
import { KiB, MiB, copyOf, newVhd, patchFooter } from '../helpers/vhd.js';

const dir = shmScratch('vhd-interop-');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function ourDigest(path: string, parentPath?: string) {
  const open = (p: string) => VhdImage.open(new MemorySource(readFileSync(p)));
  const img = await VhdImage.open(new MemorySource(readFileSync(path)), parentPath ? { parent: () => open(parentPath) } : {});
  const b = new Uint8Array(img.size);
  await img.read(0, b);
  await img.close();
  return { size: img.size, sha256: sha(b) };
}

async function qemuDigest(path: string) {
  const raw = join(dir, 'q.raw');
  await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path, raw]);
  const b = readFileSync(raw);
  return { size: b.length, sha256: sha(b) };
}

async function sevenZipDigest(path: string) {
  const out = join(dir, `7z-${Math.random().toString(36).slice(2)}`);
  await must('7zz', ['x', '-y', `-o${out}`, path]);
  const name = readdirSync(out)[0]!;
  const b = readFileSync(join(out, name));
  return { size: b.length, sha256: sha(b) };
}

/** Our image with data at a few places: fixed or dynamic, `size` bytes. */
async function ourImage(name: string, opts: CreateVhdOptions): Promise<string> {
  const { src } = await newVhd(opts);
  const img = await VhdImage.open(src, { readOnly: false });
  const size = img.size;
  for (const [i, off] of [0, 3 * MiB + 123, size - 5000, Math.floor(size / 2 / 512) * 512 + 700 * KiB].entries()) await img.write(off, pattern(i + 1, Math.min(70 * KiB, size - off)));
  await img.writeZeroes(MiB, 4096);
  await img.close();
  const path = join(dir, name);
  writeFileSync(path, src.bytes());
  return path;
}

const SIZES: [string, number][] = [
  ['CHS-exact', 12603392], // what qemu rounds 12 MiB to
  ['not CHS-exact', 12 * MiB],
];

for (const subformat of ['fixed', 'dynamic'] as const) {
  for (const [what, size] of SIZES) {
    test(`qemu-img reads our ${subformat} VHD of a ${what} size as we do`, { skip: needTool('qemu-img') }, async () => {
      const path = await ourImage(`ours-${subformat}-${size}.vhd`, { size, subformat });
      const info = JSON.parse(await must('qemu-img', ['info', '-f', 'vpc', '--output=json', path]));
      assert.equal(info['virtual-size'], size);
      assert.deepEqual(await qemuDigest(path), await ourDigest(path));
    });

    test(`libvhdi and 7-Zip read our ${subformat} VHD of a ${what} size as we do`, { skip: needTool('7zz', 'vhdiinfo') }, async (t) => {
      const path = await ourImage(`ours-lib-${subformat}-${size}.vhd`, { size, subformat });
      const ours = await ourDigest(path);
      const info = await must('vhdiinfo', [path]);
      assert.match(info, new RegExp(`Media size\\s*:.*\\(${size} bytes\\)`));
      assert.deepEqual(await sevenZipDigest(path), ours);
      if (await needPyvhdi()) t.diagnostic('pyvhdi not installed: its digest not compared');
      else assert.deepEqual(await pyvhdiDigest(path), ours);
    });
  }
}

for (const subformat of ['fixed', 'dynamic'] as const) {
  for (const forceSize of [false, true]) {
    for (const [what, size] of SIZES) {
      test(`we read qemu-img's ${subformat} VHD (${forceSize ? 'force_size' : 'no force_size'}, ${what}) as qemu does, and write into it`, { skip: needTool('qemu-img', 'qemu-io') }, async () => {
        const path = join(dir, `qemu-${subformat}-${forceSize}-${size}.vhd`);
        await must('qemu-img', ['create', '-q', '-f', 'vpc', '-o', `subformat=${subformat}${forceSize ? ',force_size=on' : ''}`, path, String(size)]);
        await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 1536 70k', '-c', `write -P 0xa5 ${3 * MiB + 512} 4k`, path]);
        const ours = await ourDigest(path);
        const theirs = await qemuDigest(path);
        assert.deepEqual(ours, theirs);
        if (forceSize) assert.equal(ours.size, size);
        // Our writes into qemu's image read back in qemu.
        const src = new MemorySource(readFileSync(path));
        const img = await VhdImage.open(src, { readOnly: false });
        await img.write(5 * MiB + 100, new Uint8Array(9000).fill(0x3c));
        await img.write(1536, new Uint8Array(512).fill(0x77));
        await img.close();
        writeFileSync(path, src.bytes());
        await must('qemu-io', ['-f', 'vpc', '-c', `read -P 0x3c ${5 * MiB + 100} 9000`, '-c', 'read -P 0x77 1536 512', '-c', `read -P 0x5a 2048 ${70 * KiB - 512}`, '-c', `read -P 0xa5 ${3 * MiB + 512} 4k`, path]);
        assert.deepEqual(await qemuDigest(path), await ourDigest(path));
      });
    }
  }
}

test('libvhdi and 7-Zip read our differencing VHD over its parent as we do', { skip: needTool('7zz') }, async (t) => {
  const { src: psrc } = await newVhd({ size: 9 * MiB });
  const p = await VhdImage.open(psrc, { readOnly: false });
  await p.write(0, pattern(1, 5 * MiB));
  await p.close();
  const parentPath = join(dir, 'base.vhd');
  writeFileSync(parentPath, psrc.bytes());
  const parent = await VhdImage.open(copyOf(psrc));
  const { src: csrc } = await newVhd({ parent, parentPaths: [{ platform: 'W2ru', path: '.\\base.vhd' }, { platform: 'W2ku', path: 'C:\\vm\\base.vhd' }] });
  const c = await VhdImage.open(csrc, { readOnly: false, parent: async () => VhdImage.open(copyOf(psrc)) });
  await c.write(MiB + 100, pattern(2, 1000)); // unaligned: sectors completed from the parent
  await c.write(4 * MiB - 10, pattern(3, 20)); // across a block boundary
  await c.writeZeroes(6 * MiB, 2 * MiB); // a whole block of zeros over the parent's holes
  await c.write(8 * MiB + 4096 * 3 + 7, pattern(4, 5));
  await c.close();
  const childPath = join(dir, 'child.vhd');
  writeFileSync(childPath, csrc.bytes());
  const ours = await ourDigest(childPath, parentPath);
  assert.deepEqual(await sevenZipDigest(childPath), ours);
  if (await needPyvhdi()) return t.diagnostic('pyvhdi not installed');
  const script = `
import hashlib, sys, pyvhdi
c = pyvhdi.file(); c.open(sys.argv[1]); p = pyvhdi.file(); p.open(sys.argv[2]); c.set_parent(p)
s = c.get_media_size(); print(s, hashlib.sha256(c.read(s)).hexdigest())
`;
  const [size, digest] = (await must('/usr/bin/python3', ['-c', script, childPath, parentPath])).trim().split(' ');
  assert.deepEqual({ size: Number(size), sha256: digest }, ours);
});

// Footers naming each creator application, for a disk whose stored size (12 MiB + 4 KiB) is not
// what its CHS geometry gives (12 MiB + 20 KiB, qemu's rounding of 12 MiB), both inside the same
// 7 blocks of 2 MiB (7-Zip wants exactly the blocks the current size needs): each reader takes the size its
// rule gives. qemu 7.2 here follows the 2.6-to-9.2 rule; libvhdi and 7-Zip always the current size.
const CREATORS = ['qemu', 'qem2', 'win ', 'vpc ', 'd2v ', 'CTXS', 'tap\0', 'wa\0\0'];
for (const subformat of ['fixed', 'dynamic'] as const) {
  test(`${subformat} VHDs from every creator application are sized by each reader's rule`, { skip: needTool('qemu-img', 'vhdiinfo', '7zz') }, async () => {
    const version = (await must('qemu-img', ['--version'])).match(/version (\d+)\./);
    const qemuMajor = Number(version?.[1] ?? 0);
    // 12 MiB + 20 KiB of data, so that either size fits; the footer says 12 MiB + 4 KiB.
    const stored = 12 * MiB + 4096;
    const chsSize = chsRoundUp(12 * MiB);
    assert.ok(chsSize !== null);
    const g = chsForSectors(chsSize / 512);
    const { src } = await newVhd({ size: chsSize, subformat });
    for (const app of CREATORS) {
      const bytes = patchFooter(src.bytes().slice(), () => ({ creatorApplication: app, currentSize: stored, originalSize: BigInt(stored), ...g }), { at0: subformat !== 'fixed' });
      const img = await VhdImage.open(new MemorySource(bytes));
      const want = sizesByReader(img.footer);
      assert.equal(img.size, want.qemu10, `ours for ${JSON.stringify(app)}`);
      const path = join(dir, `creator-${subformat}-${app.replace(/\0/g, '0').trim()}.vhd`);
      writeFileSync(path, bytes);
      const info = JSON.parse(await must('qemu-img', ['info', '-f', 'vpc', '--output=json', path]));
      assert.equal(info['virtual-size'], qemuMajor >= 10 ? want.qemu10 : want.qemuLegacy, `qemu ${qemuMajor} for ${JSON.stringify(app)}`);
      assert.match(await must('vhdiinfo', [path]), new RegExp(`\\(${want.originalSize} bytes\\)`), `libvhdi for ${JSON.stringify(app)}`);
      // (7-Zip finds a fixed disk's start from its current size: it opens only files of exactly size + 512 bytes.)
      if (subformat === 'dynamic') assert.equal((await sevenZipDigest(path)).size, want.currentSize, `7-Zip for ${JSON.stringify(app)}`);
      // The overrides.
      assert.equal((await VhdImage.open(new MemorySource(bytes), { sizeRule: 'current-size' })).size, stored);
      assert.equal((await VhdImage.open(new MemorySource(bytes), { sizeRule: 'chs' })).size, chsSize);
    }
  });
}
