// createImage / planCreate / createFile: the options become the image's geometry, fixed disks are
// fully allocated and written, bad options fail before anything is written, and createFile
// never leaves a file behind when it fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemorySource, VhdxImage, VhdxError, createImage, type CreateOptions } from '../../src/index.js';
import { planCreate } from '../../src/driver/create.js';
import { createFile, createOpenFile, openFile } from '../../src/node.js';
import { packageVersion } from '../../src/package-version.js';
import { repoRoot } from '../helpers/env.js';
import { lockRecords, lockRecordsNaming, shmScratch } from '../helpers/tools.js';

const K = 1024;
const M = K * K;
const G = K * M;
const T = K * G;

async function created(opts: CreateOptions) {
  const src = new MemorySource();
  const result = await createImage(src, opts);
  return { src, result, img: await VhdxImage.open(src) };
}

const GOOD: CreateOptions[] = [
  { size: 64 * M },
  { size: 100 * M + 3 * 512, blockSize: M, logSize: 2 * M, subformat: 'fixed' },
  { size: 40 * M, blockSize: 8 * M, subformat: 'fixed', physicalSectorSize: 512, logicalSectorSize: 512 },
  { size: 64 * M + 4096, blockSize: 256 * M, logicalSectorSize: 4096, physicalSectorSize: 4096 },
  { size: 3 * M, blockSize: 2 * M, logicalSectorSize: 4096, subformat: 'fixed', logSize: 3 * M },
];

for (const opts of GOOD) {
  test(`createImage ${JSON.stringify(opts)} opens with that geometry`, async () => {
    const { src, result, img } = await created(opts);
    const fixed = opts.subformat === 'fixed';
    const bs = opts.blockSize ?? 32 * M;
    assert.equal(img.type, fixed ? 'fixed' : 'dynamic');
    assert.equal(img.size, opts.size);
    assert.equal(img.blockSize, bs);
    assert.equal(img.logicalSectorSize, opts.logicalSectorSize ?? 512);
    assert.equal(img.physicalSectorSize, opts.physicalSectorSize ?? 4096);
    assert.equal(img.layout.log.logLength, opts.logSize ?? M);
    assert.equal(img.layout.log.dirty, false);
    assert.equal(img.layout.creator, 'vhdx');
    assert.equal(img.layout.diskId, result.identity.diskId);
    assert.equal(src.size, result.plan.fileSize);
    const blocks = Math.ceil(opts.size / bs);
    if (fixed) {
      // Every block allocated, in order, right after the BAT; the file holds them all.
      assert.equal(src.size, result.plan.payloadOffset + blocks * bs);
      const ext = await img.blockStatus(0, img.size);
      assert.deepEqual(ext, [{ offset: 0, length: img.size, type: 'data', fileOffset: result.plan.payloadOffset }]);
    } else {
      assert.equal(src.size, result.plan.payloadOffset);
      assert.deepEqual(await img.blockStatus(0, img.size), [{ offset: 0, length: img.size, type: 'unallocated' }]);
    }
    for (const at of [0, Math.floor(opts.size / 2 / 512) * 512, opts.size - 4096]) {
      const b = new Uint8Array(4096).fill(1);
      await img.read(at, b);
      assert.ok(b.every((x) => x === 0), `zeros at ${at}`);
    }
    await img.close();
  });
}

test('planCreate defaults: dynamic, 32 MiB blocks, 1 MiB log, 512/4096 sectors', () => {
  const p = planCreate({ size: G });
  assert.equal(p.type, 'dynamic');
  assert.equal(p.blockSize, 32 * M);
  assert.equal(p.log.length, M);
  assert.equal(p.logicalSectorSize, 512);
  assert.equal(p.physicalSectorSize, 4096);
  assert.equal(p.fileSize, p.payloadOffset);
});

