// checkImage / repairImage on images built in memory: clean images check clean, every class of
// damage gives its finding (reason, severity, structure), repairs fix what they claim to and
// refuse (changing nothing) what they cannot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, VhdxError } from '../../src/index.js';
import { checkImage, repairImage, MAX_FINDINGS, type CheckOptions, type CheckResult, type Finding, type FindingSeverity, type RepairMode, type RepairResult } from '../../src/driver/check.js';
import { HEADER } from '../../src/format/header.js';
import { REGION_TABLE_HEADER } from '../../src/format/region-table.js';
import { LOCATOR_TYPE_VHDX } from '../../src/format/constants.js';
import {
  buildImage,
  fillByte,
  putBatEntry,
  batEntryAt,
  regionEntryAt,
  setU32,
  getU32,
  resealRegionTables,
  view,
  HEADER_AT,
  REGION_TABLE_AT,
  REGION_INDEX,
  PayloadState,
  MiB,
  KiB,
  type BuildOptions,
} from '../helpers/build.js';

const SB_PRESENT = 6;
/** Chunk ratio of the builder's default geometry (1 MiB blocks, 512-byte sectors). */
const C = 4096;

async function check(bytes: Uint8Array, opts?: CheckOptions): Promise<CheckResult> {
  return checkImage(new MemorySource(bytes.slice()), opts);
}

function only(result: CheckResult, severity: FindingSeverity): Finding[] {
  return result.findings.filter((f) => f.severity === severity);
}

function assertClean(r: CheckResult, what = 'image'): void {
  assert.equal(r.supported, true, `${what}: supported`);
  assert.equal(r.canComplete, true, `${what}: check completes`);
  assert.deepEqual(
    r.findings.filter((f) => f.severity !== 'info'),
    [],
    `${what}: no findings but info`,
  );
  assert.equal(r.corruptions, 0);
  assert.equal(r.leaks, 0);
  assert.equal(r.leakedBytes, 0);
  assert.equal(r.warnings, 0);
}

/** The one corruption of `r`, asserted to have `reason` (and `structure` when given). */
function theCorruption(r: CheckResult, reason: string, structure?: string): Finding {
  const c = only(r, 'corruption');
  assert.equal(c.length, 1, `one corruption, got ${JSON.stringify(r.findings, null, 1)}`);
  const [found] = c;
  assert.ok(found);
  assert.equal(found.reason, reason);
  if (structure !== undefined) assert.equal(found.structure, structure);
  assert.equal(r.corruptions, 1);
  return found;
}

async function assertRepairRefused(bytes: Uint8Array, mode: RepairMode = 'all'): Promise<RepairResult> {
  const src = new MemorySource(bytes.slice());
  const res = await repairImage(src, { mode });
  assert.deepEqual(res.actions, [], 'nothing repaired');
  assert.ok(res.refusal, 'a refusal is given');
  assert.ok(res.refused.length > 0 || res.before.corruptions > 0, 'it names what stopped it');
  assert.deepEqual(Buffer.compare(src.bytes(), bytes), 0, 'the image is unchanged, byte for byte');
  assert.equal(src.size, bytes.length, 'the file size is unchanged');
  return res;
}

function headerSeq(bytes: Uint8Array, slot: 1 | 2): bigint {
  const at = HEADER_AT[slot - 1]!;
  return HEADER.decode(bytes.subarray(at, at + 4096)).sequenceNumber;
}

// ------------------------------------------------------------------------------------------
// Clean images

test('clean dynamic image with blocks: no findings, allocation figures', async () => {
  const { bytes } = await buildImage({ allocate: [0, 3, 7] });
  const r = await check(bytes);
  assertClean(r);
  assert.equal(r.type, 'dynamic');
  assert.deepEqual(r.log, { state: 'clean', entries: 0 });
  assert.equal(r.totalBlocks, 64);
  assert.equal(r.allocatedBlocks, 3);
  assert.equal(r.fragmentedBlocks, 0, 'appended in virtual-disk order');
  assert.equal(r.imageEndOffset, bytes.length);
  assert.equal(r.fileSize, bytes.length);
});

