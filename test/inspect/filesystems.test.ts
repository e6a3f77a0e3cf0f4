// Recognition drivers of src/inspect (xfs, btrfs, swap, lvm2, luks, bitlocker, refs, iso9660):
// type, label, UUID and size as the format's own tools and blkid report them; crafted headers
// for the formats no tool here makes; hostile or truncated regions give null, never an error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { detectFilesystem, usedRuns, inspectDisk, type FilesystemInfo, type Run } from '../../src/index.js';
import { swapDriver } from '../../src/inspect/swap.js';
import { encodeGuid } from '../../src/codec/guid.js';
import { needTool, run } from '../helpers/env.js';
import { shmScratch } from '../helpers/tools.js';
import { fileDevice, memDevice, MiB, sparseFile } from '../helpers/disk.js';

const dir = shmScratch('vhdx-inspect-fs-');
const BLKID_TYPES: Record<string, string> = { crypto_LUKS: 'luks', LVM2_member: 'lvm2', BitLocker: 'bitlocker' };

/** blkid's low-level probe of a file: { TYPE, LABEL, UUID, ... }. */
function blkid(path: string): Record<string, string | undefined> {
  const out = run('blkid', ['-p', '-o', 'export', path]);
  // export format escapes spaces and quotes with a backslash
  return Object.fromEntries(out.trim().split('\n').map((l) => l.split(/=(.*)/s).slice(0, 2).map((v) => v.replace(/\\(.)/g, '$1'))));
}

async function detectFile(path: string): Promise<FilesystemInfo | null> {
  const dev = await fileDevice(path);
  try {
    return await detectFilesystem(dev, { start: 0, length: dev.size });
  } finally {
    await dev.close();
  }
}

async function agreesWithBlkid(path: string): Promise<FilesystemInfo> {
  const fs = await detectFile(path);
  assert.ok(fs, `nothing recognised in ${path}`);
  if (!needTool('blkid')) {
    const b = blkid(path);
    assert.equal(fs.type, BLKID_TYPES[b.TYPE ?? ''] ?? b.TYPE);
    assert.equal(fs.label, b.LABEL ?? null);
    assert.equal(fs.uuid, b.UUID ?? null);
  }
  return fs;
}

test('swap (mkswap, 4 KiB and 16 KiB pages): label, UUID, size; only the header page is used', { skip: needTool('mkswap') }, async () => {
  for (const page of [4096, 16384]) {
    const path = join(dir, `swap-${page}.img`);
    sparseFile(path, 8 * MiB);
    run('mkswap', ['-q', '-p', String(page), '-L', 'swap label', '-U', '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', path], { stdio: ['ignore', 'ignore', 'ignore'] });
    const fs = await agreesWithBlkid(path);
    assert.deepEqual(fs, { type: 'swap', label: 'swap label', uuid: '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', size: 8 * MiB, state: 'clean', untrusted: null });
    const dev = await fileDevice(path);
    const runs: Run[] = [];
    for await (const r of swapDriver.usedRuns!(dev, { start: 0, length: dev.size }, fs)) runs.push(r);
    assert.deepEqual(runs, [{ start: 0, length: page }]);
    await dev.close();
  }
});

test('a swap area holding a hibernation image is hibernated, untrusted, and counted as used in full', { skip: needTool('mkswap') }, async () => {
  const path = join(dir, 'hibernated.img');
  sparseFile(path, 4 * MiB);
  run('mkswap', ['-q', path]);
  const bytes = new Uint8Array(readFileSync(path));
  bytes.set(new TextEncoder().encode('S1SUSPEND\0'), 4096 - 10);
  const dev = memDevice(bytes);
  const fs = await detectFilesystem(dev, { start: 0, length: dev.size });
  assert.equal(fs?.state, 'hibernated');
  assert.match(fs?.untrusted ?? '', /hibernation/);
  const c = await inspectDisk(dev);
  assert.equal(c.partitions[0]?.filesystem?.trusted, false);
  assert.equal(c.usedBytes, 4 * MiB);
});

test('XFS (mkfs.xfs): label, UUID, size; a damaged superblock CRC makes it untrusted', { skip: needTool('mkfs.xfs') }, async () => {
  const path = join(dir, 'xfs.img');
  sparseFile(path, 300 * MiB);
  run('mkfs.xfs', ['-q', '-L', 'xfs-label', path]);
  const fs = await agreesWithBlkid(path);
  assert.equal(fs.type, 'xfs');
  assert.equal(fs.size, 300 * MiB);
  assert.equal(fs.untrusted, null);
  const sb = new Uint8Array(readFileSync(path).subarray(0, 64 * 1024));
  sb[200]! ^= 0xff;
  const big = new Uint8Array(300 * MiB);
  big.set(sb);
  const damaged = await detectFilesystem(memDevice(big), { start: 0, length: big.length });
  assert.match(damaged?.untrusted ?? '', /CRC/);
});

test('Btrfs (mkfs.btrfs): label, UUID, size, state', { skip: needTool('mkfs.btrfs') }, async () => {
  const path = join(dir, 'btrfs.img');
  sparseFile(path, 128 * MiB);
  run('mkfs.btrfs', ['-q', '-L', 'btrfs-label', path]);
  const fs = await agreesWithBlkid(path);
  assert.deepEqual([fs.type, fs.size, fs.state, fs.untrusted], ['btrfs', 128 * MiB, 'clean', null]);
});

