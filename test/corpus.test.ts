// Real images from ../shared/corpus: open, check the layout against the manifest, read the whole
// virtual disk to its recorded SHA-256, and cross-check block status, allocation statistics and
// (where installed) libvhdi. Skips visibly when the corpus is not beside the repository.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, open as openFh, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openFile, describe as describeImage, VhdxError, type Extent, type VhdxImage } from '../src/node.js';
import { corpusDir, corpusFile, corpusManifest, needTool, run, scratch, type CorpusEntry } from './helpers/env.js';
import { PYVHDI_PYTHON, needPyvhdi } from './helpers/tools.js';

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;
const IN_FLIGHT = 4;
const VHDX_LOCATOR_TYPE = 'b04aefb7-d19e-4a81-b789-25b8e9445913';

const manifest = corpusManifest();
const noCorpus = manifest ? false : `corpus not present at ${join(corpusDir, 'manifest.json')}`;
const entries = manifest ?? [];
const readable = entries.filter((e) => e.type !== 'differencing' && e.rawSha256);
const differencing = entries.filter((e) => e.type === 'differencing');

/** SHA-256 of a whole file, streamed in chunks. */
async function fileSha256(path: string): Promise<string> {
  const fh = await openFh(path, 'r');
  try {
    const h = createHash('sha256');
    const buf = new Uint8Array(CHUNK);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

/** The file's identity for "nothing wrote to it": content hash, size and modification time. */
async function fileFingerprint(path: string): Promise<{ sha256: string; size: bigint; mtimeNs: bigint; ctimeNs: bigint }> {
  const s = await stat(path, { bigint: true });
  return { sha256: await fileSha256(path), size: s.size, mtimeNs: s.mtimeNs, ctimeNs: s.ctimeNs };
}

function isZero(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}

/**
 * Walk the virtual disk in CHUNK pieces, IN_FLIGHT reads at a time, hashing in order.
 * Each chunk is read twice: whole (`img.read`), and rebuilt from the 'data' extents alone with
 * zeros elsewhere; the two must be equal byte for byte, so both give the same SHA-256.
 * Returns the hex SHA-256 of the whole-read stream.
 */
async function hashDisk(img: VhdxImage, extents: readonly Extent[]): Promise<string> {
  const size = img.size;
  const dataExtents = extents.filter((x) => x.type === 'data');
  const h = createHash('sha256');
  const starts: number[] = [];
  for (let o = 0; o < size; o += CHUNK) starts.push(o);
  // A fixed pool of buffers, reused: allocating fresh 8 MiB arrays costs more than the reads.
  const pool = Array.from({ length: IN_FLIGHT }, () => ({ whole: new Uint8Array(CHUNK), fromExtents: new Uint8Array(CHUNK) }));
  const readChunk = async (i: number) => {
    const o = starts[i]!;
    const len = Math.min(CHUNK, size - o);
    const slot = pool[i % IN_FLIGHT]!;
    const whole = slot.whole.subarray(0, len);
    const fromExtents = slot.fromExtents.subarray(0, len);
    fromExtents.fill(0);
    const reads = [img.read(o, whole)];
    for (const x of dataExtents) {
      const a = Math.max(o, x.offset);
      const b = Math.min(o + len, x.offset + x.length);
      if (a < b) reads.push(img.read(a, fromExtents.subarray(a - o, b - o)));
    }
    await Promise.all(reads);
    return { o, whole, fromExtents };
  };
  const pending: ReturnType<typeof readChunk>[] = [];
  let next = 0;
  while (next < starts.length && pending.length < IN_FLIGHT) pending.push(readChunk(next++));
  while (pending.length) {
    const { o, whole, fromExtents } = await pending.shift()!;
    if (!Buffer.from(whole.buffer, whole.byteOffset, whole.length).equals(fromExtents)) {
      let i = 0;
      while (whole[i] === fromExtents[i]) i++;
      assert.fail(`reading only the data extents differs from a whole read at virtual offset ${o + i}`);
    }
    h.update(whole);
    // This chunk's buffers are free again: start the read that reuses them.
    if (next < starts.length) pending.push(readChunk(next++));
  }
  return h.digest('hex');
}

/** Extents must tile [0, size) exactly, in order, each with a known type. */
function assertExtentsCoverDisk(extents: readonly Extent[], size: number): void {
  assert.ok(extents.length > 0, 'blockStatus returned no extents');
  let pos = 0;
  for (const x of extents) {
    assert.equal(x.offset, pos, `extent at ${x.offset} should start at ${pos}`);
    assert.ok(x.length > 0, `empty extent at ${x.offset}`);
    assert.ok(['data', 'zero', 'unallocated'].includes(x.type), `unknown extent type ${x.type}`);
    if (x.type === 'data') assert.ok(x.fileOffset !== undefined && Number.isSafeInteger(x.fileOffset) && x.fileOffset >= MiB, `data extent at ${x.offset} has file offset ${x.fileOffset}`);
    pos += x.length;
  }
  assert.equal(pos, size, 'extents end at the virtual size');
}

function checkLayout(layout: VhdxImage['layout'], e: CorpusEntry): void {
  assert.equal(layout.virtualSize, e.virtualSize, 'virtualSize');
  assert.equal(layout.blockSize, e.blockSize, 'blockSize');
  assert.equal(layout.logicalSectorSize, e.logicalSectorSize, 'logicalSectorSize');
  assert.equal(layout.physicalSectorSize, e.physicalSectorSize, 'physicalSectorSize');
  if (e.diskId) assert.equal(layout.diskId.toLowerCase(), e.diskId.toLowerCase(), 'diskId');
  assert.equal(layout.type, e.type, 'type');
  assert.equal(layout.hasParent, e.type === 'differencing', 'hasParent');
  assert.equal(layout.leaveBlocksAllocated, e.type === 'fixed', 'leaveBlocksAllocated');
  // The QEMU-made parent is recorded as plain "QEMU"; its identifier carries the version.
  if (e.creator) assert.ok(layout.creator.startsWith(e.creator), `creator ${JSON.stringify(layout.creator)} should start with ${JSON.stringify(e.creator)}`);
  assert.equal(layout.log.dirty, e.dirtyLog, 'log dirty flag');
}

/** Skip message when Python with libvhdi's bindings is missing, else false. */
const pyvhdiSkip = await needPyvhdi();

/** SHA-256 of each [offset, length] range of the virtual disk as libvhdi reads it. */
function pyvhdiHashes(path: string, ranges: readonly [number, number][], parentPath?: string): { size: number; hashes: string[] } {
  const script = [
    'import sys, json, hashlib, pyvhdi',
    'f = pyvhdi.file(); f.open(sys.argv[1])',
    'if len(sys.argv) > 3:',
    '    p = pyvhdi.file(); p.open(sys.argv[3]); f.set_parent(p)',
    'out = []',
    'for off, n in json.loads(sys.argv[2]):',
    '    out.append(hashlib.sha256(f.read_buffer_at_offset(n, off)).hexdigest())',
    'print(json.dumps({"size": f.get_media_size(), "hashes": out}))',
  ].join('\n');
  return JSON.parse(run(PYVHDI_PYTHON, ['-c', script, path, JSON.stringify(ranges), ...(parentPath ? [parentPath] : [])]));
}

/** Fields of `vhdiinfo` output. */
function vhdiinfo(path: string) {
  const out = run('vhdiinfo', [path]);
  const field = (name: string) => out.match(new RegExp(`^\\s*${name}\\s*:\\s*(.*)$`, 'm'))?.[1]?.trim();
  return {
    mediaSize: Number(field('Media size')?.match(/\((\d+) bytes\)/)?.[1]),
    bytesPerSector: Number(field('Bytes per sector')?.match(/^(\d+)/)?.[1]),
    diskType: field('Disk type'),
    identifier: field('Identifier'),
    parentIdentifier: field('Parent identifier'),
    parentFilename: field('Parent filename'),
  };
}

const VHDI_TYPES: Record<VhdxImage['layout']['type'], string> = { fixed: 'Fixed', dynamic: 'Dynamic', differencing: 'Differential' };

test('corpus manifest is present', { skip: noCorpus }, () => {
  assert.ok(readable.length >= 1, 'the manifest lists readable images');
  assert.ok(readable.some((e) => e.dirtyLog), 'the manifest lists a dirty-log image');
});

for (const e of readable) {
  test(`corpus: ${e.file} reads to its rawSha256`, { skip: noCorpus }, async () => {
    const path = await corpusFile(e.file);
    const before = await fileFingerprint(path);
    assert.equal(before.sha256, e.imageSha256, 'decompressed image SHA-256 matches the manifest');

    const img = await openFile(path);
    try {
      const l = img.layout;
      checkLayout(l, e);
      assert.equal(img.size, e.virtualSize);
      assert.equal(l.fileSize, Number(before.size));
      if (e.dirtyLog) {
        assert.equal(l.log.replayedInMemory, true, 'dirty log replayed in memory');
        assert.ok(l.log.entries > 0, 'active log sequence has entries');
        assert.equal(typeof l.log.headSequenceNumber, 'bigint');
        assert.ok(l.log.headSequenceNumber !== undefined && l.log.headSequenceNumber > 0n);
      } else {
        assert.equal(l.log.replayedInMemory, false);
        assert.equal(l.log.entries, 0);
      }

      const stats = await img.allocationStats();
      const total = Object.values(stats.bytesByState).reduce((a, b) => a + b, 0);
      assert.equal(total, e.virtualSize, `allocationStats bytes ${JSON.stringify(stats.bytesByState)} sum to the virtual size`);
      for (const v of Object.values(stats.bytesByState)) assert.ok(Number.isSafeInteger(v) && v >= 0);
      assert.equal(stats.bitmapBlocks, 0, 'no sector bitmap blocks in a non-differencing disk');

      const extents = await img.blockStatus(0, img.size);
      assertExtentsCoverDisk(extents, img.size);
      // Allocation statistics and block status agree on how much is stored in the file.
      const dataBytes = extents.filter((x) => x.type === 'data').reduce((a, x) => a + x.length, 0);
      assert.equal(dataBytes, stats.bytesByState.fullyPresent ?? 0, 'data extents total the fully present bytes');
      if (e.type === 'fixed') assert.deepEqual(extents.map((x) => x.type), ['data'], 'a fixed Hyper-V disk is all data');

      const info = await describeImage(img);
      assert.equal(info.virtualSize, e.virtualSize);
      assert.equal(info.log.state, e.dirtyLog ? 'dirty' : 'clean');

      assert.equal(await hashDisk(img, extents), e.rawSha256, 'SHA-256 of the whole virtual disk');

      // Every zero or unallocated extent reads as zeros (sampled at both ends and in the middle).
      for (const x of extents.filter((y) => y.type !== 'data')) {
        const end = x.offset + x.length;
        for (const at of [x.offset, x.offset + Math.floor(x.length / 2 / 512) * 512, Math.max(x.offset, end - 4096)]) {
          const b = new Uint8Array(Math.min(4096, end - at));
          await img.read(at, b);
          assert.ok(isZero(b), `${x.type} extent at ${x.offset} reads zeros at ${at}`);
        }
      }
    } finally {
      await img.close();
    }

    const after = await fileFingerprint(path);
    assert.deepEqual(after, before, 'the image file is unchanged (content, size, mtime, ctime)');
  });

  if (e.dirtyLog) {
    test(`corpus: ${e.file}: replayed into the file, reads as the in-memory replay (so to its rawSha256), in no more room`, { skip: noCorpus }, async () => {
      const cached = await corpusFile(e.file);
      const copy = join(scratch('vhdx-corpus-replay-'), e.file.replace(/\.gz$/, ''));
      await copyFile(cached, copy);
      const size = (await stat(copy)).size;
      await (await openFile(copy, { readOnly: false })).close();
      assert.equal((await stat(copy)).size, size, 'the file did not grow');
      const [replayed, inMemory] = [await openFile(copy), await openFile(cached)];
      try {
        assert.equal(replayed.layout.log.dirty, false, 'the log is clean');
        const extents = await replayed.blockStatus(0, replayed.size);
        const plain = (xs: Extent[]) => xs.map(({ offset, length, type }) => ({ offset, length, type }));
        assert.deepEqual(plain(extents), plain(await inMemory.blockStatus(0, inMemory.size)));
        // The in-memory replay reads to rawSha256 (above), its other extents as zeros: the same
        // data extents, byte for byte, make the same disk.
        const a = new Uint8Array(CHUNK);
        const b = new Uint8Array(CHUNK);
        for (const x of extents.filter((y) => y.type === 'data')) {
          for (let o = x.offset; o < x.offset + x.length; o += CHUNK) {
            const n = Math.min(CHUNK, x.offset + x.length - o);
            await Promise.all([replayed.read(o, a.subarray(0, n)), inMemory.read(o, b.subarray(0, n))]);
            assert.ok(Buffer.from(a.buffer, 0, n).equals(b.subarray(0, n)), `data at virtual offset ${o} differs`);
          }
        }
      } finally {
        await replayed.close();
        await inMemory.close();
      }
    });
  }

  test(`corpus: ${e.file} agrees with vhdiinfo`, { skip: noCorpus || needTool('vhdiinfo') }, async () => {
    const path = await corpusFile(e.file);
    const v = vhdiinfo(path);
    const img = await openFile(path);
    try {
      assert.equal(v.mediaSize, img.size, 'vhdiinfo media size');
      assert.equal(v.bytesPerSector, img.layout.logicalSectorSize, 'vhdiinfo bytes per sector');
      assert.equal(v.diskType, VHDI_TYPES[img.layout.type], 'vhdiinfo disk type');
      assert.equal(v.identifier?.toLowerCase(), img.layout.current.dataWriteGuid.toLowerCase(), 'vhdiinfo identifier is the DataWriteGuid');
    } finally {
      await img.close();
    }
  });

  const pySkip = noCorpus || pyvhdiSkip || (e.dirtyLog && 'libvhdi does not replay logs: it reads the pre-replay state');
  test(`corpus: ${e.file} reads like libvhdi (pyvhdi)`, { skip: pySkip }, async () => {
    const path = await corpusFile(e.file);
    const img = await openFile(path);
    try {
      // Sample reads: the start of every extent, the disk's last 64 KiB, and a block-straddling range.
      const extents = await img.blockStatus(0, img.size);
      const ranges: [number, number][] = [];
      for (const x of extents) ranges.push([x.offset, Math.min(x.length, MiB)]);
      ranges.push([img.size - 65536, 65536]);
      if (img.size > img.blockSize) ranges.push([img.blockSize - 4096 - 512, 8192]);
      const theirs = pyvhdiHashes(path, ranges);
      assert.equal(theirs.size, img.size, 'pyvhdi media size');
      for (let i = 0; i < ranges.length; i++) {
        const [off, n] = ranges[i]!;
        const b = new Uint8Array(n);
        await img.read(off, b);
        assert.equal(createHash('sha256').update(b).digest('hex'), theirs.hashes[i], `libvhdi and we read the same ${n} bytes at ${off}`);
      }
    } finally {
      await img.close();
    }
  });
}

for (const e of differencing) {
  const parentEntry = e.parentFile ? entries.find((p) => p.file === e.parentFile) : undefined;
  test(`corpus: ${e.file} opens as differencing; without its parent, reads fail with NO_PARENT`, { skip: noCorpus }, async () => {
    const path = await corpusFile(e.file);
    const before = await fileFingerprint(path);
    assert.equal(before.sha256, e.imageSha256, 'decompressed image SHA-256 matches the manifest');
    const img = await openFile(path, { parents: 'none' });
    let linkage;
    try {
      const l = img.layout;
      checkLayout(l, e);
      assert.equal(l.type, 'differencing');
      assert.equal(img.parent, null);
      assert.ok(l.parentLocator, 'a parent locator');
      assert.equal(l.parentLocator.locatorType.toLowerCase(), VHDX_LOCATOR_TYPE);
      const kv = new Map(l.parentLocator.entries.map(({ key, value }) => [key, value]));
      assert.equal(kv.size, l.parentLocator.entries.length, 'locator keys are unique');
      for (const k of ['parent_linkage', 'relative_path', 'volume_path', 'absolute_win32_path']) assert.ok(kv.has(k), `locator has ${k}`);
      // (The keys were each asserted present just above.)
      linkage = kv.get('parent_linkage')!;
      assert.match(linkage, /^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$/i);
      if (e.parent) assert.equal(kv.get('relative_path'), e.parent, 'relative_path names the manifest parent');
      assert.match(kv.get('volume_path')!, /^\\\\\?\\Volume\{[0-9a-f-]{36}\}\\/i);
      assert.match(kv.get('absolute_win32_path')!, /^(\\\\\?\\)?[A-Za-z]:\\|^\\\\/);

      const stats = await img.allocationStats();
      const total = Object.values(stats.bytesByState).reduce((a, b) => a + b, 0);
      assert.equal(total, e.virtualSize, 'allocationStats bytes sum to the virtual size');
      assert.ok((stats.bytesByState.partiallyPresent ?? 0) > 0, 'has partially present blocks');
      assert.ok(stats.bitmapBlocks > 0, 'has sector bitmap blocks');

      for (const [off, n] of [
        [0, 512],
        [e.virtualSize - 4096, 4096],
      ] satisfies [number, number][]) {
        await assert.rejects(img.read(off, new Uint8Array(n)), (err) => {
          assert.ok(err instanceof VhdxError, `VhdxError expected, got ${err}`);
          assert.equal(err.reason, 'NO_PARENT');
          return true;
        });
      }
    } finally {
      await img.close();
    }
    assert.deepEqual(await fileFingerprint(path), before, 'the image file is unchanged');

    // The (synthetic) parent beside it carries the DataWriteGuid the child links to.
    if (parentEntry) {
      const pimg = await openFile(await corpusFile(parentEntry.file));
      try {
        checkLayout(pimg.layout, parentEntry);
        assert.equal(`{${pimg.layout.current.dataWriteGuid}}`.toLowerCase(), linkage.toLowerCase(), "parent's DataWriteGuid equals parent_linkage");
        assert.equal(pimg.size, img.size, 'parent and child have the same virtual size');
      } finally {
        await pimg.close();
      }
    }
  });

  test(`corpus: ${e.file} reads through its parent to its rawSha256`, { skip: noCorpus || (!parentEntry && 'no parent in the manifest') }, async () => {
    // (Skipped without a parent entry.)
    const parentPath = await corpusFile(parentEntry!.file);
    const path = await corpusFile(e.file); // same folder: relative_path finds the parent
    const before = [await fileFingerprint(path), await fileFingerprint(parentPath)];
    const img = await openFile(path);
    try {
      assert.ok(img.parent, 'the parent was opened');
      assert.equal(img.linkedBy, 'parent_linkage');
      assert.equal(img.chain.length, 2);
      const extents = await img.blockStatus(0, img.size);
      assertExtentsCoverDisk(extents, img.size);
      for (const x of extents) assert.ok(x.depth === 0 || x.depth === 1, `extent at ${x.offset} has depth ${x.depth}`);
      // The manifest notes: 6200 sectors come from the child.
      const fromChild = extents.filter((x) => x.type === 'data' && x.depth === 0).reduce((a, x) => a + x.length, 0);
      assert.equal(fromChild, 6200 * 512, 'bytes the child itself holds');
      assert.equal(await hashDisk(img, extents), e.rawSha256, 'SHA-256 of the virtual disk read through the chain');
    } finally {
      await img.close();
    }
    assert.deepEqual([await fileFingerprint(path), await fileFingerprint(parentPath)], before, 'neither file changed');
  });

  test(`corpus: ${e.file} reads like libvhdi with set_parent (pyvhdi)`, { skip: noCorpus || (!parentEntry && 'no parent') || pyvhdiSkip }, async () => {
    // (Skipped without a parent entry.)
    const parentPath = await corpusFile(parentEntry!.file);
    const path = await corpusFile(e.file);
    const img = await openFile(path);
    try {
      // The start of every extent (all of those of the child itself), sector-straddling ranges, the end.
      const extents = await img.blockStatus(0, img.size);
      const ranges: [number, number][] = [];
      for (const x of extents) ranges.push([x.offset, Math.min(x.length, x.depth === 0 ? x.length : 65536)]);
      for (const x of extents.filter((y) => y.depth === 0).slice(0, 20)) ranges.push([Math.max(0, x.offset - 300), 1000]);
      ranges.push([img.size - 65536, 65536]);
      const theirs = pyvhdiHashes(path, ranges, parentPath);
      assert.equal(theirs.size, img.size);
      for (let i = 0; i < ranges.length; i++) {
        const [off, n] = ranges[i]!;
        const b = new Uint8Array(n);
        await img.read(off, b);
        assert.equal(createHash('sha256').update(b).digest('hex'), theirs.hashes[i], `libvhdi and we read the same ${n} bytes at ${off}`);
      }
    } finally {
      await img.close();
    }
  });

  test(`corpus: ${e.file} agrees with libvhdi`, { skip: noCorpus || needTool('vhdiinfo') }, async () => {
    const path = await corpusFile(e.file);
    const v = vhdiinfo(path);
    const img = await openFile(path);
    try {
      assert.equal(v.mediaSize, img.size, 'vhdiinfo media size');
      assert.equal(v.diskType, 'Differential');
      // (A differencing image has a parent locator: it opened.)
      const kv = new Map(img.layout.parentLocator!.entries.map(({ key, value }) => [key, value]));
      assert.equal(`{${v.parentIdentifier}}`.toLowerCase(), kv.get('parent_linkage')!.toLowerCase(), 'vhdiinfo parent identifier is parent_linkage');
      assert.equal(v.parentFilename, kv.get('absolute_win32_path'), 'vhdiinfo parent filename');
    } finally {
      await img.close();
    }
  });
}