test('clean fixed image, clean fresh dynamic image, 4 KiB sectors, a partial last block', async () => {
  for (const opts of <BuildOptions[]>[
    { fixed: true, virtualSize: 8 * MiB },
    {},
    { logicalSectorSize: 4096, allocate: [1] },
    { virtualSize: 5 * MiB + 512, blockSize: 2 * MiB, allocate: [2] },
  ]) {
    const { bytes } = await buildImage(opts);
    assertClean(await check(bytes), JSON.stringify(opts));
  }
  const { bytes } = await buildImage({ fixed: true, virtualSize: 8 * MiB });
  assert.equal((await check(bytes)).allocatedBlocks, 8);
});

test('a differencing disk: PARTIALLY_PRESENT with its sector bitmap is clean; without, BAD_BLOCK_STATE', async () => {
  const parentLocator = { locatorType: LOCATOR_TYPE_VHDX, entries: [{ key: 'parent_linkage', value: '{11111111-2222-3333-4444-555555555555}' }, { key: 'relative_path', value: '.\\p.vhdx' }] };
  const { bytes, plan } = await buildImage({ parentLocator });
  const grown = new Uint8Array(bytes.length + 2 * MiB);
  grown.set(bytes);
  const blockAt = bytes.length / MiB;
  putBatEntry(grown, plan, 1, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: blockAt });
  putBatEntry(grown, plan, C, { state: SB_PRESENT, fileOffsetMB: blockAt + 1 });
  const r = await check(grown);
  assertClean(r, 'differencing');
  assert.equal(r.type, 'differencing');
  assert.equal(r.allocatedBlocks, 1);
  assert.equal(r.bitmapBlocks, 1);

  const noBitmap = grown.slice();
  putBatEntry(noBitmap, plan, C, { state: 0, fileOffsetMB: 0 });
  const f = theCorruption(await check(noBitmap), 'BAD_BLOCK_STATE', `BAT entry ${C}`);
  assert.match(f.message, /PARTIALLY_PRESENT blocks but its sector bitmap block is not present/);
});

// ------------------------------------------------------------------------------------------
// Headers

test('a damaged non-current header: corruption that repair all rewrites from the current one', async () => {
  const { bytes } = await buildImage({ allocate: [1] });
  // The builder's header 2 (sequence 1) is current; damage header 1.
  const bad = bytes.slice();
  bad[HEADER_AT[0] + 200]! ^= 0xff;
  const r = await check(bad);
  const f = theCorruption(r, 'BAD_CHECKSUM', 'header 1');
  assert.equal(f.offset, HEADER_AT[0]);
  assert.equal(f.repairableBy, 'all');

  // 'leaks' has nothing to do here and changes nothing.
  const src0 = new MemorySource(bad.slice());
  const none = await repairImage(src0, { mode: 'leaks' });
  assert.deepEqual(none.actions, []);
  assert.equal(Buffer.compare(src0.bytes(), bad), 0);

  const src = new MemorySource(bad.slice());
  const res = await repairImage(src, { mode: 'all' });
  assert.deepEqual(res.actions.map((a) => a.action), ['rewriteHeaders']);
  assert.equal(res.corruptionsFixed, 1);
  assertClean(res.after, 'after repair');
  const out = src.bytes();
  const s1 = headerSeq(out, 1);
  const s2 = headerSeq(out, 2);
  assert.deepEqual([s1, s2].sort(), [2n, 3n], 'both slots rewritten, sequence numbers advanced');
  // The payload is untouched.
  const img = await VhdxImage.open(new MemorySource(out.slice()));
  const buf = new Uint8Array(4096);
  await img.read(MiB, buf);
  assert.ok(buf.every((x) => x === fillByte(1)));
});

