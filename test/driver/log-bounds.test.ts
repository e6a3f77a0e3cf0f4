// Hostile logs are bounded (issue 11, findings 4 and 5): a replay writes nothing it need not,
// never grows the file past what the replayed image's own structures need, and a read-only open
// holds its in-memory replay within a stated cap. Logs are encoded by the library's own
// encodeLogEntry (through test/helpers/build.ts) and carry valid checksums: only their content
// is hostile.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { MemorySource, VhdxImage, checkImage, repairImage, type VhdxError } from '../../src/index.js';
import { FaultySource } from '../../src/testing.js';
import { openFile, NodeFileSource } from '../../src/node.js';
import { MAX_OVERLAY_RANGES } from '../../src/driver/open.js';
import { OverlaySource } from '../../src/driver/overlay.js';
import type { ImagePlan } from '../../src/driver/layout.js';
import type { LogWrite } from '../../src/format/log-entry.js';
import type { CrashImageOptions } from '../../src/testing.js';
import { batEntryBytes } from '../../src/driver/layout.js';
import { payloadBatIndex, PayloadState } from '../../src/format/bat.js';
import { buildImage, writeLog, setLogGuid, fillByte, MiB, KiB, type BuildOptions } from '../helpers/build.js';
import { checkInvariants } from '../helpers/invariants.js';
import { scratch } from '../helpers/env.js';

const LOG_GUID = '6a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9';
const dir = scratch('vhdx-log-bounds-');

/** A dirty image: `writes(plan, bytes)` gives the log's entries (arrays of writes). */
/** Something computed from the image's plan and bytes. */
type FromImage<T> = (plan: ImagePlan, bytes: Uint8Array) => T;

async function dirtyImage({
  writes,
  lastFileOffset,
  logSize = MiB,
  ...layout
}: BuildOptions & { writes: FromImage<LogWrite[][]>; lastFileOffset?: number | FromImage<number> }) {
  const { bytes, plan } = await buildImage({ logSize, ...layout });
  const entries = writes(plan, bytes);
  writeLog(bytes, plan, LOG_GUID, entries, { lastFileOffset: typeof lastFileOffset === 'function' ? lastFileOffset(plan, bytes) : lastFileOffset });
  setLogGuid(bytes, LOG_GUID);
  return { bytes, plan };
}

