// `check` and the readers agree: what check calls clean (or warnings only), open, read,
// blockStatus, allocationStats and describe accept; what the readers refuse, check reports as a
// corruption. The property over thousands of mutated images is in test/fuzz.test.ts; these are
// the cases found by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxError, VhdxImage, describe } from '../../src/index.js';
import type { OpenOptions, ParentLocator, ParentResolver } from '../../src/index.js';
import { checkImage } from '../../src/driver/check.js';
import { buildImage, putBatEntry, batEntryAt, setU32, fillByte, PayloadState, MiB } from '../helpers/build.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTool, run, runCli, scratch } from '../helpers/env.js';

const dir = scratch('vhdx-check-agrees-');
let n = 0;
function file(bytes: Uint8Array): string {
  const p = join(dir, `img-${n++}.vhdx`);
  writeFileSync(p, bytes);
  return p;
}

/** Everything a reader does with an image: open, describe, allocation scan, block status, read it all. */
async function readAll(bytes: Uint8Array, opts: OpenOptions = {}) {
  const img = await VhdxImage.open(new MemorySource(bytes.slice(), { readOnly: true }), opts);
  try {
    await describe(img);
    await img.allocationStats();
    const extents = await img.blockStatus(0, img.size);
    const buf = new Uint8Array(img.size);
    await img.read(0, buf);
    return { extents, data: buf };
  } finally {
    await img.close();
  }
}

test('non-zero BAT entries past the disk\'s last block: check warns, every reader ignores them', async () => {
  // 3 blocks of 1 MiB: entries 3 to 4095 of the first chunk describe no block of the disk.
  const { bytes, plan } = await buildImage({ virtualSize: 3 * MiB, allocate: [1] });
  const b = bytes.slice();
  putBatEntry(b, plan, 3, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 2 ** 30 }); // far past the file's end
  putBatEntry(b, plan, 4, { state: 4, fileOffsetMB: 0 }); // an undefined state
  setU32(b, batEntryAt(plan, 5), 0x0ffff8 | PayloadState.FULLY_PRESENT); // reserved bits set
  putBatEntry(b, plan, 4095, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: 1 }); // inside the header section

  const r = await checkImage(new MemorySource(b.slice()));
  assert.equal(r.corruptions, 0, JSON.stringify(r.findings));
  assert.deepEqual(
    r.findings.filter((f) => f.severity === 'warning').map((f) => [f.reason, f.structure]),
    [['BAD_BAT_ENTRY', 'BAT entry 3']],
  );
  const { extents, data } = await readAll(b);
  assert.deepEqual(extents.map((e) => e.type), ['unallocated', 'data', 'unallocated']);
  assert.ok(data.subarray(MiB, 2 * MiB).every((x) => x === fillByte(1)));
  assert.ok(data.subarray(0, MiB).every((x) => x === 0));
});

test('the same image through the CLI: check exits 0, info, map and convert succeed, qemu-img reads the same bytes', async () => {
  const { bytes, plan } = await buildImage({ virtualSize: 3 * MiB, allocate: [1] });
  const b = bytes.slice();
  putBatEntry(b, plan, 3, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 2 ** 30 });
  const p = file(b);
  assert.equal(runCli(['check', p]).status, 0);
  for (const args of [['info', p], ['map', p], ['convert', '-O', 'raw', p, `${p}.raw`]]) {
    const r = runCli(args);
    assert.equal(r.status, 0, `${args[0]}: ${r.stderr}`);
  }
  const raw = readFileSync(`${p}.raw`);
  assert.equal(raw.length, 3 * MiB);
  assert.ok(raw.subarray(MiB, 2 * MiB).every((x) => x === fillByte(1)));
  if (!needTool('qemu-img')) {
    run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', p, `${p}.qemu.raw`]);
    assert.ok(readFileSync(`${p}.qemu.raw`).equals(raw), 'qemu-img reads the same bytes');
  }
});

// ---- parent locators ----------------------------------------------------------------------------

const LOCATOR_TYPE_VHDX = 'b04aefb7-d19e-4a81-b789-25b8e9445913';
const LINKAGE = '{83ef5fc2-4f4f-4a3c-9a58-8d5e4c36d0a1}';

/** A parent of `size` bytes whose DataWriteGuid is LINKAGE, and a resolver that opens it. */
async function parentWith(size: number, sector: 512 | 4096 = 512): Promise<ParentResolver> {
  const { bytes } = await buildImage({ virtualSize: size, logicalSectorSize: sector, allocate: [0] });
  const src = new MemorySource(bytes.slice());
  const img = await VhdxImage.open(src, { readOnly: false });
  img.setNextDataWriteGuid(LINKAGE);
  await img.write(0, new Uint8Array(512).fill(9));
  await img.close();
  // Like openFile's resolver, it needs a path to follow.
  return async ({ locator }) => {
    if (!locator.entries.some((e) => e.key === 'relative_path')) throw new VhdxError('ENOENT', 'PARENT_NOT_FOUND', 'its locator has no path');
    return VhdxImage.open(new MemorySource(src.bytes().slice(), { readOnly: true }));
  };
}