test('header copies: bad signature, bad version on the older one, damaged current copy', async () => {
  const { bytes } = await buildImage();
  const noSig = bytes.slice();
  noSig.set([0x78, 0x78, 0x78, 0x78], HEADER_AT[1]); // header 2 is current: header 1 becomes current
  const r = await check(noSig);
  const f = theCorruption(r, 'BAD_SIGNATURE', 'header 2');
  assert.equal(f.repairableBy, 'all');
  const src = new MemorySource(noSig.slice());
  assertClean((await repairImage(src, { mode: 'all' })).after, 'after repair');

  const oldVersion = bytes.slice();
  view(oldVersion).setUint16(HEADER_AT[0] + 66, 2, true);
  HEADER.seal(oldVersion.subarray(HEADER_AT[0]));
  const v = theCorruption(await check(oldVersion), 'BAD_VERSION', 'header 1');
  assert.equal(v.repairableBy, 'all');
  const src2 = new MemorySource(oldVersion.slice());
  assertClean((await repairImage(src2, { mode: 'all' })).after, 'after version repair');
});

test('both headers damaged: corruption, the check goes no further, repair refuses', async () => {
  const { bytes } = await buildImage({ allocate: [0] });
  const bad = bytes.slice();
  bad[HEADER_AT[0] + 100]! ^= 1;
  bad[HEADER_AT[1] + 100]! ^= 1;
  const r = await check(bad);
  assert.equal(r.canComplete, true, 'damage, not a read failure');
  assert.ok(r.corruptions >= 2);
  assert.ok(r.findings.every((f) => f.repairableBy === null), 'nothing is repairable');
  assert.equal(r.type, null, 'nothing past the headers was read');
  await assertRepairRefused(bad);
});

test('equal sequence numbers with identical headers (Disk2VHD) are info; with different content, corruption', async () => {
  const { bytes } = await buildImage();
  const twins = bytes.slice();
  twins.set(twins.subarray(HEADER_AT[1], HEADER_AT[1] + 4096), HEADER_AT[0]);
  const r = await check(twins);
  assertClean(r);
  assert.equal(r.findings[0]?.reason, 'EQUAL_SEQUENCE_NUMBERS');
  assert.equal(r.findings[0]?.severity, 'info');

  const differ = bytes.slice();
  view(differ).setBigUint64(HEADER_AT[0] + 8, 1n, true);
  differ[HEADER_AT[0] + 32]! ^= 1; // a different DataWriteGuid
  HEADER.seal(differ.subarray(HEADER_AT[0]));
  const d = await check(differ);
  theCorruption(d, 'NO_VALID_HEADER');
  await assertRepairRefused(differ);
});

test('non-zero reserved bytes in a header are a warning', async () => {
  const { bytes } = await buildImage();
  const b = bytes.slice();
  b[HEADER_AT[1] + 2000] = 1;
  HEADER.seal(b.subarray(HEADER_AT[1]));
  const r = await check(b);
  assert.equal(r.corruptions, 0);
  assert.equal(r.warnings, 1);
  assert.equal(only(r, 'warning')[0]?.reason, 'RESERVED_NONZERO');
  assert.equal(only(r, 'warning')[0]?.structure, 'header 2');
});

// ------------------------------------------------------------------------------------------
// Region tables

test('a damaged region table copy (either one) is found and repair all rewrites it from the other', async () => {
  const { bytes } = await buildImage({ allocate: [2] });
  for (const copy of [0, 1] as const) {
    const bad = bytes.slice();
    bad[REGION_TABLE_AT[copy] + 5000]! ^= 0x40;
    const r = await check(bad);
    const f = theCorruption(r, 'BAD_CHECKSUM', `region table ${copy + 1}`);
    assert.equal(f.offset, REGION_TABLE_AT[copy]);
    assert.equal(f.repairableBy, 'all');
    const src = new MemorySource(bad.slice());
    const res = await repairImage(src, { mode: 'all' });
    assert.deepEqual(res.actions.map((a) => a.action), ['rewriteRegionTable']);
    assertClean(res.after, `after repairing copy ${copy + 1}`);
    const out = src.bytes();
    assert.equal(Buffer.compare(out.subarray(REGION_TABLE_AT[0], REGION_TABLE_AT[0] + 64 * KiB), bytes.subarray(REGION_TABLE_AT[0], REGION_TABLE_AT[0] + 64 * KiB)), 0);
    assert.equal(Buffer.compare(out.subarray(REGION_TABLE_AT[1], REGION_TABLE_AT[1] + 64 * KiB), bytes.subarray(REGION_TABLE_AT[1], REGION_TABLE_AT[1] + 64 * KiB)), 0);
  }
});

