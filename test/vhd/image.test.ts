// VhdImage (src/vhd/image.ts, writer.ts) against an in-memory model: fixed, dynamic and
// differencing disks read what was written, with holes where nothing was; block status reports
// data, zero and holes as VHDX does; requests that cannot be done change nothing; parents are
// checked; the writes land in the order that keeps the file consistent without a log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdImage, createVhd, type CreateVhdOptions, type VhdOpenOptions, type VhdxError } from '../../src/index.js';
import { FaultySource, type FaultyOp } from '../../src/io/faulty.js';
import { SparseModel, pattern, bytesEqual } from '../helpers/model.js';
import { seededRandom } from '../helpers/hex.js';
import { KiB, MiB, copyOf, memoryResolver, newVhd } from '../helpers/vhd.js';


async function assertReadsModel(img: VhdImage, model: SparseModel, label: string): Promise<void> {
  const got = new Uint8Array(img.size);
  await img.read(0, got);
  const want = new Uint8Array(img.size);
  model.read(0, want);
  if (!bytesEqual(got, want)) {
    const i = got.findIndex((b, k) => b !== want[k]);
    assert.fail(`${label}: byte ${i} is ${got[i]}, expected ${want[i]}`);
  }
}

/** Random writes, zeroes and discards (some unaligned, some across blocks), applied to image and model. */
async function randomOps(img: VhdImage, model: SparseModel, seed: number, count: number): Promise<void> {
  const r = seededRandom(seed);
  for (let i = 0; i < count; i++) {
    const len = 1 + Math.floor(r() * (r() < 0.3 ? 700 * KiB : 9000));
    const off = Math.floor(r() * (img.size - len));
    const kind = r();
    if (kind < 0.7) {
      const data = pattern(seed * 1000 + i, len);
      await img.write(off, data, { fua: r() < 0.1 });
      model.write(off, data);
    } else if (kind < 0.85) {
      await img.writeZeroes(off, len);
      model.zero(off, len);
    } else {
      await img.discard(off, len);
      model.zero(off, len);
    }
    if (r() < 0.1) await img.flush();
  }
}

for (const subformat of ['dynamic', 'fixed'] as const) {
  test(`${subformat} VHD: random writes, zeroes and discards read back, before and after a reopen`, async () => {
    const { src } = await newVhd({ size: 12 * MiB + 512 * 3, subformat, blockSize: 512 * KiB });
    const img = await VhdImage.open(src, { readOnly: false });
    const model = new SparseModel();
    await randomOps(img, model, subformat === 'fixed' ? 7 : 3, 60);
    await assertReadsModel(img, model, 'open');
    await img.close();
    const again = await VhdImage.open(copyOf(src));
    await assertReadsModel(again, model, 'reopened');
  });
}

test('dynamic VHD: blocks never written are holes, written ones data, the file grows by whole blocks only', async () => {
  const { src } = await newVhd({ size: 8 * MiB, blockSize: MiB });
  const before = src.size;
  const img = await VhdImage.open(src, { readOnly: false });
  await img.write(3 * MiB + 10, new Uint8Array(100).fill(1));
  await img.writeZeroes(5 * MiB, 2 * MiB); // holes stay holes
  await img.close();
  assert.equal(src.size, before + 512 + MiB, 'one block (bitmap + data) added');
  const ro = await VhdImage.open(copyOf(src));
  assert.deepEqual(await ro.blockStatus(0, ro.size), [
    { offset: 0, length: 3 * MiB, type: 'unallocated' },
    { offset: 3 * MiB, length: MiB, type: 'data', fileOffset: before - 512 + 512 },
    { offset: 4 * MiB, length: 4 * MiB, type: 'unallocated' },
  ]);
});

test('concurrent writes into one unallocated block allocate it once and all land', async () => {
  const { src } = await newVhd({ size: 4 * MiB, blockSize: MiB });
  const before = src.size;
  const img = await VhdImage.open(src, { readOnly: false });
  const writes = Array.from({ length: 16 }, (_, i) => ({ off: MiB + i * 64 * KiB + 7, data: pattern(i + 1, 3000) }));
  await Promise.all(writes.map((w) => img.write(w.off, w.data)));
  await img.close();
  assert.equal(src.size, before + 512 + MiB);
  const ro = await VhdImage.open(copyOf(src));
  for (const w of writes) {
    const got = new Uint8Array(w.data.length);
    await ro.read(w.off, got);
    assert.ok(bytesEqual(got, w.data));
  }
});

