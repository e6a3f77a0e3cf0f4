// All-or-nothing requests (issue 11, finding 10): a request that cannot be done in full is refused
// before anything is touched, at every layer, and names the caller's own offset and length; a
// writable open of a damaged image changes nothing (no log replayed into it, no header updated).
// Every test compares the file's bytes (or their SHA-256) before and after.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemorySource, VhdxImage } from '../../src/index.js';
import { buildImage, putBatEntry, PayloadState, MiB, KiB } from '../helpers/build.js';
import { LOCATOR_TYPE_VHDX, makeBase, makeChild, openChain } from '../helpers/chain.js';
import { runCli, scratch } from '../helpers/env.js';
import type { VhdxError } from '../../src/errors.js';

const dir = scratch('vhdx-all-or-nothing-');
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');
let n = 0;
const path = () => join(dir, `img-${n++}.vhdx`);

test('io: a write, write-zeroes, discard or read reaching past the end changes nothing and names the request as typed', () => {
  const p = path();
  assert.equal(runCli(['create', '-f', 'vhdx', p, '64M']).status, 0);
  assert.equal(runCli(['io', '-c', 'write -P 0x11 0 64M', p]).status, 0);
  const before = sha(p);
  for (const [cmd, kind, offset, length] of <[string, string, number, number][]>[
    ['write -P 0x22 60M 8M', 'write', 60 * MiB, 8 * MiB], // four pieces of 4 MiB: the first fits
    ['write -z 60M 8M', 'write zeroes', 60 * MiB, 8 * MiB],
    ['write -z -u 32M 40M', 'write zeroes', 32 * MiB, 40 * MiB],
    ['discard 32M 40M', 'discard', 32 * MiB, 40 * MiB],
    ['read 60M 8M', 'read', 60 * MiB, 8 * MiB],
  ]) {
    const r = runCli(['io', '-c', cmd, p]);
    assert.equal(r.status, 1, cmd);
    assert.match(r.stderr, new RegExp(`${kind} of ${length} bytes at offset ${offset} is outside the ${64 * MiB}-byte disk`), cmd);
    assert.equal(sha(p), before, `${cmd}: the file is unchanged`);
  }
  const ro = runCli(['io', '-r', '-c', 'write 0 1M', p]);
  assert.equal(ro.status, 1);
  assert.match(ro.stderr, /read-only/);
  assert.equal(sha(p), before, 'a write to a read-only open changes nothing');
  assert.equal(runCli(['io', '-r', '-c', 'read -P 0x11 0 64M', p]).status, 0);
});

test('io: write 0 11G on a 10 GiB disk writes nothing (it used to write 10 GiB, then fail)', () => {
  const p = path();
  assert.equal(runCli(['create', '-f', 'vhdx', p, '10G']).status, 0);
  const before = sha(p);
  const r = runCli(['io', '-c', 'write 0 11G', p]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /write of 11811160064 bytes at offset 0 is outside the 10737418240-byte disk/);
  assert.equal(sha(p), before);
});

/** Open `bytes` writable in memory, run `fn`, close; returns the file's bytes after. */
async function afterSession(bytes: Uint8Array, fn: (img: VhdxImage) => Promise<void>): Promise<Uint8Array> {
  const src = new MemorySource(bytes.slice());
  const img = await VhdxImage.open(src, { readOnly: false });
  try {
    await fn(img);
  } finally {
    await img.close();
  }
  return src.bytes().slice(0, src.size);
}