test('two valid region table copies that differ: REGION_TABLE_MISMATCH, copy 2 rewritten from copy 1', async () => {
  const { bytes } = await buildImage();
  const bad = bytes.slice();
  // Clear the Required flag of the metadata region in copy 2 only.
  setU32(bad, regionEntryAt(1, REGION_INDEX.metadata, 28), 0);
  REGION_TABLE_HEADER.seal(bad.subarray(REGION_TABLE_AT[1]));
  const f = theCorruption(await check(bad), 'REGION_TABLE_MISMATCH', 'region table 2');
  assert.equal(f.repairableBy, 'all');
  const src = new MemorySource(bad.slice());
  const res = await repairImage(src, { mode: 'all' });
  assertClean(res.after);
  assert.equal(getU32(src.bytes(), regionEntryAt(1, REGION_INDEX.metadata, 28)), 1);
});

test('both region tables damaged: corruption, repair refuses', async () => {
  const { bytes } = await buildImage();
  const bad = bytes.slice();
  bad[REGION_TABLE_AT[0] + 100]! ^= 1;
  bad[REGION_TABLE_AT[1] + 100]! ^= 1;
  const r = await check(bad);
  assert.ok(r.corruptions >= 2);
  assert.ok(r.findings.some((f) => f.structure === 'region table 1'));
  assert.ok(r.findings.some((f) => f.structure === 'region table 2'));
  await assertRepairRefused(bad);
});

test('reserved region entry flags are a warning', async () => {
  const { bytes } = await buildImage();
  const b = bytes.slice();
  for (const copy of [0, 1] as const) setU32(b, regionEntryAt(copy, REGION_INDEX.bat, 28), 1 | 0x100);
  resealRegionTables(b);
  const r = await check(b);
  assert.equal(r.corruptions, 0);
  assert.deepEqual(only(r, 'warning').map((f) => f.reason), ['RESERVED_NONZERO']);
});

// ------------------------------------------------------------------------------------------
// Everything the open validates

test('a failed open becomes a corruption finding with its reason', async () => {
  const { bytes, plan } = await buildImage();
  const b = bytes.slice();
  // Virtual size 0 in the metadata item.
  const vs = plan.metadata.offset + plan.items[1]!.offset;
  view(b).setBigUint64(vs, 0n, true);
  const r = await check(b);
  const f = theCorruption(r, 'BAD_VIRTUAL_SIZE');
  assert.equal(f.repairableBy, null);
  assert.equal(r.canComplete, true);
  await assertRepairRefused(b);

  const small = bytes.slice();
  for (const copy of [0, 1] as const) setU32(small, regionEntryAt(copy, REGION_INDEX.bat, 24), 0);
  resealRegionTables(small);
  assert.equal(only(await check(small), 'corruption')[0]?.reason, 'REGION_MISALIGNED');
});

test('not a VHDX: unsupported; a read error: the check cannot complete', async () => {
  const r = await check(new Uint8Array(2 * MiB).fill(7));
  assert.equal(r.supported, false);
  assert.equal(r.error?.reason, 'NOT_VHDX');
  assert.deepEqual(r.findings, []);

  const { bytes, plan } = await buildImage({ allocate: [0] });
  const failing = new MemorySource(bytes.slice());
  const read = failing.read.bind(failing);
  failing.read = async (offset: number, into: Uint8Array) => {
    if (offset >= plan.bat.offset && offset < plan.bat.offset + plan.bat.length) throw new VhdxError('EIO', 'IO_ERROR', 'injected read error');
    return read(offset, into);
  };
  const e = await checkImage(failing);
  assert.equal(e.supported, true);
  assert.equal(e.canComplete, false);
  assert.equal(e.checkErrors, 1);
  assert.equal(e.error?.reason, 'IO_ERROR');
});

// ------------------------------------------------------------------------------------------
// The BAT