async function childWith(entries: ParentLocator['entries'], { locatorType = LOCATOR_TYPE_VHDX, size = 8 * MiB } = {}): Promise<Uint8Array> {
  return (await buildImage({ virtualSize: size, parentLocator: { locatorType, entries } })).bytes;
}

const good: [ParentLocator['entries'][number], ParentLocator['entries'][number]] = [
  { key: 'parent_linkage', value: LINKAGE },
  { key: 'relative_path', value: '.\\parent.vhdx' },
];

test('parent locator problems are check corruptions, and the readers refuse the same chains', async () => {
  const parent = await parentWith(8 * MiB);
  const cases: [what: string, bytes: Uint8Array, reason: string, message: RegExp][] = [
    ['an unknown locator type', await childWith(good, { locatorType: '11111111-2222-3333-4444-555555555555' }), 'BAD_PARENT_LOCATOR', /not the VHDX locator type/],
    ['no parent_linkage', await childWith([good[1]]), 'BAD_PARENT_LOCATOR', /parent_linkage is missing/],
    ['a parent_linkage that is not a GUID', await childWith([{ key: 'parent_linkage', value: 'yes' }, good[1]]), 'BAD_PARENT_LOCATOR', /not a GUID/],
    ['no path to the parent', await childWith([good[0]]), 'BAD_PARENT_LOCATOR', /names no path/],
    ['a linkage the parent does not have', await childWith([{ key: 'parent_linkage', value: '{00000000-1111-2222-3333-444444444444}' }, good[1]]), 'PARENT_MISMATCH', /is not the child's parent_linkage/],
    ['a parent larger than the child', await childWith(good, { size: 4 * MiB }), 'PARENT_MISMATCH', /is 8388608 bytes, more than the child's 4194304/],
  ];
  for (const [what, bytes, reason, message] of cases) {
    const r = await checkImage(new MemorySource(bytes.slice()), { parent });
    const c = r.findings.filter((f) => f.severity === 'corruption');
    assert.deepEqual(c.map((f) => [f.reason, f.structure]), [[reason, 'parent locator']], `${what}: ${JSON.stringify(r.findings)}`);
    assert.match(c[0]!.message, message, what);
    assert.equal(c[0]!.repairableBy, null);
    // A finding lists its structure apart: the message does not repeat it.
    assert.doesNotMatch(c[0]!.message, /\(parent locator/);
    await assert.rejects(readAll(bytes, { parent }), (e: VhdxError) => ['BAD_PARENT_LOCATOR', 'PARENT_MISMATCH', 'PARENT_NOT_FOUND'].includes(e.reason), what);
  }
  // The locator's own faults are found without the chain too; the parent's, only with it.
  assert.equal((await checkImage(new MemorySource(cases[0]![1].slice()))).corruptions, 1);
  assert.equal((await checkImage(new MemorySource(cases[4]![1].slice()))).corruptions, 0);
  // A good locator and its parent: clean, and the chain reads.
  const ok = await childWith(good);
  const r = await checkImage(new MemorySource(ok.slice()), { parent });
  assert.equal(r.corruptions + r.warnings, 0, JSON.stringify(r.findings));
  const { data } = await readAll(ok, { parent });
  assert.ok(data.subarray(0, 512).every((x) => x === 9), 'the parent shows through');
});

test('vhdx check follows the chain as the readers do (--parents), and says why a parent is unusable', () => {
  const parentPath = join(dir, 'parent.vhdx');
  const childPath = join(dir, 'child.vhdx');
  assert.equal(runCli(['create', '-f', 'vhdx', parentPath, '8M']).status, 0);
  assert.equal(runCli(['create', '-f', 'vhdx', '-b', parentPath, childPath]).status, 0);
  assert.equal(runCli(['check', childPath]).status, 0);
  // Writing to the parent gives it a new DataWriteGuid: the child no longer links to it.
  assert.equal(runCli(['io', '-c', 'write 0 4K', parentPath]).status, 0);
  const mismatch = runCli(['check', '--output=json', childPath]);
  assert.equal(mismatch.status, 2);
  assert.deepEqual(JSON.parse(mismatch.stdout).findings.map((f: { reason: string }) => f.reason), ['PARENT_MISMATCH']);
  assert.notEqual(runCli(['map', childPath]).status, 0, 'the readers refuse it too');
  assert.equal(runCli(['check', '--parents=none', childPath]).status, 0, 'the image alone is fine');
  const gone = runCli(['check', '--parents=relative', join(dir, 'missing-child.vhdx')]);
  assert.equal(gone.status, 1, 'a missing file: the check cannot run');
  writeFileSync(join(dir, 'lonely.vhdx'), readFileSync(childPath));
  const lonely = runCli(['check', join(dir, 'lonely.vhdx')]);
  assert.equal(lonely.status, 2);
  assert.match(lonely.stdout, /ERROR: cannot open the parent of .*lonely\.vhdx/);
});