/** The first 4 KiB of the BAT with `entries` ({ block: fileOffset }) set FULLY_PRESENT. */
function batSector(bytes: Uint8Array, plan: ImagePlan, entries: Record<number, number>): Uint8Array {
  const sector = bytes.slice(plan.bat.offset, plan.bat.offset + 4 * KiB);
  for (const [block, fileOffset] of Object.entries(entries)) {
    sector.set(batEntryBytes({ state: PayloadState.FULLY_PRESENT, fileOffsetMB: fileOffset / MiB }), payloadBatIndex(plan.geometry, Number(block)) * 8);
  }
  return sector;
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function rejectsWith(promise: Promise<VhdxImage>, reason: string, code?: string): Promise<VhdxError> {
  const err = await promise.then(
    async (img) => {
      await img.close();
      return null;
    },
    (e: VhdxError) => e,
  );
  assert.ok(err, `expected ${reason}, the open succeeded`);
  assert.equal(err.reason, reason, err.message);
  if (code) assert.equal(err.code, code, err.message);
  return err;
}

/** Whether the file system under `dir` keeps a file extended by truncate sparse. */
function sparseFiles(): boolean {
  const p = join(dir, 'sparse-probe');
  writeFileSync(p, new Uint8Array(0));
  truncateSync(p, 64 * MiB);
  return statSync(p).blocks * 512 < MiB;
}

test('a crafted log zeroing a terabyte: refused by writable and read-only opens and by repair, the file untouched', async () => {
  // One valid, checksummed zero descriptor of 1 TiB; LastFileOffset covers it (qemu would write
  // the whole terabyte). The image's structures need a few MiB.
  const { bytes } = await dirtyImage({
    allocate: [0, 1],
    writes: (plan) => [[{ kind: 'zero', fileOffset: plan.payloadOffset, length: 2 ** 40 }]],
    lastFileOffset: (plan) => plan.payloadOffset + 2 ** 40,
  });
  const path = join(dir, 'terabyte.vhdx');
  writeFileSync(path, bytes);
  const before = statSync(path);

  const ro = await rejectsWith(openFile(path), 'LOG_REPLAY_FAILED', 'EINVAL');
  assert.match(ro.message, /past the \d+ bytes the image's structures need/);
  await rejectsWith(openFile(path, { readOnly: false }), 'LOG_REPLAY_FAILED', 'EINVAL');
  const src = await NodeFileSource.open(path, { readOnly: false });
  try {
    const r = await repairImage(src, { mode: 'all' });
    assert.ok(r.refused.some((f) => f.reason === 'LOG_REPLAY_FAILED'), JSON.stringify(r.refused));
  } finally {
    await src.close();
  }

  const after = statSync(path);
  assert.equal(after.size, before.size);
  assert.ok(after.blocks <= before.blocks, `allocated ${after.blocks} blocks of 512 bytes, ${before.blocks} before`);
  assert.equal(sha(readFileSync(path)), sha(bytes), 'the file is byte-identical');
});

test('zeros past the end of the file are made by extending it, not by writing them', async (t) => {
  // What Hyper-V's logs do: a 32 MiB block appended past the flushed end, its BAT entry and a
  // zero descriptor for it in the log, LastFileOffset covering it.
  const bs = 32 * MiB;
  const { bytes } = await dirtyImage({
    blockSize: bs,
    allocate: [1],
    writes: (p, b) => [[{ kind: 'data', fileOffset: p.bat.offset, data: batSector(b, p, { 0: b.length }) }, { kind: 'zero', fileOffset: b.length, length: bs }]],
    lastFileOffset: (p, b) => b.length + bs,
  });
  const fileEnd = bytes.length;

  const disk = new FaultySource(bytes);
  const img = await VhdxImage.open(disk, { readOnly: false });
  const block0 = new Uint8Array(bs);
  await img.read(0, block0);
  assert.ok(block0.every((x) => x === 0), 'the new block reads as zeros');
  const block1 = new Uint8Array(4096);
  await img.read(bs, block1);
  assert.ok(block1.every((x) => x === fillByte(1)), 'the block already there is intact');
  await img.close();
  assert.equal(disk.size, fileEnd + bs, 'the file holds the new block');
  assert.ok(disk.counts.bytesWritten < 64 * KiB, `${disk.counts.bytesWritten} bytes written for a replay of one BAT sector and ${bs} bytes of zeros`);
  assert.deepEqual(await checkInvariants(disk), []);

  // The same on a real file: the new block takes no space.
  if (!sparseFiles()) return t.skip('the file system under the scratch folder does not keep sparse files');
  const path = join(dir, 'grow.vhdx');
  writeFileSync(path, bytes);
  const before = statSync(path).blocks * 512;
  await (await openFile(path, { readOnly: false })).close();
  const st = statSync(path);
  assert.equal(st.size, fileEnd + bs);
  assert.ok(st.blocks * 512 - before < bs / 8, `the file's allocation grew by ${st.blocks * 512 - before} bytes for a ${bs}-byte block of zeros`);
});

test('zeros inside the file are written only over bytes that are not zero already', async () => {
  // Two filled blocks zeroed, and 256 KiB of the metadata region that already reads as zeros.
  const { bytes, plan } = await dirtyImage({
    allocate: [0, 1],
    writes: (p) => [[{ kind: 'zero', fileOffset: p.payloadOffset, length: 2 * MiB }, { kind: 'zero', fileOffset: p.metadata.offset + 512 * KiB, length: 256 * KiB }]],
  });
  assert.ok(bytes.subarray(plan.metadata.offset + 512 * KiB, plan.metadata.offset + 768 * KiB).every((x) => x === 0));
  const disk = new FaultySource(bytes);
  const img = await VhdxImage.open(disk, { readOnly: false });
  const b = new Uint8Array(2 * MiB);
  await img.read(0, b);
  assert.ok(b.every((x) => x === 0), 'the zeroed blocks read as zeros');
  await img.close();
  const zerosWritten = disk.counts.bytesWritten;
  assert.ok(zerosWritten >= 2 * MiB && zerosWritten < 2 * MiB + 64 * KiB, `${zerosWritten} bytes written: the 2 MiB of data zeroed and the headers, not the 256 KiB of zeros`);
});

test("a LastFileOffset past what the image's structures need does not grow the file", async () => {
  // 1 TiB: within what a VHDX may be, far past anything this image names.
  const { bytes, plan } = await dirtyImage({
    allocate: [0],
    writes: (p, b) => [[{ kind: 'data', fileOffset: p.bat.offset, data: batSector(b, p, {}) }]],
    lastFileOffset: 2 ** 40,
  });
  const ro = await VhdxImage.open(new MemorySource(bytes, { readOnly: true }));
  assert.equal(ro.layout.source.size, bytes.length, 'the replayed view ends where the file does');
  await ro.close();
  const disk = new FaultySource(bytes);
  await (await VhdxImage.open(disk, { readOnly: false })).close();
  assert.equal(disk.size, bytes.length, 'the file was not extended');
  assert.equal(disk.counts.truncates, 0);
  assert.deepEqual(await checkInvariants(disk), []);
  void plan;
});

test("a log writing where none of the image's structures lies is refused, read-only and writable alike, and changes nothing", async () => {
  // A 4 KiB data write 8 MiB past the end, which no BAT entry or region names.
  const { bytes } = await dirtyImage({
    writes: (p, b) => [[{ kind: 'data', fileOffset: b.length + 8 * MiB, data: new Uint8Array(4096).fill(0x5a) }]],
    lastFileOffset: (p, b) => b.length + 16 * MiB,
  });
  await rejectsWith(VhdxImage.open(new MemorySource(bytes, { readOnly: true })), 'LOG_REPLAY_FAILED', 'EINVAL');
  const disk = new FaultySource(bytes);
  await rejectsWith(VhdxImage.open(disk, { readOnly: false }), 'LOG_REPLAY_FAILED', 'EINVAL');
  assert.deepEqual([disk.counts.writes, disk.counts.truncates, disk.counts.flushes], [0, 0, 0], 'nothing written');
});

test('a log of many scattered zero descriptors: a read-only open refuses it within its cap and says what to do; a writable open refuses what no structure needs', async () => {
  // More separate 4 KiB zero ranges than a read-only open holds, reaching far past the file.
  const n = MAX_OVERLAY_RANGES + 50000;
  const { bytes } = await dirtyImage({
    logSize: 16 * MiB,
    writes: (p) => [Array.from({ length: n }, (_, i) => ({ kind: 'zero', fileOffset: p.payloadOffset + i * 8 * KiB, length: 4 * KiB }))],
    lastFileOffset: (p) => p.payloadOffset + n * 8 * KiB,
  });
  const ro = await rejectsWith(VhdxImage.open(new MemorySource(bytes, { readOnly: true })), 'LOG_REPLAY_FAILED', 'ENOTSUP');
  assert.match(ro.message, /more than a read-only open holds \(262144 ranges/);
  assert.match(ro.message, /vhdx check -r all/);
  const disk = new FaultySource(bytes);
  await rejectsWith(VhdxImage.open(disk, { readOnly: false }), 'LOG_REPLAY_FAILED', 'EINVAL');
  assert.equal(disk.counts.bytesWritten, 0);
});

test('a log rewriting the same few sectors two hundred thousand times replays in a few ranges', async () => {
  // 200,000 zero descriptors over 256 alternate 4 KiB sectors of two allocated blocks.
  const n = 200000;
  const sectors = 256;
  const { bytes } = await dirtyImage({
    logSize: 8 * MiB,
    allocate: [0, 1],
    writes: (p) => [Array.from({ length: n }, (_, i) => ({ kind: 'zero', fileOffset: p.payloadOffset + ((i * 97) % sectors) * 8 * KiB, length: 4 * KiB }))],
  });
  const ro = await VhdxImage.open(new MemorySource(bytes, { readOnly: true }));
  const overlay = ro.layout.source;
  assert.ok(overlay instanceof OverlaySource, 'the replay is held in an overlay');
  assert.equal(overlay.segmentCount, sectors, 'one range per sector zeroed');
  assert.ok(overlay.rangesHeld <= MAX_OVERLAY_RANGES / 2, `${overlay.rangesHeld} ranges held`);
  const expect = async (img: VhdxImage): Promise<void> => {
    const b = new Uint8Array(2 * MiB);
    await img.read(0, b);
    for (let s = 0; s < 2 * sectors; s++) {
      const want = s % 2 === 0 ? 0 : fillByte(s < sectors ? 0 : 1);
      assert.ok(b.subarray(s * 4096, s * 4096 + 4096).every((x) => x === want), `sector ${s}`);
    }
  };
  await expect(ro);
  await ro.close();
  const disk = new FaultySource(bytes);
  const rw = await VhdxImage.open(disk, { readOnly: false });
  await expect(rw);
  await rw.close();
  assert.ok(disk.counts.bytesWritten < sectors * 4096 + 64 * KiB, `${disk.counts.bytesWritten} bytes written: each sector once`);
});

test('a replay that grows the file: power lost at any of its writes, truncates and flushes loses nothing', async () => {
  const bs = MiB;
  const { bytes } = await dirtyImage({
    blockSize: bs,
    allocate: [1],
    writes: (p, b) => [
      [{ kind: 'zero', fileOffset: b.length, length: bs }],
      [{ kind: 'data', fileOffset: p.bat.offset, data: batSector(b, p, { 0: b.length, 2: b.length + bs }) }, { kind: 'zero', fileOffset: b.length + bs, length: bs }],
    ],
    lastFileOffset: (p, b) => b.length + 2 * bs,
  });
  const probe = new FaultySource(bytes);
  await (await VhdxImage.open(probe, { readOnly: false })).close();
  const steps = probe.mutations;
  assert.ok(steps >= 5, `${steps} operations`);
  const failures: string[] = [];
  for (let k = 1; k <= steps; k++) {
    const dying = new FaultySource(bytes, { crashAt: k });
    try {
      await (await VhdxImage.open(dying, { readOnly: false })).close();
    } catch (e) {
      if (!dying.isCrashed) throw e;
    }
    for (const keep of ['none', 'all', 'random'] as const satisfies readonly CrashImageOptions['keep'][]) {
      const crashed = dying.crashImage({ keep, seed: k, tear: keep === 'random' });
      for (const readOnly of [true, false]) {
        const img = await VhdxImage.open(crashed, { readOnly });
        const b = new Uint8Array(3 * bs);
        await img.read(0, b);
        const ok = b.subarray(0, bs).every((x) => x === 0) && b.subarray(bs, 2 * bs).every((x) => x === fillByte(1)) && b.subarray(2 * bs).every((x) => x === 0);
        if (!ok) failures.push(`crash at ${k}, keep ${keep}, ${readOnly ? 'read-only' : 'writable'}: the disk reads wrong`);
        const extents = await img.blockStatus(0, 3 * bs);
        if (extents.some((x) => x.type !== 'data')) failures.push(`crash at ${k}, keep ${keep}: blocks 0 to 2 are not all allocated`);
        await img.close();
      }
      for (const f of await checkInvariants(crashed)) failures.push(`crash at ${k}, keep ${keep}: ${f}`);
    }
  }
  assert.deepEqual(failures, []);
});

test('a log a read-only open refuses to hold in memory: check describes it and repair all replays it', async () => {
  // Legitimate, if odd: the log allocates sixteen 256 MiB blocks past the end (their BAT entries
  // in the log) and zeros more separate 4 KiB ranges inside them than a read-only open holds.
  const bs = 256 * MiB;
  const n = MAX_OVERLAY_RANGES + 1000;
  const { bytes } = await dirtyImage({
    virtualSize: 16 * bs,
    blockSize: bs,
    logSize: 16 * MiB,
    writes: (p, b) => {
      const blocks = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [i, b.length + i * bs]));
      const zeros = Array.from({ length: n }, (_, i): LogWrite => ({ kind: 'zero', fileOffset: b.length + i * 8 * KiB, length: 4 * KiB }));
      return [[{ kind: 'data', fileOffset: p.bat.offset, data: batSector(b, p, blocks) }, ...zeros]];
    },
    lastFileOffset: (p, b) => b.length + 16 * bs,
  });
  const disk = new FaultySource(bytes);
  await rejectsWith(VhdxImage.open(disk.clone()), 'LOG_REPLAY_FAILED', 'ENOTSUP');
  const found = await checkImage(disk);
  assert.deepEqual(found.findings.map((f) => f.reason), ['LOG_DIRTY']);
  const r = await repairImage(disk, { mode: 'all' });
  assert.ok(r.logEntriesReplayed > 0, JSON.stringify(r));
  assert.equal(disk.size, bytes.length + 16 * bs);
  assert.ok(disk.counts.bytesWritten < MiB, `${disk.counts.bytesWritten} bytes written`);
  const img = await VhdxImage.open(disk);
  assert.equal(img.layout.log.dirty, false);
  const b = new Uint8Array(MiB);
  await img.read(3 * bs, b);
  assert.ok(b.every((x) => x === 0));
  await img.close();
});