test('BAT entries: reserved bits, undefined and disallowed states, each a corruption naming the entry', async () => {
  const { bytes, plan } = await buildImage({ allocate: [0] });
  const cases: [what: string, mutate: (b: Uint8Array) => void, reason: string, index: number][] = [
    ['reserved bits', (b) => setU32(b, batEntryAt(plan, 0), getU32(b, batEntryAt(plan, 0)) | 0x10), 'BAD_BAT_ENTRY', 0],
    ['state 4', (b) => putBatEntry(b, plan, 5, { state: 4, fileOffsetMB: 0 }), 'BAD_BLOCK_STATE', 5],
    ['PARTIALLY_PRESENT without a parent', (b) => putBatEntry(b, plan, 0, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: plan.fileSize / MiB }), 'BAD_BLOCK_STATE', 0],
    ['sector bitmap present without a parent', (b) => putBatEntry(b, plan, C, { state: SB_PRESENT, fileOffsetMB: plan.fileSize / MiB }), 'BAD_BLOCK_STATE', C],
    ['sector bitmap state 3', (b) => putBatEntry(b, plan, C, { state: 3, fileOffsetMB: 0 }), 'BAD_BLOCK_STATE', C],
  ];
  for (const [what, mutate, reason, index] of cases) {
    const b = bytes.slice();
    mutate(b);
    const r = await check(b);
    const f = theCorruption(r, reason, `BAT entry ${index}`);
    assert.equal(f.offset, batEntryAt(plan, index), what);
    assert.equal(f.repairableBy, null, what);
  }
});

test('blocks in the header section, beyond the end of the file, or overlapping a region, the log or another block', async () => {
  const { bytes, plan, blockFileOffset } = await buildImage({ allocate: [0, 1] });
  const at0 = blockFileOffset[0]! / MiB;
  const cases: [what: string, block: number, mb: number, reason: string | null, re: RegExp | null][] = [
    ['in the header section', 3, 0, 'BAT_ENTRY_IN_HEADER', /inside the 1 MiB header section/],
    ['past the end', 3, bytes.length / MiB, 'BAT_ENTRY_OUT_OF_BOUNDS', /ends beyond the end of the file/],
    ['straddling the end', 3, bytes.length / MiB - 1 + 0, null, null],
    ['on the log', 3, plan.log.offset / MiB, 'BLOCK_OVERLAP', /overlaps the log/],
    ['on the metadata region', 3, plan.metadata.offset / MiB, 'BLOCK_OVERLAP', /overlaps the metadata region/],
    ['on the BAT', 3, plan.bat.offset / MiB, 'BLOCK_OVERLAP', /overlaps the BAT region/],
    ['on another block', 3, at0, 'BLOCK_OVERLAP', /payload block 3 at file offset .* overlaps payload block 0 \(BAT entry 0\)/],
  ];
  for (const [what, block, mb, reason, re] of cases) {
    const b = bytes.slice();
    putBatEntry(b, plan, block, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: mb });
    const r = await check(b);
    if (reason === null) {
      // The last MiB of the file belongs to block 1 already: the same MiB twice is an overlap.
      assert.equal(only(r, 'corruption')[0]?.reason, 'BLOCK_OVERLAP', what);
      continue;
    }
    const f = theCorruption(r, reason, `BAT entry ${block}`);
    assert.match(f.message, re!, what);
  }
});

test('a block overlapping a block with a larger BAT index names the earlier entry', async () => {
  const { bytes, plan, blockFileOffset } = await buildImage({ allocate: [5] });
  const b = bytes.slice();
  putBatEntry(b, plan, 60, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: blockFileOffset[5]! / MiB });
  const f = theCorruption(await check(b), 'BLOCK_OVERLAP', 'BAT entry 60');
  assert.match(f.message, /payload block 60 .* overlaps payload block 5 \(BAT entry 5\)/);
});

test('a fixed disk with blocks not FULLY_PRESENT: a warning, not a corruption, and not a leak', async () => {
  const { bytes, plan } = await buildImage({ fixed: true, virtualSize: 8 * MiB });
  const b = bytes.slice();
  putBatEntry(b, plan, 7, { state: PayloadState.ZERO, fileOffsetMB: 0 });
  putBatEntry(b, plan, 3, { state: PayloadState.NOT_PRESENT, fileOffsetMB: 0 });
  const r = await check(b);
  assert.equal(r.corruptions, 0);
  assert.equal(r.leaks, 0, 'the preallocated space of those blocks is not leaked');
  const w = only(r, 'warning');
  assert.equal(w.length, 1);
  assert.equal(w[0]?.reason, 'FIXED_BLOCK_NOT_ALLOCATED');
  assert.match(w[0]?.message, /^2 payload blocks .* first is block 3/);
});