// Sizes and a subformat the types do not allow are cast: these are the deliberately invalid inputs.
const BAD: [CreateOptions, RegExp][] = [
  [{ size: G, blockSize: 3 * M }, /block size 3 MiB is not a power of two/],
  [{ size: G, blockSize: 512 * K }, /block size/],
  [{ size: G, blockSize: 512 * M }, /block size 512 MiB/],
  [{ size: G, logSize: 0 }, /log size/],
  [{ size: G, logSize: M + 512 * K }, /log size/],
  [{ size: G, logicalSectorSize: 1024 as 512 }, /logical sector size 1024/],
  [{ size: G, physicalSectorSize: 2048 as 512 }, /physical sector size 2048/],
  [{ size: G, logicalSectorSize: 4096, physicalSectorSize: 512 }, /smaller than the logical/],
  [{ size: G, subformat: 'sparse' as 'fixed' }, /subformat sparse/],
  [{ size: 0 }, /size 0 is not a positive/],
  [{ size: 1000 }, /not a multiple of the 512-byte/],
  [{ size: 8 * M + 512, logicalSectorSize: 4096 }, /not a multiple of the 4096-byte/],
  [{ size: 64 * T + M }, /64 TiB/],
  [{ size: 1.5 }, /not a positive number/],
  [{ size: G, creator: 'x'.repeat(257) }, /creator/],
];

for (const [opts, message] of BAD) {
  test(`createImage refuses ${JSON.stringify(opts).slice(0, 80)} before writing`, async () => {
    const src = new MemorySource();
    await assert.rejects(createImage(src, opts), (e: VhdxError) => {
      assert.ok(e instanceof VhdxError, String(e));
      assert.equal(e.reason, 'BAD_ARGUMENT');
      assert.equal(e.code, 'EINVAL');
      assert.match(e.message, message);
      return true;
    });
    assert.equal(src.size, 0, 'nothing written');
  });
}

test('a fixed image is written whole with progress, and creation can be aborted', async () => {
  const seen: [number, number][] = [];
  const src = new MemorySource();
  const { plan } = await createImage(src, { size: 40 * M, blockSize: M, subformat: 'fixed', onProgress: (d, t) => seen.push([d, t]) });
  assert.ok(seen.length >= 3, 'progress reported along the way');
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i]![0] >= seen[i - 1]![0], 'progress never goes back');
  assert.deepEqual(seen.at(-1), [plan.fileSize, plan.fileSize]);

  const ac = new AbortController();
  await assert.rejects(
    createImage(new MemorySource(), {
      size: 256 * M,
      blockSize: M,
      subformat: 'fixed',
      signal: ac.signal,
      onProgress: (d) => d > 16 * M && ac.abort(),
    }),
    (e) => e instanceof VhdxError && e.code === 'ECANCELED' && e.reason === 'ABORTED',
  );
});

test('identity given is written', async () => {
  const identity = {
    diskId: '11111111-2222-3333-4444-555555555555',
    fileWriteGuid: '66666666-7777-8888-9999-aaaaaaaaaaaa',
    dataWriteGuid: 'bbbbbbbb-cccc-dddd-eeee-ffffffffffff',
  };
  const { img } = await created({ size: 8 * M, identity });
  const untouched = new MemorySource(new Uint8Array([1, 2, 3]));
  await assert.rejects(createImage(untouched, { size: 8 * M, identity: { diskId: 'nope' } }), (e: VhdxError) => e.reason === 'BAD_ARGUMENT' && /identity.diskId/.test(e.message));
  assert.equal(untouched.size, 3, 'a bad identity fails before the source is touched');
  assert.equal(img.layout.diskId, identity.diskId);
  assert.equal(img.header.dataWriteGuid, identity.dataWriteGuid);
  assert.equal(img.header.fileWriteGuid, identity.fileWriteGuid);
});

const dir = shmScratch('vhdx-create-');

test('createFile: creator names the package version; the file is closed and unlocked', async () => {
  const path = join(dir, 'version.vhdx');
  await createFile(path, { size: 16 * M });
  const version = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')).version;
  assert.equal(packageVersion(), version);
  const img = await openFile(path, { readOnly: false }); // would fail if a lock were left
  assert.equal(img.layout.creator, `vhdx ${version}`);
  await img.close();
  assert.deepEqual(await lockRecords(path), []);
});

test('createFile refuses an existing file and leaves it alone', async () => {
  const path = join(dir, 'exists.vhdx');
  writeFileSync(path, 'precious');
  await assert.rejects(createFile(path, { size: 16 * M }), (e) => e instanceof VhdxError && e.code === 'EEXIST' && e.reason === 'FILE_EXISTS');
  assert.equal(readFileSync(path, 'utf8'), 'precious');
  await createFile(path, { size: 16 * M, overwrite: true });
  const img = await openFile(path);
  assert.equal(img.size, 16 * M);
  await img.close();
});

