// Seed inputs, made by the test suite's own builders (test/helpers) and, when installed, by the
// peer tools (qemu-img, mke2fs, mkntfs) on small images.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemorySource, VhdxImage, VhdxError, createVhd, VhdImage } from '../dist/index.js';
import { LOCATOR_TYPE_VHDX } from '../dist/format/constants.js';
import { buildImage, fillByte, KiB, MiB, PayloadState, putBatEntry } from '../test/helpers/build.js';
import { buildGpt } from '../test/helpers/disk.js';

/** DataWriteGuid of the differencing seed's parent, named by the seed's locator. */
const PARENT_LINKAGE = '83ef5fc2-4f4f-4a3c-9a58-8d5e4c36d0a1';

function tool(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', env: { ...process.env, PATH: `${process.env.PATH}:/sbin:/usr/sbin` } });
    return true;
  } catch {
    return false;
  }
}

/** Make a file with a peer tool in a scratch directory and return its bytes (null when the tool is missing). */
function withTool(name, size, make) {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-seed-'));
  try {
    const path = join(dir, name);
    if (size) writeFileSync(path, new Uint8Array(0)), execFileSync('truncate', ['-s', String(size), path]);
    return make(path) ? new Uint8Array(readFileSync(path)) : null;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A corpus image (../shared/corpus, test/helpers/env.ts) of at most `maxBytes`, or null when absent or larger. */
export async function corpusSeed(gzName, maxBytes) {
  const { corpusDir, corpusFile } = await import('../test/helpers/env.js');
  if (!existsSync(join(corpusDir, gzName))) return null;
  const bytes = new Uint8Array(readFileSync(await corpusFile(gzName)));
  return bytes.length <= maxBytes ? { name: `corpus ${gzName}`, bytes } : null;
}

export async function vhdxSeeds() {
  const out = [];
  out.push({ name: 'dynamic', bytes: (await buildImage({ virtualSize: 16 * MiB, blockSize: MiB, allocate: [0, 5, 15], states: { 7: 2, 8: 3, 9: 1 } })).bytes });
  out.push({ name: 'fixed', bytes: (await buildImage({ virtualSize: 3 * MiB + 3 * 512, blockSize: MiB, fixed: true })).bytes });
  out.push({ name: 'sector4k', bytes: (await buildImage({ virtualSize: 16 * MiB, blockSize: 4 * MiB, logicalSectorSize: 4096, physicalSectorSize: 4096, allocate: [0, 3] })).bytes });
  out.push({ name: 'dirty log', bytes: await dirtySeed() });
  out.push({ name: 'differencing', bytes: await differencingSeed() });
  const q = withTool('q.vhdx', 0, (p) => tool('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', p, '8M']) && tool('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0xa5 3M 4k', p]));
  if (q) out.push({ name: 'qemu-img dynamic', bytes: q });
  // Windows-made (Hyper-V) fixed image, when the corpus is there.
  const fixed = await corpusSeed('fixed.vhdx.gz', 16 * MiB);
  if (fixed) out.push(fixed);
  return out;
}

export async function dirtySeed() {
  return (await buildImage({ virtualSize: 16 * MiB, blockSize: MiB, allocate: [3], logAllocate: [1, 2] })).bytes;
}

export async function differencingSeed() {
  const parentLocator = {
    locatorType: LOCATOR_TYPE_VHDX,
    entries: [
      { key: 'parent_linkage', value: `{${PARENT_LINKAGE}}` },
      { key: 'relative_path', value: '..\\parent.vhdx' },
    ],
  };
  const { bytes, plan } = await buildImage({ virtualSize: 16 * MiB, blockSize: MiB, allocate: [1], parentLocator });
  // Block 4 partially present with chunk 0's sector bitmap: 2 more MiB at the end.
  const out = new Uint8Array(bytes.length + 2 * MiB);
  out.set(bytes);
  out.fill(fillByte(4), bytes.length, bytes.length + MiB);
  out.fill(0x0f, bytes.length + MiB, bytes.length + MiB + 4 * KiB);
  putBatEntry(out, plan, 4, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: bytes.length / MiB });
  putBatEntry(out, plan, plan.geometry.chunkRatio, { state: 6, fileOffsetMB: bytes.length / MiB + 1 });
  return out;
}

/** The differencing seed's parent, and a resolver that opens it for any locator naming a path. */
export async function vhdxParentResolver() {
  const { bytes } = await buildImage({ virtualSize: 16 * MiB, blockSize: MiB, allocate: [0, 4] });
  const src = new MemorySource(bytes);
  const img = await VhdxImage.open(src, { readOnly: false });
  img.setNextDataWriteGuid(PARENT_LINKAGE);
  await img.write(0, new Uint8Array(4096).fill(0x5a));
  await img.close();
  const parent = src.bytes().slice();
  return async ({ locator }) => {
    if (!locator.entries.some((e) => ['relative_path', 'volume_path', 'absolute_win32_path'].includes(e.key))) {
      throw new VhdxError('ENOENT', 'PARENT_NOT_FOUND', 'the locator names no path');
    }
    return VhdxImage.open(new MemorySource(parent, { readOnly: true }));
  };
}

