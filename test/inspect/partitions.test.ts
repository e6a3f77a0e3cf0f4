// src/inspect/{gpt,mbr,partition-table}.ts: partition tables read as sfdisk and 7-Zip read them,
// and damaged tables reported as findings (never thrown, never a crash), with what cannot be
// vouched for counted as used.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { readPartitions, usedRuns, inspectDisk, type BlockDevice, type Run } from '../../src/index.js';
import type { PartitionTable } from '../../src/inspect/partition-table.js';
import { needTool } from '../helpers/env.js';
import { shmScratch } from '../helpers/tools.js';
import { type SfdiskTable, buildGpt, fileDevice, memDevice, MiB, patchFile, resealGptHeader, sevenZipPartitions, sfdisk, sfdiskRange, sparseFile } from '../helpers/disk.js';

const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';
const SWAP = '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f';
const BIOS_BOOT = '21686148-6449-6e6f-744e-656564454649';
const dir = shmScratch('vhdx-inspect-pt-');
const reasons = (t: PartitionTable): string[] => t.findings.map((f) => f.reason);

async function tableOf(path: string, sectorSize: 512 | 4096 = 512): Promise<PartitionTable> {
  const dev = await fileDevice(path, sectorSize);
  try {
    return await readPartitions(dev);
  } finally {
    await dev.close();
  }
}

/** All used runs of a device, checked to be ascending, joined and inside the disk. */
async function allUsed(dev: BlockDevice): Promise<Run[]> {
  const runs: Run[] = [];
  for await (const r of usedRuns(dev)) {
    const prev = runs[runs.length - 1];
    assert.ok(r.length > 0 && r.start >= 0 && r.start + r.length <= dev.size, `run ${JSON.stringify(r)} outside the disk`);
    if (prev) assert.ok(r.start > prev.start + prev.length, `runs not ascending and joined: ${JSON.stringify(prev)} then ${JSON.stringify(r)}`);
    runs.push(r);
  }
  return runs;
}

function gptDisk(name: string): { path: string; sf: SfdiskTable } {
  const path = join(dir, name);
  sparseFile(path, 64 * MiB);
  const sf = sfdisk(
    path,
    'label: gpt\nsize=8M, type=linux, name="root fs"\nsize=4M, type=swap\nsize=2M, type=21686148-6449-6E6F-744E-656564454649, attrs="RequiredPartition LegacyBIOSBootable"\n',
  );
  return { path, sf };
}

test('GPT: partitions, names, type GUIDs, unique GUIDs and attributes agree with sfdisk -J and 7-Zip', { skip: needTool('sfdisk') }, async () => {
  const { path, sf } = gptDisk('gpt.raw');
  const t = await tableOf(path);
  assert.equal(t.scheme, 'gpt');
  assert.deepEqual(t.findings, []);
  assert.equal(t.diskId, sf.id.toLowerCase());
  assert.equal(t.gpt?.copy, 'primary');
  assert.equal(t.gpt?.firstUsableLba, sf.firstlba);
  assert.equal(t.gpt?.lastUsableLba, sf.lastlba);
  assert.equal(t.partitions.length, sf.partitions.length);
  sf.partitions.forEach((s, i) => {
    const p = t.partitions[i];
    assert.ok(p, `partition ${s.node} missing`);
    assert.equal(p.index, Number(s.node.slice(-1)));
    assert.deepEqual({ start: p.start, length: p.length }, sfdiskRange(s));
    assert.equal(p.type, s.type.toLowerCase());
    assert.equal(p.guid, s.uuid?.toLowerCase());
    assert.equal(p.name, s.name ?? null);
  });
  assert.deepEqual(t.partitions.map((p) => p.typeName), ['Linux filesystem', 'Linux swap', 'BIOS boot']);
  assert.deepEqual(t.partitions[2]!.attributes, ['required', 'legacy-bios-bootable']);
  if (!needTool('7zz')) {
    assert.deepEqual(await sevenZipPartitions(path).then((l) => l.map(({ start, length }) => ({ start, length }))), t.partitions.map(({ start, length }) => ({ start, length })));
  }
});