test('createFile leaves no file behind on bad options or when aborted', async () => {
  const bad = join(dir, 'bad.vhdx');
  await assert.rejects(createFile(bad, { size: 16 * M, blockSize: 5 * M }), /block size/);
  assert.equal(existsSync(bad), false);

  const aborted = join(dir, 'aborted.vhdx');
  const ac = new AbortController();
  await assert.rejects(
    createFile(aborted, { size: 512 * M, blockSize: M, subformat: 'fixed', signal: ac.signal, onProgress: (d) => d > 32 * M && ac.abort() }),
    (e) => e instanceof VhdxError && e.reason === 'ABORTED',
  );
  assert.equal(existsSync(aborted), false, 'partly written file removed');
  assert.deepEqual(await lockRecordsNaming(aborted), [], 'lock released');
});

test('createOpenFile returns the new image open for writing, and on failure leaves no file', async () => {
  const path = join(dir, 'open.vhdx');
  const img = await createOpenFile(path, { size: 16 * M, blockSize: M });
  assert.equal(img.readOnly, false);
  assert.equal((await lockRecords(path)).length, 2, 'held under the create lock (the write lock folder and its record)');
  await img.write(3 * M, new Uint8Array(4096).fill(0x5a));
  await img.close();
  assert.deepEqual(await lockRecords(path), [], 'lock released on close');
  const back = await openFile(path);
  const got = new Uint8Array(4096);
  await back.read(3 * M, got);
  assert.ok(got.every((b) => b === 0x5a));
  await back.close();

  const child = await createOpenFile(join(dir, 'open-child.vhdx'), { parent: path });
  const fromParent = new Uint8Array(4096);
  await child.read(3 * M, fromParent);
  assert.ok(fromParent.every((b) => b === 0x5a), 'a differencing image comes back with its parent');
  await child.close();

  await assert.rejects(createOpenFile(path, { size: 16 * M }), (e) => e instanceof VhdxError && e.reason === 'FILE_EXISTS');
  const bad = join(dir, 'open-bad.vhdx');
  await assert.rejects(createOpenFile(bad, { size: 16 * M, blockSize: 5 * M }), /block size/);
  assert.equal(existsSync(bad), false);
});

test('createFile: a fixed file is allocated on disk, not sparse', async (t) => {
  const path = join(dir, 'fixed.vhdx');
  await createFile(path, { size: 24 * M + 512, blockSize: 8 * M, subformat: 'fixed' });
  const st = statSync(path);
  if (st.blocks === undefined) return t.skip('file system reports no block counts');
  assert.equal(st.size, 4 * M + 32 * M, 'header section, log, metadata, BAT, then 4 whole blocks');
  assert.ok(st.blocks * 512 >= st.size, `allocated ${st.blocks * 512} of ${st.size} bytes`);
});

test('createFile: a 64 TiB dynamic image is small and opens', async () => {
  const path = join(dir, 'huge.vhdx');
  const { plan } = await createFile(path, { size: 64 * T });
  const st = statSync(path);
  assert.equal(st.size, plan.payloadOffset);
  const img = await openFile(path);
  assert.equal(img.size, 64 * T);
  assert.deepEqual(await img.blockStatus(64 * T - 32 * M, 32 * M), [{ offset: 64 * T - 32 * M, length: 32 * M, type: 'unallocated' }]);
  await img.close();
});

test('a fixed BAT skips the sector bitmap entry between chunks (4 GiB + at 1 MiB blocks)', async () => {
  // Laid out with the layout code directly and left sparse: allocating 4 GiB would be slow.
  const { planLayout, writeNewImage } = await import('../../src/driver/layout.js');
  const { NodeFileSource } = await import('../../src/node.js');
  const path = join(dir, 'fixed-chunks.vhdx');
  const plan = planLayout({ virtualSize: 4 * G + 3 * M, blockSize: M, fixed: true });
  const src = await NodeFileSource.open(path, { readOnly: false, create: true });
  await writeNewImage(src, plan);
  await src.close();
  const img = await openFile(path);
  // One contiguous data extent: block 4096 (after the bitmap entry) follows block 4095 in the file.
  assert.deepEqual(await img.blockStatus(4 * G - 2 * M, 5 * M), [
    { offset: 4 * G - 2 * M, length: 5 * M, type: 'data', fileOffset: plan.payloadOffset + 4 * G - 2 * M },
  ]);
  const stats = await img.allocationStats();
  assert.equal(stats.allocatedBlocks, 4099);
  assert.equal(stats.fragmentationPercentage, 0);
  await img.close();
});