test('non-zero BAT entries past the disk end are a warning', async () => {
  const { bytes, plan } = await buildImage({ virtualSize: 3 * MiB });
  const b = bytes.slice();
  putBatEntry(b, plan, 3, { state: PayloadState.ZERO, fileOffsetMB: 0 });
  const r = await check(b);
  assert.equal(r.corruptions, 0);
  assert.deepEqual(only(r, 'warning').map((f) => f.reason), ['BAD_BAT_ENTRY']);
});

test('findings are capped; the counts are not; repair refuses', async () => {
  const { bytes, plan } = await buildImage({ virtualSize: 4 * 1024 * MiB });
  const b = bytes.slice();
  const n = MAX_FINDINGS + 500;
  for (let i = 0; i < n; i++) {
    const index = i + Math.floor(i / C);
    setU32(b, batEntryAt(plan, index), 0x8);
  }
  const r = await check(b);
  assert.equal(r.corruptions, n);
  assert.equal(r.findings.length, MAX_FINDINGS);
  assert.equal(r.omittedFindings, n - MAX_FINDINGS);
  await assertRepairRefused(b);
});

test('a 1 TiB image: the BAT is streamed and a late overlap is still found', async () => {
  const { bytes, plan } = await buildImage({ virtualSize: 1024 * 1024 * MiB });
  const grown = new Uint8Array(bytes.length + MiB);
  grown.set(bytes);
  const last = plan.geometry.payloadBlocks - 1;
  const lastIndex = last + Math.floor(last / C);
  putBatEntry(grown, plan, 0, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: bytes.length / MiB });
  putBatEntry(grown, plan, lastIndex, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: bytes.length / MiB });
  const progress: [number, number][] = [];
  const r = await check(grown, { onProgress: (done, total) => progress.push([done, total]) });
  const f = theCorruption(r, 'BLOCK_OVERLAP', `BAT entry ${lastIndex}`);
  assert.match(f.message, /overlaps payload block 0 \(BAT entry 0\)/);
  assert.ok(progress.length > 2, 'progress reported window by window');
  const [done, total] = progress[progress.length - 1]!;
  assert.equal(done, total);
});

test('an aborted check rejects with ABORTED', async () => {
  const { bytes } = await buildImage({ virtualSize: 1024 * 1024 * MiB });
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(check(bytes, { signal: ac.signal }), (e) => e instanceof VhdxError && e.reason === 'ABORTED');
  const ac2 = new AbortController();
  await assert.rejects(
    check(bytes, { signal: ac2.signal, onProgress: () => ac2.abort() }),
    (e) => e instanceof VhdxError && e.reason === 'ABORTED',
  );
});

// ------------------------------------------------------------------------------------------
// Leaks

test('leaked MiB at the end: leaks counted in 1 MiB clusters; repair leaks truncates them', async () => {
  const { bytes } = await buildImage({ allocate: [0, 2] });
  const leaky = new Uint8Array(bytes.length + 3 * MiB);
  leaky.set(bytes);
  const r = await check(leaky);
  assert.equal(r.corruptions, 0);
  assert.equal(r.leaks, 3);
  assert.equal(r.leakedBytes, 3 * MiB);
  assert.equal(r.imageEndOffset, bytes.length);
  const [f] = only(r, 'leak');
  assert.ok(f);
  assert.equal(f.reason, 'LEAKED_SPACE');
  assert.equal(f.repairableBy, 'leaks');

  const src = new MemorySource(leaky.slice());
  const res = await repairImage(src, { mode: 'leaks' });
  assert.deepEqual(res.actions.map((a) => a.action), ['truncateLeaks']);
  assert.equal(res.leaksFixed, 3);
  assert.equal(src.size, bytes.length);
  assertClean(res.after);
  assert.ok(headerSeq(src.bytes(), 2) > headerSeq(bytes, 2), 'a header update (new FileWriteGuid) preceded the change');
  const img = await VhdxImage.open(new MemorySource(src.bytes().slice()));
  const buf = new Uint8Array(MiB);
  await img.read(2 * MiB, buf);
  assert.ok(buf.every((x) => x === fillByte(2)), 'data intact');
});