test('MBR: primary, extended and logical partitions through the EBR chain agree with sfdisk -J and 7-Zip', { skip: needTool('sfdisk') }, async () => {
  const path = join(dir, 'mbr.raw');
  sparseFile(path, 64 * MiB);
  const sf = sfdisk(
    path,
    'label: dos\nsize=8M, type=83, bootable\nsize=40M, type=5\nstart=20480, size=4M, type=82\nstart=30720, size=4M, type=83\nstart=40960, size=4M, type=7\nsize=4M, type=c\n',
  );
  const t = await tableOf(path);
  assert.equal(t.scheme, 'mbr');
  assert.deepEqual(t.findings, []);
  assert.equal(t.diskId, sf.id);
  const byIndex = new Map(t.partitions.map((p) => [p.index, p]));
  assert.equal(t.partitions.length, sf.partitions.length);
  for (const s of sf.partitions) {
    const p = byIndex.get(Number(/(\d+)$/.exec(s.node)![1]));
    assert.ok(p, `partition ${s.node} missing`);
    assert.deepEqual({ start: p.start, length: p.length }, sfdiskRange(s));
    assert.equal(Number(p.type), parseInt(s.type, 16));
    assert.equal(p.attributes.includes('bootable'), s.bootable === true);
  }
  assert.deepEqual(t.partitions.map((p) => `${p.index}:${p.kind}`), ['1:primary', '2:extended', '3:primary', '5:logical', '6:logical', '7:logical']);
  if (!needTool('7zz')) {
    const leaves = t.partitions.filter((p) => p.kind !== 'extended').sort((a, b) => a.start - b.start);
    assert.deepEqual((await sevenZipPartitions(path)).map(({ start, length }) => ({ start, length })), leaves.map(({ start, length }) => ({ start, length })));
  }
  // The EBRs and the gaps between logical partitions are inside the extended partition but
  // outside every partition: used.
  const dev = await fileDevice(path);
  const used = await allUsed(dev);
  await dev.close();
  const ebr2 = 30720 * 512 - 1 * MiB; // sfdisk puts each EBR ahead of its partition
  assert.ok(used.some((r) => r.start <= ebr2 && r.start + r.length > ebr2), 'an EBR counted as free');
});

test('an empty MBR is an MBR with no partitions, and the whole disk counts as used', { skip: needTool('sfdisk') }, async () => {
  const path = join(dir, 'empty-mbr.raw');
  sparseFile(path, 8 * MiB);
  sfdisk(path, 'label: dos\n');
  const t = await tableOf(path);
  assert.equal(t.scheme, 'mbr');
  assert.deepEqual(t.partitions, []);
  const dev = await fileDevice(path);
  assert.deepEqual(await allUsed(dev), [{ start: 0, length: 8 * MiB }]);
  await dev.close();
});

test('a blank disk has no table: one whole-disk entry, no filesystem, all used', async () => {
  const dev = memDevice(new Uint8Array(4 * MiB));
  const c = await inspectDisk(dev);
  assert.equal(c.partitionScheme, 'none');
  assert.equal(c.partitions.length, 1);
  assert.deepEqual([c.partitions[0]!.kind, c.partitions[0]!.start, c.partitions[0]!.length, c.partitions[0]!.filesystem], ['disk', 0, 4 * MiB, null]);
  assert.equal(c.usedBytes, 4 * MiB);
});

test('damaged primary GPT header (bad CRC): the backup at the last LBA is used and the damage reported', { skip: needTool('sfdisk') }, async () => {
  const { path, sf } = gptDisk('bad-primary.raw');
  patchFile(path, 512 + 40, new Uint8Array([0x99])); // first usable LBA, CRC not updated
  const t = await tableOf(path);
  assert.equal(t.scheme, 'gpt');
  assert.equal(t.gpt?.copy, 'backup');
  assert.deepEqual(reasons(t), ['GPT_BAD_CRC']);
  assert.equal(t.findings[0]!.severity, 'warning');
  assert.deepEqual(t.partitions.map((p) => p.start), sf.partitions.map((p) => p.start * 512));
});