test('differencing VHD: reads show the parent where the child has nothing, block status gives the depth', async () => {
  const { src: psrc } = await newVhd({ size: 6 * MiB, blockSize: 512 * KiB });
  const model = new SparseModel();
  const p = await VhdImage.open(psrc, { readOnly: false });
  await randomOps(p, model, 11, 25);
  await p.close();
  const parents = new Map([[(await VhdImage.open(copyOf(psrc))).uniqueId, psrc]]);
  const resolve = memoryResolver(parents);
  const parentImg = await VhdImage.open(copyOf(psrc));
  const { src: csrc } = await newVhd({ parent: parentImg, blockSize: 512 * KiB, parentPaths: [{ platform: 'W2ru', path: '.\\p.vhd' }] });
  const child = await VhdImage.open(csrc, { readOnly: false, parent: resolve });
  await assertReadsModel(child, model, 'fresh child');
  await randomOps(child, model, 12, 40);
  await assertReadsModel(child, model, 'child after writes');
  await child.close();
  const ro = await VhdImage.open(copyOf(csrc), { parent: resolve });
  await assertReadsModel(ro, model, 'child reopened');
  const ext = await ro.blockStatus(0, ro.size);
  assert.equal(ext.reduce((n, x) => n + x.length, 0), ro.size);
  assert.ok(ext.every((x) => x.depth === 0 || x.depth === 1), 'depth 0 (child) or 1 (parent)');
  assert.ok(ext.some((x) => x.depth === 0 && x.type === 'data') && ext.some((x) => x.depth === 1));
  // Every depth-0 extent reads the child's own bytes at its file offset.
  const file = csrc.bytes();
  for (const x of ext.filter((e) => e.depth === 0 && e.type === 'data')) {
    const got = new Uint8Array(x.length);
    await ro.read(x.offset, got);
    assert.ok(x.fileOffset !== undefined);
    assert.ok(bytesEqual(got, file.subarray(x.fileOffset, x.fileOffset + x.length)));
  }
});

test('a differencing disk sets whole bitmap bytes: every 4 KiB unit a write touches is complete', async () => {
  const { src: psrc } = await newVhd({ size: 2 * MiB });
  const p = await VhdImage.open(psrc, { readOnly: false });
  await p.write(0, new Uint8Array(2 * MiB).fill(0xaa));
  await p.close();
  const parentImg = await VhdImage.open(copyOf(psrc));
  const { src: csrc } = await newVhd({ parent: parentImg });
  const resolve = memoryResolver(new Map([[parentImg.uniqueId, psrc]]));
  const c = await VhdImage.open(csrc, { readOnly: false, parent: resolve });
  await c.write(4096 + 1000, new Uint8Array(10).fill(0xbb)); // inside sector 9 of unit 1
  await c.close();
  const bytes = csrc.bytes();
  // The bitmap of the one block is right after the BAT (at the old footer's place).
  const bitmap = bytes.subarray(2048, 2048 + 512);
  assert.equal(bitmap[0], 0x00);
  assert.equal(bitmap[1], 0xff, 'sectors 8 to 15 all present');
  assert.ok(bitmap.subarray(2).every((b) => b === 0));
  const ro = await VhdImage.open(copyOf(csrc), { parent: resolve });
  const got = new Uint8Array(8192);
  await ro.read(0, got);
  const want = new Uint8Array(8192).fill(0xaa);
  want.fill(0xbb, 5096, 5106);
  assert.ok(bytesEqual(got, want));
});