test('a tail shorter than 1 MiB is info, not a leak (Disk2VHD appends 512 bytes)', async () => {
  const { bytes } = await buildImage({ allocate: [0] });
  const b = new Uint8Array(bytes.length + 512);
  b.set(bytes);
  const r = await check(b);
  assertClean(r);
  assert.deepEqual(r.findings.map((f) => [f.severity, f.reason]), [['info', 'LEAKED_SPACE']]);
  const more = new Uint8Array(bytes.length + 2 * MiB + 512);
  more.set(bytes);
  const src = new MemorySource(more);
  const res = await repairImage(src, { mode: 'leaks' });
  assert.equal(res.leaksFixed, 2);
  assert.equal(src.size, bytes.length + 512, 'whole clusters freed; the short tail kept');
});

test('space a non-present entry points at is not leaked; leaks beside unrepairable damage are left alone', async () => {
  const { bytes, plan } = await buildImage({ allocate: [0] });
  const b = new Uint8Array(bytes.length + 2 * MiB);
  b.set(bytes);
  putBatEntry(b, plan, 4, { state: PayloadState.UNMAPPED, fileOffsetMB: bytes.length / MiB });
  const r = await check(b);
  assert.equal(r.leaks, 1, 'the MiB the UNMAPPED entry names is claimed; the one after is leaked');

  const c = new Uint8Array(bytes.length + 2 * MiB);
  c.set(bytes);
  putBatEntry(c, plan, 9, { state: 4, fileOffsetMB: 0 });
  const rc = await check(c);
  assert.equal(rc.corruptions, 1);
  assert.equal(rc.leaks, 2);
  await assertRepairRefused(c, 'leaks');
});