test('damaged primary entry array (bad CRC): the backup is used', { skip: needTool('sfdisk') }, async () => {
  const { path } = gptDisk('bad-array.raw');
  patchFile(path, 2 * 512 + 32, new Uint8Array([0x01, 0x02])); // entry 1's first LBA
  const t = await tableOf(path);
  assert.equal(t.gpt?.copy, 'backup');
  assert.deepEqual(reasons(t), ['GPT_BAD_CRC']);
  assert.match(t.findings[0]!.message, /entry array/);
  assert.equal(t.partitions[0]!.start, 2048 * 512);
});

test('damaged backup GPT: the primary is used and the backup reported', { skip: needTool('sfdisk') }, async () => {
  const { path } = gptDisk('bad-backup.raw');
  patchFile(path, 64 * MiB - 512 + 40, new Uint8Array([0x99]));
  const t = await tableOf(path);
  assert.equal(t.gpt?.copy, 'primary');
  assert.deepEqual(reasons(t), ['GPT_BAD_BACKUP']);
  assert.equal(t.partitions.length, 3);
});

test('both GPT copies damaged: GPT_NO_VALID_HEADER, no partitions, and the whole disk counts as used', { skip: needTool('sfdisk') }, async () => {
  const { path } = gptDisk('bad-both.raw');
  patchFile(path, 512 + 40, new Uint8Array([0x99]));
  patchFile(path, 64 * MiB - 512 + 40, new Uint8Array([0x99]));
  const t = await tableOf(path);
  assert.equal(t.scheme, 'gpt');
  assert.deepEqual(t.partitions, []);
  assert.deepEqual(reasons(t), ['GPT_NO_VALID_HEADER']);
  assert.equal(t.findings[0]!.severity, 'error');
  const dev = await fileDevice(path);
  assert.deepEqual(await allUsed(dev), [{ start: 0, length: 64 * MiB }]);
  await dev.close();
});

test('a GPT header whose entry count would size a huge array is refused without allocating it; the backup is used', () => {
  const disk = buildGpt({ sectors: 16384, partitions: [{ type: LINUX, first: 2048, last: 4095, name: 'data' }] });
  const h = disk.subarray(512, 1024);
  new DataView(h.buffer, h.byteOffset).setUint32(80, 0xffffffff, true);
  resealGptHeader(h);
  return readPartitions(memDevice(disk)).then((t) => {
    assert.equal(t.gpt?.copy, 'backup');
    assert.deepEqual(reasons(t), ['GPT_ENTRY_COUNT']);
    assert.equal(t.partitions[0]!.name, 'data');
  });
});

test('a GPT entry size that is not 128 × 2^n, and an LBA past 2^53, are refused', async () => {
  const disk = buildGpt({ sectors: 16384, partitions: [{ type: LINUX, first: 2048, last: 4095 }] });
  const h = disk.subarray(512, 1024);
  new DataView(h.buffer, h.byteOffset).setUint32(84, 129, true);
  resealGptHeader(h);
  assert.deepEqual(reasons(await readPartitions(memDevice(disk))), ['GPT_BAD_HEADER']);
  const disk2 = buildGpt({ sectors: 16384, partitions: [{ type: LINUX, first: 2048, last: 2 ** 62 }] });
  const t2 = await readPartitions(memDevice(disk2));
  assert.deepEqual(reasons(t2), ['PARTITION_BAD_RANGE']);
  assert.deepEqual(t2.partitions, []);
});

test('GPT with 4096-byte logical sectors, read with the device sector size and found when the device says 512', async () => {
  const disk = buildGpt({
    sectorSize: 4096,
    sectors: 4096,
    partitions: [
      { type: LINUX, first: 256, last: 1279, name: 'four k' },
      { type: SWAP, first: 1280, last: 2303 },
    ],
  });
  for (const deviceSector of [4096, 512] as const) {
    const t = await readPartitions(memDevice(disk, deviceSector));
    assert.equal(t.scheme, 'gpt');
    assert.equal(t.sectorSize, 4096);
    assert.deepEqual(t.findings, []);
    assert.deepEqual(t.partitions.map((p) => [p.start, p.length, p.name]), [
      [256 * 4096, 1024 * 4096, 'four k'],
      [1280 * 4096, 1024 * 4096, null],
    ]);
  }
});