test('requests that cannot be done change nothing: read-only, out of range, closed, no parent', async () => {
  const { src } = await newVhd({ size: 4 * MiB });
  const snapshot = src.bytes().slice();
  const ro = await VhdImage.open(src);
  await assert.rejects(ro.write(0, new Uint8Array(512)), (e: VhdxError) => e.code === 'EROFS');
  await assert.rejects(ro.read(4 * MiB - 100, new Uint8Array(200)), (e: VhdxError) => e.reason === 'OUT_OF_RANGE');
  const rw = await VhdImage.open(src, { readOnly: false });
  await assert.rejects(rw.write(4 * MiB - 100, new Uint8Array(200)), (e: VhdxError) => e.reason === 'OUT_OF_RANGE');
  await assert.rejects(rw.writeZeroes(0, 512, { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP');
  await rw.close();
  await assert.rejects(rw.read(0, new Uint8Array(1)), (e: VhdxError) => e.reason === 'CLOSED');
  assert.ok(bytesEqual(src.bytes(), snapshot));
  // A differencing disk opened without its parent: metadata yes, data no.
  const parent = await VhdImage.open(copyOf(src));
  const { src: csrc } = await newVhd({ parent });
  const child = await VhdImage.open(csrc, { readOnly: false });
  assert.equal(child.type, 'differencing');
  await assert.rejects(child.read(0, new Uint8Array(512)), (e: VhdxError) => e.reason === 'NO_PARENT');
  await assert.rejects(child.write(0, new Uint8Array(512)), (e: VhdxError) => e.reason === 'NO_PARENT');
});

test('parents are checked: unique id, size, time stamp (modification time or footer), loops', async () => {
  const time = Date.UTC(2024, 0, 1);
  const { src: psrc } = await newVhd({ size: 4 * MiB, time });
  const parent = await VhdImage.open(copyOf(psrc));
  const mtime = Date.UTC(2024, 5, 1);
  const { src: byFooter } = await newVhd({ parent });
  const { src: byMtime } = await newVhd({ parent, parentModifiedTime: mtime });
  const open = (src: MemorySource, resolveTo: () => Promise<VhdImage>, opts: VhdOpenOptions = {}) => VhdImage.open(copyOf(src), { parent: async () => resolveTo(), ...opts });
  // The parent footer's time stamp matches; the file's modification time matches when given.
  await (await open(byFooter, () => VhdImage.open(copyOf(psrc)))).close();
  await (await open(byMtime, () => VhdImage.open(copyOf(psrc), { modifiedTime: mtime }))).close();
  await assert.rejects(open(byMtime, () => VhdImage.open(copyOf(psrc))), (e: VhdxError) => e.reason === 'PARENT_MISMATCH' && /changed since/.test(e.message));
  await (await open(byMtime, () => VhdImage.open(copyOf(psrc)), { ignoreParentTimestamp: true })).close();
  // Another disk of the same size is not the parent.
  const { src: other } = await newVhd({ size: 4 * MiB, time });
  await assert.rejects(open(byFooter, () => VhdImage.open(copyOf(other))), (e: VhdxError) => e.reason === 'PARENT_MISMATCH' && /unique id/.test(e.message));
  // A chain that comes back to itself: B's parent is A, A's parent is B.
  const idA = '0000000a-0000-4000-8000-000000000000';
  const idB = '0000000b-0000-4000-8000-000000000000';
  const { src: a } = await newVhd({ parent, uniqueId: idA });
  const { src: b } = await newVhd({ parent, uniqueId: idB });
  const relink = async (src: MemorySource, parentId: string) => {
    const img = await VhdImage.open(src);
    const at = img.layout.dynamic!.headerOffset;
    const { DYNAMIC_HEADER } = await import('../../src/vhd/dynamic-header.js');
    const bytes = src.bytes();
    const h = DYNAMIC_HEADER.decode(bytes.subarray(at, at + 1024));
    DYNAMIC_HEADER.encode({ ...h, parentUniqueId: parentId }, bytes, at);
  };
  await relink(a, idB);
  await relink(b, idA);
  const resolve = memoryResolver(new Map([[idA, a], [idB, b]]), { ignoreParentTimestamp: true });
  await assert.rejects(VhdImage.open(copyOf(a), { parent: resolve, ignoreParentTimestamp: true }), (e: VhdxError) => e.reason === 'PARENT_LOOP');
  // A resolver that gives the child itself.
  await relink(a, idA);
  await assert.rejects(VhdImage.open(copyOf(a), { parent: async () => VhdImage.open(copyOf(a)), ignoreParentTimestamp: true }), (e: VhdxError) => e.reason === 'PARENT_LOOP');
});

test('a dynamic VHD whose end footer is missing reads from its copy at offset 0; a writable open refuses', async () => {
  const { src } = await newVhd({ size: 4 * MiB });
  const img = await VhdImage.open(src, { readOnly: false });
  await img.write(100, new Uint8Array(100).fill(9));
  await img.close();
  const bytes = src.bytes().slice();
  bytes.fill(0, bytes.length - 512); // the footer at the end gone
  const ro = await VhdImage.open(new MemorySource(bytes));
  const got = new Uint8Array(100);
  await ro.read(100, got);
  assert.ok(got.every((b) => b === 9));
  await assert.rejects(VhdImage.open(new MemorySource(bytes), { readOnly: false }), (e: VhdxError) => e.reason === 'FOOTER_MISSING');
});

test('write order: a block\'s data and bitmap and the footer at the new end are flushed before its BAT entry is written', async () => {
  const { src } = await newVhd({ size: 8 * MiB, blockSize: MiB });
  const disk = new FaultySource(src.bytes(), { trace: true });
  const img = await VhdImage.open(disk, { readOnly: false });
  const tableOffset = img.layout.dynamic!.tableOffset;
  const blockAt = img.layout.endFooterOffset;
  await img.write(2 * MiB + 4096, new Uint8Array(4096).fill(5));
  await img.flush();
  const ops = disk.trace!;
  const idx = (pred: (o: FaultyOp) => boolean) => ops.findIndex(pred);
  const dataWrite = idx((o) => o.kind === 'write' && o.offset === blockAt + 512 + 4096);
  const bitmapWrite = idx((o) => o.kind === 'write' && o.offset === blockAt);
  const footerWrite = idx((o) => o.kind === 'write' && o.offset === blockAt + 512 + MiB);
  const batWrite = idx((o) => o.kind === 'write' && o.offset === tableOffset);
  const flushes = ops.map((o, i) => (o.kind === 'flush' ? i : -1)).filter((i) => i >= 0);
  assert.ok(dataWrite >= 0 && bitmapWrite >= 0 && footerWrite >= 0 && batWrite >= 0, JSON.stringify(ops.map((o) => [o.kind, o.offset])));
  const barrier = flushes.find((f) => f > Math.max(dataWrite, bitmapWrite, footerWrite));
  assert.ok(barrier !== undefined && barrier < batWrite, 'a flush between the block (and footer) and the BAT entry');
  assert.ok(flushes.some((f) => f > batWrite), 'the BAT entry is flushed too');
  assert.equal(ops[batWrite]!.data?.length, 512, 'the BAT is written a whole sector at a time');
});

test('a fixed VHD is its data then the footer: block status is one data extent at the same offsets', async () => {
  const { src } = await newVhd({ size: 3 * MiB, subformat: 'fixed' });
  assert.equal(src.size, 3 * MiB + 512);
  const img = await VhdImage.open(src, { readOnly: false });
  await img.write(MiB, new Uint8Array(10).fill(4));
  assert.deepEqual(await img.blockStatus(0, img.size), [{ offset: 0, length: 3 * MiB, type: 'data', fileOffset: 0 }]);
  await img.close();
  assert.equal(src.bytes()[MiB], 4);
});

test('createVhd refuses what the format cannot hold before writing anything', async () => {
  const src = new MemorySource();
  // `subformat: 'sparse'` does not exist, on purpose.
  const refusals: [CreateVhdOptions, RegExp][] = [
    [{ size: 1000 }, /multiple of 512/],
    [{ size: 2041 * 1024 ** 3 }, /at most/],
    [{ size: MiB, blockSize: 3 * MiB }, /power of two/],
    [{ size: MiB, creatorApplication: 'toolong' }, /four ASCII/],
    [{ size: MiB, subformat: 'sparse' as CreateVhdOptions['subformat'] }, /subformat/],
  ];
  for (const [opts, re] of refusals) {
    await assert.rejects(createVhd(src, opts), (e: VhdxError) => e.reason === 'BAD_ARGUMENT' && re.test(e.message), JSON.stringify(opts));
  }
  assert.equal(src.size, 0);
  const r = await createVhd(src, { size: 100 * MiB, roundToGeometry: true });
  assert.equal(r.size, 104865792);
});