test('library: refused requests leave the file byte-identical, headers included', async () => {
  const { bytes } = await buildImage({ virtualSize: 8 * MiB, allocate: [0, 1] });
  const after = await afterSession(bytes, async (img) => {
    const refused = async (p: Promise<unknown>, reason: string): Promise<void> => assert.rejects(p, (e: VhdxError) => e.reason === reason);
    await refused(img.write(8 * MiB - 100, new Uint8Array(200)), 'OUT_OF_RANGE');
    await refused(img.write(-1, new Uint8Array(1)), 'OUT_OF_RANGE');
    await refused(img.writeZeroes(0, 9 * MiB), 'OUT_OF_RANGE');
    await refused(img.writeZeroes(7 * MiB, 2 * MiB, { mayDiscard: true }), 'OUT_OF_RANGE');
    await refused(img.discard(MiB, 8 * MiB), 'OUT_OF_RANGE');
    await refused(img.discard(0.5, 1), 'OUT_OF_RANGE');
    await refused(img.checkRequest('write', 4 * MiB, 5 * MiB), 'OUT_OF_RANGE');
    // A fast zero that would write data into block 1 (covered in part) does not first make block 0 ZERO.
    await assert.rejects(img.writeZeroes(0, MiB + 4 * KiB, { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP');
    await assert.rejects(img.writeZeroes(MiB - 512, 512, { fast: true }), (e: VhdxError) => e.code === 'ENOTSUP');
  });
  assert.ok(Buffer.from(after).equals(Buffer.from(bytes)), 'the file is unchanged');
});

test('library: requests on a read-only or closed image are refused with the request named', async () => {
  const { bytes } = await buildImage({ virtualSize: 8 * MiB, allocate: [0] });
  const src = new MemorySource(bytes.slice());
  const img = await VhdxImage.open(src, { readOnly: true });
  await assert.rejects(img.write(0, new Uint8Array(1)), (e: VhdxError) => e.reason === 'READ_ONLY');
  await assert.rejects(img.discard(0, MiB), (e: VhdxError) => e.reason === 'READ_ONLY');
  await img.close();
  await assert.rejects(img.read(4096, new Uint8Array(512)), (e: VhdxError) => e.reason === 'CLOSED' && /read of 512 bytes at offset 4096/.test(e.message));
  await assert.rejects(img.blockStatus(0, MiB), (e: VhdxError) => e.reason === 'CLOSED');
  assert.ok(Buffer.from(src.bytes()).equals(Buffer.from(bytes)));
});

test('a truncated image: a writable open is refused and the file is untouched (no new DataWriteGuid that would orphan its children)', async () => {
  const { bytes } = await buildImage({ virtualSize: 8 * MiB, allocate: [0, 1, 2] });
  const p = path();
  writeFileSync(p, bytes);
  truncateSync(p, bytes.length - MiB - 4096); // block 2 is gone, block 1 cut
  const before = sha(p);
  for (const cmd of ['write -P 0x33 0 4K', 'write -P 0x33 6M 4K', 'write -z 0 8M', 'discard 0 8M']) {
    const r = runCli(['io', '-c', cmd, p]);
    assert.equal(r.status, 1, cmd);
    assert.match(r.stderr, /ends beyond the end of the file/, cmd);
    assert.equal(sha(p), before, `${cmd}: the file is unchanged`);
  }
  // The same through the library, on the in-memory bytes.
  const cut = readFileSync(p);
  const src = new MemorySource(new Uint8Array(cut));
  await assert.rejects(VhdxImage.open(src, { readOnly: false }), (e: VhdxError) => e.reason === 'BAT_ENTRY_OUT_OF_BOUNDS');
  assert.ok(Buffer.from(src.bytes()).equals(cut));
});

test('a dirty log is not replayed into a file whose BAT is damaged', async () => {
  // 1 GiB: BAT entry 700 lies in the BAT's second 4 KiB sector, which the log does not rewrite.
  const { bytes, plan } = await buildImage({ virtualSize: 1024 * MiB, allocate: [5], logAllocate: [1, 2] });
  const b = bytes.slice();
  putBatEntry(b, plan, 700, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: b.length / MiB + 10 });
  const src = new MemorySource(b.slice());
  await assert.rejects(VhdxImage.open(src, { readOnly: false }), (e: VhdxError) => e.reason === 'BAT_ENTRY_OUT_OF_BOUNDS');
  assert.ok(Buffer.from(src.bytes()).equals(Buffer.from(b)), 'not replayed');
  // Undamaged, the same image opens writable and the log is replayed.
  const ok = new MemorySource(bytes.slice());
  const img = await VhdxImage.open(ok, { readOnly: false });
  assert.equal(img.layout.log.dirty, false);
  await img.close();
});

test('a dirty log is not replayed into a differencing image whose parent does not match', async () => {
  const { bytes } = await buildImage({
    virtualSize: 8 * MiB,
    logAllocate: [1],
    parentLocator: {
      locatorType: LOCATOR_TYPE_VHDX,
      entries: [
        { key: 'parent_linkage', value: '{11111111-2222-3333-4444-555555555555}' },
        { key: 'relative_path', value: '.\\parent.vhdx' },
      ],
    },
  });
  const { src: parentSrc } = await makeBase({ size: 8 * MiB });
  const src = new MemorySource(bytes.slice());
  await assert.rejects(
    VhdxImage.open(src, { readOnly: false, parent: () => VhdxImage.open(parentSrc) }),
    (e: VhdxError) => e.reason === 'PARENT_MISMATCH',
  );
  assert.ok(Buffer.from(src.bytes()).equals(Buffer.from(bytes)), 'not replayed');
});

test("a differencing write that needs its parent's damaged BAT page is refused before the child changes", async () => {
  const { src: parentSrc } = await makeBase({ size: 8 * MiB, fill: [{ kind: 'data', offset: 3 * MiB, length: MiB }] });
  const parent = await VhdxImage.open(parentSrc);
  const childSrc = await makeChild(parent, { blockSize: MiB });
  await parent.close();
  // Cut the parent's only data block off its end: its BAT page no longer validates.
  await parentSrc.truncate(parentSrc.size - MiB);
  const before = childSrc.bytes();
  const img = await openChain([childSrc, parentSrc]);
  await assert.rejects(img.write(3 * MiB + 100, new Uint8Array(10).fill(7)), (e: VhdxError) => e.reason === 'BAT_ENTRY_OUT_OF_BOUNDS');
  await img.close();
  assert.ok(Buffer.from(childSrc.bytes()).equals(Buffer.from(before)), 'the child is unchanged');
});