test('hybrid MBR is noted; a GPT without a protective MBR is still read, with a finding', async () => {
  const disk = buildGpt({ sectors: 16384, partitions: [{ type: BIOS_BOOT, first: 2048, last: 4095 }] });
  const e = disk.subarray(446 + 16, 446 + 32);
  e[4] = 0x83;
  new DataView(e.buffer, e.byteOffset).setUint32(8, 2048, true);
  new DataView(e.buffer, e.byteOffset).setUint32(12, 2048, true);
  const hybrid = await readPartitions(memDevice(disk));
  assert.equal(hybrid.scheme, 'gpt');
  assert.equal(hybrid.gpt?.hybridMbr, true);
  assert.deepEqual(reasons(hybrid), ['GPT_HYBRID_MBR']);
  disk.fill(0, 446, 510);
  const bare = await readPartitions(memDevice(disk));
  assert.equal(bare.scheme, 'gpt');
  assert.deepEqual(reasons(bare), ['GPT_NO_PROTECTIVE_MBR']);
});

test('an EBR chain that loops back is cut with MBR_LOOP; the logical partitions before it are kept', { skip: needTool('sfdisk') }, async () => {
  const path = join(dir, 'loop.raw');
  sparseFile(path, 32 * MiB);
  sfdisk(path, 'label: dos\nsize=4M, type=83\nsize=20M, type=5\nstart=12288, size=2M, type=83\nstart=20480, size=2M, type=83\n');
  // Point the second EBR's link (entry 2) back at the first EBR (offset 0 in the extended partition).
  const ext = (await tableOf(path)).partitions.find((p) => p.kind === 'extended');
  const second = (await tableOf(path)).partitions.find((p) => p.index === 6);
  assert.ok(second, 'partition 6 read');
  const ebr2 = second.start - 2048 * 512; // sfdisk leaves 1 MiB before each logical partition
  const link = Buffer.alloc(16);
  link[4] = 0x05;
  link.writeUInt32LE(0, 8);
  link.writeUInt32LE(2048, 12);
  patchFile(path, ebr2 + 446 + 16, link);
  const t = await tableOf(path);
  assert.ok(ext);
  assert.deepEqual(reasons(t), ['MBR_LOOP']);
  assert.deepEqual(t.partitions.filter((p) => p.kind === 'logical').map((p) => p.index), [5, 6]);
});

test('an EBR link outside its extended partition, and an EBR without a signature, stop the chain with MBR_BAD_EBR', { skip: needTool('sfdisk') }, async () => {
  const path = join(dir, 'bad-ebr.raw');
  sparseFile(path, 32 * MiB);
  sfdisk(path, 'label: dos\nsize=4M, type=83\nsize=20M, type=5\nstart=12288, size=2M, type=83\nstart=20480, size=2M, type=83\n');
  const first = (await tableOf(path)).partitions.find((p) => p.index === 5);
  assert.ok(first, 'partition 5 read');
  const ebr1 = first.start - 2048 * 512;
  const saved = readFileSync(path).subarray(ebr1 + 446 + 16, ebr1 + 446 + 32);
  const far = Buffer.from(saved);
  far.writeUInt32LE(0x7fffffff, 8);
  patchFile(path, ebr1 + 446 + 16, far);
  let t = await tableOf(path);
  assert.deepEqual(reasons(t), ['MBR_BAD_EBR']);
  assert.deepEqual(t.partitions.filter((p) => p.kind === 'logical').map((p) => p.index), [5]);
  patchFile(path, ebr1 + 446 + 16, saved);
  const second = (await tableOf(path)).partitions.find((p) => p.index === 6);
  assert.ok(second, 'partition 6 read');
  patchFile(path, second.start - 2048 * 512 + 510, new Uint8Array([0, 0]));
  t = await tableOf(path);
  assert.deepEqual(reasons(t), ['MBR_BAD_EBR']);
  assert.deepEqual(t.partitions.filter((p) => p.kind === 'logical').map((p) => p.index), [5]);
});