test('LUKS 1 and 2 (cryptsetup luksFormat): UUID, LUKS2 label', { skip: needTool('cryptsetup') }, async () => {
  for (const type of ['luks1', 'luks2']) {
    const path = join(dir, `${type}.img`);
    sparseFile(path, 20 * MiB);
    const label = type === 'luks2' ? ['--label', 'secret-label'] : [];
    run('cryptsetup', ['luksFormat', '-q', '--type', type, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', ...label, path, '-'], { input: 'pass' });
    const fs = await agreesWithBlkid(path);
    assert.equal(fs.type, 'luks');
    assert.equal(fs.label, type === 'luks2' ? 'secret-label' : null);
  }
});

test('ISO 9660 (genisoimage, with Joliet): label, UUID from the creation date, size', { skip: needTool('genisoimage') }, async () => {
  const tree = join(dir, 'iso-tree');
  mkdirSync(join(tree, 'sub'), { recursive: true });
  writeFileSync(join(tree, 'sub', 'a.txt'), 'hello\n');
  const path = join(dir, 'disc.iso');
  run('genisoimage', ['-quiet', '-V', 'MY_DISC', '-J', '-o', path, tree]);
  const fs = await agreesWithBlkid(path);
  assert.equal(fs.type, 'iso9660');
  assert.equal(fs.size, statSync(path).size);
});

test('crafted LVM2 physical volume label: UUID in LVM\'s grouping, device size', async () => {
  const b = new Uint8Array(8 * MiB);
  const label = b.subarray(512, 1024);
  label.set(new TextEncoder().encode('LABELONE'), 0);
  new DataView(label.buffer, label.byteOffset).setBigUint64(8, 1n, true);
  new DataView(label.buffer, label.byteOffset).setUint32(20, 32, true);
  label.set(new TextEncoder().encode('LVM2 001'), 24);
  label.set(new TextEncoder().encode('AbCdEf0123456789GhIjKlMnOpQrStUv'), 32);
  new DataView(label.buffer, label.byteOffset).setBigUint64(64, BigInt(8 * MiB), true);
  const fs = await detectFilesystem(memDevice(b), { start: 0, length: b.length });
  assert.deepEqual(fs, { type: 'lvm2', label: null, uuid: 'AbCdEf-0123-4567-89Gh-IjKl-MnOp-QrStUv', size: 8 * MiB, state: 'unknown', untrusted: null });
});

test('crafted BitLocker (Windows 7 and To Go) and ReFS boot sectors are recognised; the disk counts them as used', async () => {
  const win7 = new Uint8Array(MiB);
  win7.set([0xeb, 0x58, 0x90], 0);
  win7.set(new TextEncoder().encode('-FVE-FS-'), 3);
  win7.set([0x55, 0xaa], 510);
  assert.equal((await detectFilesystem(memDevice(win7), { start: 0, length: win7.length }))?.type, 'bitlocker');
  const toGo = new Uint8Array(MiB);
  toGo.set(new TextEncoder().encode('MSWIN4.1'), 3);
  encodeGuid('4967d63b-2e29-4ad8-8399-f6a339e3d001', toGo, 424);
  toGo.set([0x55, 0xaa], 510);
  assert.equal((await detectFilesystem(memDevice(toGo), { start: 0, length: toGo.length }))?.type, 'bitlocker');
  const c = await inspectDisk(memDevice(win7));
  assert.equal(c.partitionScheme, 'none', 'a boot sector with 0x55 0xAA taken for an MBR');
  assert.equal(c.usedBytes, MiB);

  const refs = new Uint8Array(MiB);
  refs.set(new TextEncoder().encode('ReFS\0\0\0\0'), 3);
  refs.set(new TextEncoder().encode('FSRS'), 16);
  const dv = new DataView(refs.buffer);
  dv.setBigUint64(24, 2048n, true);
  dv.setUint32(32, 512, true);
  dv.setUint32(36, 128, true);
  dv.setBigUint64(56, 0x1234abcd5678ef90n, true);
  const fs = await detectFilesystem(memDevice(refs), { start: 0, length: refs.length });
  assert.ok(fs, 'recognised');
  assert.deepEqual([fs.type, fs.uuid, fs.size], ['refs', '1234ABCD5678EF90', MiB]);
});

test('regions too small for a superblock, and regions of garbage, are not recognised and do not throw', async () => {
  const b = new Uint8Array(MiB);
  for (let i = 0; i < b.length; i++) b[i] = (i * 2654435761) >>> 24;
  const dev = memDevice(b);
  for (const region of [
    { start: 0, length: 0 },
    { start: 0, length: 100 },
    { start: MiB - 512, length: 512 },
    { start: 0, length: MiB },
  ]) {
    assert.equal(await detectFilesystem(dev, region), null);
  }
});

test('the whole-disk used map of a swap area on a disk without a table: the header page and nothing else', { skip: needTool('mkswap') }, async () => {
  const path = join(dir, 'whole-swap.img');
  sparseFile(path, 4 * MiB);
  run('mkswap', ['-q', path]);
  const dev = await fileDevice(path);
  const runs: Run[] = [];
  for await (const r of usedRuns(dev)) runs.push(r);
  await dev.close();
  assert.deepEqual(runs, [{ start: 0, length: 4096 }]);
});