test('space inside the file that nothing names is leaked; repair leaks cuts only the end, moving no block', async () => {
  const { bytes, plan, blockFileOffset } = await buildImage({ allocate: [0, 1, 2] });
  const b = new Uint8Array(bytes.length + 2 * MiB);
  b.set(bytes);
  // Block 1 made ZERO with its place left behind (what the writer before reuse did): the MiB is
  // now named by nothing, between blocks 0 and 2.
  putBatEntry(b, plan, 1, { state: PayloadState.ZERO, fileOffsetMB: 0 });
  const r = await check(b);
  assert.equal(r.corruptions, 0);
  assert.equal(r.leaks, 3, 'one MiB inside, two at the end');
  assert.equal(r.leakedBytes, 3 * MiB);
  const leaks = only(r, 'leak');
  const inside = leaks.find((f) => f.offset === blockFileOffset[1]!);
  assert.ok(inside, `a finding at the freed place: ${JSON.stringify(leaks)}`);
  assert.equal(inside.reason, 'LEAKED_SPACE');
  assert.equal(inside.repairableBy, null, 'reclaiming it would move blocks');
  assert.match(inside.message, /1 MiB inside the file \(1 run/);

  const src = new MemorySource(b.slice());
  const res = await repairImage(src, { mode: 'leaks' });
  assert.deepEqual(res.actions.map((a) => a.action), ['truncateLeaks']);
  assert.equal(res.leaksFixed, 2);
  assert.equal(src.size, bytes.length);
  assert.equal(res.after.leaks, 1, 'the MiB inside stays reported');
  assert.equal(only(res.after, 'leak')[0]?.offset, blockFileOffset[1]!);
  const img = await VhdxImage.open(new MemorySource(src.bytes().slice()));
  const buf = new Uint8Array(MiB);
  await img.read(2 * MiB, buf);
  assert.ok(buf.every((x) => x === fillByte(2)), 'block 2 stayed where it was');
});

test('a place an UNMAPPED entry kept and the rest of a short last block\'s place are not leaked', async () => {
  // 3.5 MiB disk of 2 MiB blocks: block 1 covers 1.5 MiB of its 2 MiB place.
  const { bytes, plan, blockFileOffset } = await buildImage({ virtualSize: 3.5 * MiB, blockSize: 2 * MiB, allocate: [1, 0] });
  assertClean(await check(bytes), 'short last block first in the file');
  // Block 0 discarded, keeping its place (UNMAPPED with FileOffsetMB): the place is named.
  const b = bytes.slice();
  putBatEntry(b, plan, 0, { state: PayloadState.UNMAPPED, fileOffsetMB: blockFileOffset[0]! / MiB });
  assertClean(await check(b), 'UNMAPPED keeping its place');
});
// ------------------------------------------------------------------------------------------
// The log

test('a dirty log: a warning; the check sees the replayed image; repair all replays it into the file', async () => {
  const { bytes, blockFileOffset } = await buildImage({ allocate: [0], logAllocate: [2] });
  const r = await check(bytes);
  assert.equal(r.corruptions, 0);
  assert.deepEqual(r.log, { state: 'dirty', entries: 2 });
  assert.deepEqual(r.findings.map((f) => [f.severity, f.reason, f.repairableBy]), [['warning', 'LOG_DIRTY', 'all']]);
  assert.equal(r.allocatedBlocks, 2, 'the block only the log points at is counted');
  assert.ok(blockFileOffset[2]! + MiB <= bytes.length);

  const srcLeaks = new MemorySource(bytes.slice());
  const rl = await repairImage(srcLeaks, { mode: 'leaks' });
  assert.deepEqual(rl.actions, [], "leaks mode does not replay");
  assert.equal(Buffer.compare(srcLeaks.bytes(), bytes), 0);

  const src = new MemorySource(bytes.slice());
  const res = await repairImage(src, { mode: 'all' });
  assert.deepEqual(res.actions.map((a) => a.action), ['replayLog']);
  assert.equal(res.logEntriesReplayed, 2);
  assertClean(res.after);
  assert.deepEqual(res.after.log, { state: 'clean', entries: 0 });
  const img = await VhdxImage.open(new MemorySource(src.bytes().slice()));
  assert.equal(img.layout.log.dirty, false);
  const buf = new Uint8Array(4096);
  await img.read(2 * MiB, buf);
  assert.ok(buf.every((x) => x === fillByte(2)), 'the replayed BAT entry is in the file');
});

test('a dirty log with leaks: leaks mode refuses to truncate; all replays, then truncates', async () => {
  const { bytes } = await buildImage({ logAllocate: [1] });
  const b = new Uint8Array(bytes.length + 2 * MiB);
  b.set(bytes);
  const r = await check(b);
  assert.equal(r.leaks, 2);
  assert.equal(only(r, 'leak')[0]?.repairableBy, 'all');
  const src = new MemorySource(b.slice());
  const rl = await repairImage(src, { mode: 'leaks' });
  assert.deepEqual(rl.actions, []);
  assert.match(rl.refusal ?? '', /log is dirty/);
  assert.equal(Buffer.compare(src.bytes(), b), 0);
  const ra = await repairImage(src, { mode: 'all' });
  assert.deepEqual(ra.actions.map((a) => a.action), ['replayLog', 'truncateLeaks']);
  assertClean(ra.after);
  assert.equal(src.size, bytes.length);
});

test('a dirty log without a valid sequence: corruption, repair refuses', async () => {
  const { bytes, plan } = await buildImage({ logAllocate: [1] });
  const b = bytes.slice();
  b[plan.log.offset + 100]! ^= 0xff; // breaks the first entry's checksum, and the chain
  const r = await check(b);
  const c = only(r, 'corruption');
  assert.ok(c.length >= 1);
  assert.equal(c[0]?.reason, 'LOG_NO_VALID_SEQUENCE');
  await assertRepairRefused(b);
});

test('repair needs a writable source and a valid mode', async () => {
  const { bytes } = await buildImage();
  await assert.rejects(repairImage(new MemorySource(bytes, { readOnly: true }), { mode: 'all' }), (e: VhdxError) => e.reason === 'READ_ONLY');
  await assert.rejects(repairImage(new MemorySource(bytes), { mode: 'everything' as 'all' /* not a mode: deliberately invalid */ }), (e: VhdxError) => e.reason === 'BAD_ARGUMENT');
});