test('a partition past the end of the disk is reported (PARTITION_PAST_END) and its part inside the disk counts as used', { skip: needTool('sfdisk') }, async () => {
  const path = join(dir, 'past-end.raw');
  sparseFile(path, 32 * MiB);
  sfdisk(path, 'label: dos\nsize=8M, type=83\nsize=20M, type=82\n');
  const bytes = readFileSync(path).subarray(0, 16 * MiB);
  const dev = memDevice(bytes);
  const t = await readPartitions(dev);
  assert.deepEqual(reasons(t), ['PARTITION_PAST_END']);
  assert.equal(t.partitions.length, 2);
  const c = await inspectDisk(dev);
  assert.equal(c.usedBytes, 16 * MiB);
  assert.deepEqual(await allUsed(dev), [{ start: 0, length: 16 * MiB }]);
});

test('overlapping partitions are reported (PARTITION_OVERLAP) and neither one\'s free space is trusted', async () => {
  const disk = buildGpt({
    sectors: 16384,
    partitions: [
      { type: LINUX, first: 2048, last: 6143 },
      { type: LINUX, first: 4096, last: 8191 },
    ],
  });
  const t = await readPartitions(memDevice(disk));
  assert.deepEqual(reasons(t), ['PARTITION_OVERLAP']);
});

test('a partition that starts past the end of the disk: the used map still ends at the disk\'s end', async () => {
  const disk = new Uint8Array(4 * MiB);
  const dv = new DataView(disk.buffer);
  disk[446 + 4] = 0x83;
  dv.setUint32(446 + 8, 0x7fffff00, true);
  dv.setUint32(446 + 12, 2048, true);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  const dev = memDevice(disk);
  const t = await readPartitions(dev);
  assert.deepEqual(reasons(t), ['PARTITION_PAST_END']);
  assert.deepEqual(await allUsed(dev), [{ start: 0, length: 4 * MiB }]);
  assert.equal((await inspectDisk(dev)).partitions[0]?.filesystem, null);
});

test('an MBR with plausible entries stays an MBR even when sector 0 also carries a filesystem signature', async () => {
  const disk = new Uint8Array(8 * MiB);
  const dv = new DataView(disk.buffer);
  disk.set(new TextEncoder().encode('-FVE-FS-'), 3); // what a BitLocker boot sector says
  disk[446 + 4] = 0x83;
  dv.setUint32(446 + 8, 2048, true);
  dv.setUint32(446 + 12, 4096, true);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  const t = await readPartitions(memDevice(disk));
  assert.equal(t.scheme, 'mbr');
  assert.deepEqual(t.partitions.map((p) => [p.start, p.length]), [[MiB, 2 * MiB]]);
});

test('MBR on a disk with 4096-byte logical sectors: LBAs count 4096-byte sectors, EBRs included', async () => {
  const disk = new Uint8Array(16 * MiB);
  const dv = new DataView(disk.buffer);
  const entry = (sectorAt: number, slot: number, type: number, first: number, count: number): void => {
    disk[sectorAt + 446 + slot * 16 + 4] = type;
    dv.setUint32(sectorAt + 446 + slot * 16 + 8, first, true);
    dv.setUint32(sectorAt + 446 + slot * 16 + 12, count, true);
    disk[sectorAt + 510] = 0x55;
    disk[sectorAt + 511] = 0xaa;
  };
  entry(0, 0, 0x83, 256, 256); // 1 MiB at 1 MiB
  entry(0, 1, 0x05, 512, 2048); // extended: 8 MiB at 2 MiB
  entry(512 * 4096, 0, 0x82, 256, 256); // logical 5: 1 MiB at 3 MiB
  const t = await readPartitions(memDevice(disk, 4096));
  assert.equal(t.sectorSize, 4096);
  assert.deepEqual(t.findings, []);
  assert.deepEqual(t.partitions.map((p) => [p.index, p.kind, p.start, p.length]), [
    [1, 'primary', MiB, MiB],
    [2, 'extended', 2 * MiB, 8 * MiB],
    [5, 'logical', 3 * MiB, MiB],
  ]);
});