/** VHD seeds: fixed, dynamic with data, differencing on the dynamic one; and the parent resolver. */
export async function vhdSeedsAndParent() {
  const mk = async (opts) => {
    const src = new MemorySource();
    await createVhd(src, { time: Date.UTC(2024, 0, 1), ...opts });
    return src;
  };
  const fixed = await mk({ size: 3 * MiB, subformat: 'fixed', uniqueId: '11111111-1111-4111-8111-111111111111' });
  const dyn = await mk({ size: 8 * MiB, blockSize: 512 * KiB, uniqueId: '22222222-2222-4222-8222-222222222222' });
  {
    const img = await VhdImage.open(dyn, { readOnly: false });
    await img.write(0, new Uint8Array(64 * KiB).fill(0x5a));
    await img.write(3 * MiB + 512, new Uint8Array(4 * KiB).fill(0xa5));
    await img.close();
  }
  const parentBytes = dyn.bytes().slice();
  const parentImg = await VhdImage.open(new MemorySource(parentBytes, { readOnly: true }));
  const diff = await mk({ parent: parentImg, parentPaths: [{ platform: 'W2ru', path: '.\\parent.vhd' }], uniqueId: '33333333-3333-4333-8333-333333333333' });
  await parentImg.close();
  {
    const img = await VhdImage.open(diff, { readOnly: false, parent: async () => VhdImage.open(new MemorySource(parentBytes, { readOnly: true })) });
    await img.write(MiB + 1024, new Uint8Array(2048).fill(0x77));
    await img.close();
  }
  const seeds = [
    { name: 'fixed', bytes: fixed.bytes().slice() },
    { name: 'dynamic', bytes: parentBytes },
    { name: 'differencing', bytes: diff.bytes().slice() },
  ];
  const q = withTool('q.vhd', 0, (p) => tool('qemu-img', ['create', '-q', '-f', 'vpc', p, '4M']) && tool('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 0 64k', p]));
  if (q) seeds.push({ name: 'qemu-img vpc', bytes: q });
  const parent = async (req) => VhdImage.open(new MemorySource(parentBytes, { readOnly: true }), { depth: req.depth, chain: req.chain });
  return { seeds, parent };
}

const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';
const BASIC = 'ebd0a0a2-b9e5-4433-87c0-68b6b9c7e599';

/** Raw disks: GPT with ext4 and NTFS partitions, GPT on 4 KiB sectors, MBR with an EBR chain. */
export function diskSeeds() {
  const out = [];
  const ext4 = withTool('e.img', 2 * MiB, (p) => tool('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '1024', '-O', 'metadata_csum,^has_journal', p]));
  const ntfs = withTool('n.img', 2 * MiB, (p) => tool('mkntfs', ['-q', '-F', '-f', '-s', '512', '-c', '4096', p]));
  const gpt = buildGpt({
    sectors: (6 * MiB) / 512,
    entryCount: 32,
    partitions: [
      { type: LINUX, first: 2048, last: 2048 + 4095, name: 'ext4' },
      { type: BASIC, first: 6144, last: 6144 + 4095, name: 'ntfs' },
    ],
  });
  if (ext4) gpt.set(ext4, MiB);
  if (ntfs) gpt.set(ntfs, 3 * MiB);
  out.push({ name: 'gpt ext4 ntfs', bytes: gpt });
  out.push({ name: 'gpt 4k', bytes: buildGpt({ sectorSize: 4096, sectors: 512, entryCount: 32, partitions: [{ type: LINUX, first: 256, last: 383 }] }) });
  // MBR: a primary holding ext4, an extended with three logical partitions (one EBR each).
  const mbr = new Uint8Array(6 * MiB);
  const v = new DataView(mbr.buffer);
  const entry = (sectorAt, slot, type, first, count) => {
    const at = sectorAt + 446 + slot * 16;
    mbr[at + 4] = type;
    v.setUint32(at + 8, first, true);
    v.setUint32(at + 12, count, true);
    mbr[sectorAt + 510] = 0x55;
    mbr[sectorAt + 511] = 0xaa;
  };
  entry(0, 0, 0x83, 2048, 4096);
  entry(0, 1, 0x05, 6144, 6144);
  for (let k = 0; k < 3; k++) {
    const ebr = 6144 + k * 2048;
    entry(ebr * 512, 0, 0x07, 1024, 1024);
    if (k < 2) entry(ebr * 512, 1, 0x05, (k + 1) * 2048, 2048);
  }
  if (ext4) mbr.set(ext4, MiB);
  out.push({ name: 'mbr ebr', bytes: mbr });
  return out;
}
