// Seeded, deterministic fuzzing of open / read / blockStatus / allocationStats over mutated
// images. The only error the library may ever throw is VhdxError; anything else (TypeError,
// RangeError, "Invalid array length", ...) fails the test with the seed, the case number and the
// mutations that produced it. Each run happens in a worker thread so that a hang, even a
// synchronous endless loop, is caught by a watchdog; each case also has its own time bound, and
// the source refuses any single read larger than 64 MiB (an allocation sized by an unchecked
// number) and any write.
//
// The same mutations also drive a property: check and the readers agree. Where check finds no
// corruption (clean, warnings or leaks only), open, describe, the allocation scan, block status of
// the whole disk and a read of every block holding data all succeed; so whatever the readers
// refuse, check reports as a corruption or cannot complete.
//
// Reproduce one case: the failure message names the seed and case; cases are independent (each
// has its own PRNG derived from both), so rerunning the same test reproduces it. Longer hunts:
// VHDX_FUZZ_SCALE=20 multiplies every case count (the first cases stay the same).
import { Worker, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeRng } from '../fuzz/rng.js';
import { MemorySource, VhdxImage, VhdxError, describe, checkImage, type ParentResolver, type RandomAccessSource } from '../src/index.js';
import { LOCATOR_TYPE_VHDX } from '../src/format/constants.js';
import { crc32cWithZeroField } from '../src/codec/crc32c.js';
import { LOG_ENTRY_HEADER } from '../src/format/log.js';
import { encodeGuid } from '../src/codec/guid.js';
import {
  buildImage,
  editHeaders,
  fillByte,
  HEADER_AT,
  KiB,
  MiB,
  PayloadState,
  putBatEntry,
  REGION_TABLE_AT,
  resealHeaders,
  resealRegionTables,
  writeLog,
} from './helpers/build.js';
import { corpusDir, corpusFile, needTool, run, scratch } from './helpers/env.js';

/** Mutations stay in the first 4 MiB, where the structures are. */
const FOCUS = 4 * MiB;
/** A single read request larger than this is a bug: something read a length from the file unchecked. */
const MAX_READ = 64 * MiB;
/** One case (open, a few reads, block status, allocation scan) must finish within this. */
const CASE_MS = 5000;
/** No progress for this long: the worker is stuck. */
const WATCHDOG_MS = 30000;
const SCALE = Number(process.env.VHDX_FUZZ_SCALE ?? 1);

/**
 * A job for a worker: a fuzz run (seed image, seed, case count), the agreement property over its
 * first cases (`agree`), or one crafted input (`crafted`, with the outcome it must give).
 */
interface Job {
  name: string;
  seed: number;
  cases: number;
  image: string;
  agree?: boolean;
  crafted?: boolean;
  expect?: string;
}
/** A case that broke a rule: what happened, and the mutations that led there. */
type Failure = { case: number; what: string; mutations?: string[] };
/** The end of a job: cases run (-1 after a failure), time, cases that opened, outcomes by name. */
type Done = { type: 'done'; cases: number; ms: number; opened: number; reasons: Record<string, number> };
/** What a worker tells the test: the case it starts, a failure, the end. */
type Message = { type: 'case'; case: number } | ({ type: 'fail' } & Failure) | Done;

/** The fuzz runs: seed image, seed, case count. */
const RUNS: Job[] = [
  { name: 'dynamic image with allocated and zero blocks', seed: 0x5eed0001, cases: 1000, image: 'dynamic' },
  { name: 'dynamic image with a dirty log', seed: 0x5eed0002, cases: 900, image: 'dirty' },
  { name: 'fixed image, virtual size not a block multiple', seed: 0x5eed0003, cases: 500, image: 'fixed' },
  { name: '4096-byte sectors, 4 MiB blocks', seed: 0x5eed0004, cases: 700, image: 'sector4k' },
  { name: 'differencing image with partial blocks and a sector bitmap', seed: 0x5eed0005, cases: 1000, image: 'differencing' },
  { name: '4 TiB sparse image with a 32 MiB BAT', seed: 0x5eed0007, cases: 250, image: 'large' },
  { name: 'corpus vhdx-log-replay.vhdx (Windows-made, dirty log)', seed: 0x5eed0006, cases: 500, image: 'corpus' },
];

/**
 * Check and the readers agree, over the first cases of each run above (the same mutations, for
 * the same seeds). Not the 4 TiB image: the readers' whole-disk block status there takes seconds.
 */
const AGREE_CASES = 120;

/** DataWriteGuid of the differencing seed image's parent (its locator's parent_linkage). */
const SEED_PARENT_LINKAGE = '83ef5fc2-4f4f-4a3c-9a58-8d5e4c36d0a1';

/**
 * Crafted inputs that once made open take minutes to hours (work quadratic in the log's size);
 * each must now finish within the per-case bound, checked by the same watched worker.
 */
const CRAFTED = [
  { name: 'a 16 MiB log whose every 4 KiB sector claims a ring-sized entry', image: 'logEverySector', expect: 'LOG_NO_VALID_SEQUENCE' },
  { name: "a log entry of 200,000 zero descriptors reaching far past what the image's structures need", image: 'logZeroDescriptors', expect: 'LOG_REPLAY_FAILED' },
  { name: "a log entry of 200,000 zero descriptors rewriting the same sectors inside the file", image: 'logZeroDescriptorsInside', expect: 'opened' },
];

// ---- deterministic PRNG ------------------------------------------------------------------------

/** The fuzz harness's PRNG (fuzz/rng.js), seeded from (seed, case): every case is independent and replayable. */
function caseRng(seed: number, caseIndex: number) {
  const rng = makeRng(seed ^ Math.imul(caseIndex + 1, 0x9e3779b9));
  /** One value of a non-empty table of [weight, value], picked by weight. */
  const weighted = <T>(table: readonly (readonly [number, T])[]): T => {
    const total = table.reduce((s, [w]) => s + w, 0);
    let r = rng() * total;
    for (const [w, v] of table) if ((r -= w) < 0) return v;
    return table[table.length - 1]![1];
  };
  return Object.assign(rng, { weighted });
}
type Rng = ReturnType<typeof caseRng>;

// ---- main thread: one test per run, each in a watched worker -----------------------------------

async function mainThread() {
  const { test } = await import('node:test');
  const assert: typeof import('node:assert/strict') = (await import('node:assert/strict')).default;
  const corpusPresent = existsSync(join(corpusDir, 'vhdx-log-replay.vhdx.gz'));
  const totals = { cases: 0, ms: 0 };

  test('fuzz seed images are valid: they open and scan cleanly, and qemu-img check accepts them', async (t) => {
    for (const kind of ['dynamic', 'dirty', 'fixed', 'sector4k', 'differencing', 'large']) {
      const bytes = await seedImage(kind);
      const img = await VhdxImage.open(new MemorySource(bytes, { readOnly: true }));
      const stats = await img.allocationStats();
      assert.ok(stats.allocatedBlocks >= 1, `${kind}: no allocated block`);
      if (kind !== 'differencing') {
        const b = new Uint8Array(img.blockSize);
        await img.read(0, b);
      }
      await img.close();
    }
    const missing = needTool('qemu-img');
    if (missing) {
      t.skip(missing);
      return;
    }
    const dir = scratch('vhdx-fuzz-');
    for (const kind of ['dynamic', 'fixed']) {
      const path = join(dir, `${kind}.vhdx`);
      writeFileSync(path, await seedImage(kind));
      run('qemu-img', ['check', '-f', 'vhdx', path]);
    }
  });

  for (const spec of RUNS) {
    const cases = Math.max(1, Math.round(spec.cases * SCALE));
    const title = `fuzz seed 0x${spec.seed.toString(16)}: ${cases} cases, ${spec.name}`;
    const skip = spec.image === 'corpus' && !corpusPresent ? `corpus not found in ${corpusDir}` : false;
    test(title, { skip, timeout: 10 * 60 * 1000 }, async () => {
      const result = await runWorker({ ...spec, cases });
      assert.deepEqual(result.failures, [], formatFailures(spec, result.failures));
      assert.equal(result.done?.cases, cases, `the worker stopped after ${result.done?.cases ?? result.lastCase} of ${cases} cases`);
      // The fuzzer must reach past the first checks: some cases open and run, and the
      // failures it provokes are of several kinds. (result.done is there: the assertion above
      // fails without it.)
      const { opened, reasons } = result.done!;
      assert.ok(opened >= cases * 0.15, `only ${opened} of ${cases} cases opened: mutations are too destructive to test anything`);
      assert.ok(Object.keys(reasons).length >= 5, `only these reasons were provoked: ${JSON.stringify(reasons)}`);
      totals.cases += cases;
      totals.ms += result.done!.ms;
    });
  }

  for (const spec of RUNS.filter((r) => r.image !== 'large')) {
    const cases = Math.max(1, Math.round(Math.min(spec.cases, AGREE_CASES) * SCALE));
    const skip = spec.image === 'corpus' && !corpusPresent ? `corpus not found in ${corpusDir}` : false;
    test(`check agrees with the readers, seed 0x${spec.seed.toString(16)}: ${cases} cases, ${spec.name}`, { skip, timeout: 10 * 60 * 1000 }, async () => {
      const result = await runWorker({ ...spec, cases, agree: true });
      assert.deepEqual(result.failures, [], formatFailures(spec, result.failures));
      assert.equal(result.done?.cases, cases, `the worker stopped after ${result.done?.cases ?? result.lastCase} of ${cases} cases`);
      // Both verdicts occur often: the property is tested on images the readers accept and refuse.
      const { bothAccept, bothRefuse, checkOnly } = result.done!.reasons;
      assert.ok(bothAccept !== undefined && bothRefuse !== undefined && checkOnly !== undefined, `verdicts: ${JSON.stringify(result.done!.reasons)}`);
      assert.ok(bothAccept >= cases * 0.1 && bothRefuse >= cases * 0.1, `verdicts: ${JSON.stringify(result.done!.reasons)}`);
      assert.equal(bothAccept + bothRefuse + checkOnly, cases);
    });
  }

  for (const spec of CRAFTED) {
    test(`adversarial input finishes within ${CASE_MS} ms: ${spec.name}`, { timeout: 10 * 60 * 1000 }, async () => {
      const job: Job = { ...spec, crafted: true, seed: 1, cases: 1 };
      const result = await runWorker(job);
      assert.deepEqual(result.failures, [], formatFailures(job, result.failures));
      assert.deepEqual(result.done?.reasons, { [spec.expect]: 1 });
    });
  }

  test('fuzz totals: thousands of cases ran', () => {
    assert.ok(totals.cases >= 3000 * Math.min(1, SCALE), `ran ${totals.cases} cases`);
  });
}

function runWorker(run: Job): Promise<{ failures: Failure[]; done: Done | null; lastCase: number }> {
  return new Promise((resolve) => {
    const failures: Failure[] = [];
    let lastCase = -1;
    let done: Done | null = null;
    const worker = new Worker(fileURLToPath(import.meta.url), {
      workerData: run,
      resourceLimits: { maxOldGenerationSizeMb: 512 },
      stdout: true,
      stderr: true,
    });
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        failures.push({ case: lastCase, what: `no progress for ${WATCHDOG_MS} ms: hang in case ${lastCase}` });
        worker.terminate();
      }, WATCHDOG_MS);
    };
    arm();
    worker.on('message', (m: Message) => {
      if (m.type === 'case') {
        lastCase = m.case;
        arm();
      } else if (m.type === 'fail') failures.push(m);
      else if (m.type === 'done') done = m;
    });
    worker.on('error', (e: Error) => failures.push({ case: lastCase, what: `worker died in case ${lastCase}: ${e && e.stack ? e.stack : e}` }));
    worker.on('exit', () => {
      clearTimeout(timer);
      resolve({ failures, done, lastCase });
    });
  });
}

function formatFailures(run: Job, failures: readonly Failure[]): string {
  return failures
    .slice(0, 5)
    .map((f) => `${run.crafted ? run.name : `seed 0x${run.seed.toString(16)}`} case ${f.case}: ${f.what}${f.mutations ? `\n  mutations: ${f.mutations.join('; ')}` : ''}`)
    .join('\n');
}

// ---- worker: build the seed image, mutate, exercise ---------------------------------------------

class GuardViolation extends Error {
  override name = 'GuardViolation';
}

/**
 * A read-only source over a mutated copy of the first `head.length` bytes and the untouched
 * rest of the base image, of `size` bytes. Refuses oversized reads and any write, and remembers
 * the violation even if the library were to catch the error.
 */
class GuardedSource implements RandomAccessSource {
  readonly readOnly = true;
  violation: string | null = null;
  constructor(
    readonly head: Uint8Array,
    readonly base: Uint8Array,
    readonly size: number,
  ) {}
  fail(what: string): never {
    this.violation ??= what;
    throw new GuardViolation(what);
  }
  async read(offset: number, into: Uint8Array): Promise<number> {
    if (into.length > MAX_READ) this.fail(`read of ${into.length} bytes at ${offset}`);
    if (!Number.isSafeInteger(offset) || offset < 0) this.fail(`read at offset ${offset}`);
    if (offset >= this.size) return 0;
    const n = Math.min(into.length, this.size - offset);
    let done = 0;
    if (offset < this.head.length) {
      done = Math.min(n, this.head.length - offset);
      into.set(this.head.subarray(offset, offset + done));
    }
    if (done < n) into.set(this.base.subarray(offset + done, offset + n), done);
    return n;
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.fail(`write of ${data.length} bytes at ${offset}`);
  }
  async truncate(size: number): Promise<void> {
    this.fail(`truncate to ${size}`);
  }
  async close() {}
}

async function seedImage(kind: string): Promise<Uint8Array> {
  switch (kind) {
    case 'dynamic':
      return (await buildImage({ virtualSize: 64 * MiB, blockSize: MiB, allocate: [0, 5, 63], states: { 7: 2, 8: 3, 9: 1, 10: 5 } })).bytes;
    case 'dirty':
      return (await buildImage({ virtualSize: 64 * MiB, blockSize: MiB, allocate: [3], logAllocate: [1, 2] })).bytes;
    case 'fixed':
      return (await buildImage({ virtualSize: 5 * MiB + 3 * 512, blockSize: MiB, fixed: true })).bytes;
    case 'sector4k':
      return (await buildImage({ virtualSize: 16 * MiB, blockSize: 4 * MiB, logicalSectorSize: 4096, physicalSectorSize: 4096, allocate: [0, 3] })).bytes;
    case 'differencing': {
      const parentLocator = {
        locatorType: LOCATOR_TYPE_VHDX,
        entries: [
          { key: 'parent_linkage', value: '{83ef5fc2-4f4f-4a3c-9a58-8d5e4c36d0a1}' },
          { key: 'relative_path', value: '..\\parent.vhdx' },
          { key: 'absolute_win32_path', value: '\\\\?\\C:\\vms\\parent.vhdx' },
        ],
      };
      const { bytes, plan } = await buildImage({ virtualSize: 16 * MiB, blockSize: MiB, allocate: [1], parentLocator });
      // Block 4 partially present, chunk 0's sector bitmap present: 2 more MiB at the end.
      const out = new Uint8Array(bytes.length + 2 * MiB);
      out.set(bytes);
      out.fill(fillByte(4), bytes.length, bytes.length + MiB);
      out.fill(0x0f, bytes.length + MiB, bytes.length + MiB + 4 * KiB);
      putBatEntry(out, plan, 4, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: bytes.length / MiB });
      putBatEntry(out, plan, plan.geometry.chunkRatio, { state: 6, fileOffsetMB: bytes.length / MiB + 1 });
      return out;
    }
    case 'large':
      // Big enough for the allocation scan's windows and its bulk path for uniform runs.
      return (await buildImage({ virtualSize: 4 * 2 ** 40, blockSize: MiB, logicalSectorSize: 4096, allocate: [0, 2_000_000] })).bytes;
    case 'corpus':
      return new Uint8Array(readFileSync(await corpusFile('vhdx-log-replay.vhdx.gz')));
  }
  throw new Error(`unknown seed image ${kind}`);
}

async function craftedImage(kind: string): Promise<Uint8Array> {
  const logGuid = '11111111-2222-3333-4444-555555555555';
  switch (kind) {
    case 'logEverySector': {
      const { bytes, plan } = await buildImage({ logSize: 16 * MiB });
      for (let at = 0; at < plan.log.length; at += 4 * KiB) {
        LOG_ENTRY_HEADER.encode(
          { checksum: 0, entryLength: plan.log.length, tail: at, sequenceNumber: 1n, descriptorCount: 0, reserved: 0, logGuid, flushedFileOffset: 0, lastFileOffset: 0 },
          bytes,
          plan.log.offset + at,
        );
      }
      editHeaders(bytes, (h) => encodeGuid(logGuid, bytes, h + 48));
      return bytes;
    }
    case 'logZeroDescriptors': {
      // Valid: one entry zeroing 200,000 separate 4 KiB sectors, in descending order.
      const { bytes, plan } = await buildImage({ logSize: 8 * MiB });
      const n = 200000;
      // LastFileOffset covers every sector zeroed (a replay may write nothing past it).
      const lastFileOffset = Math.ceil((plan.payloadOffset + (n + 1) * 8 * KiB) / MiB) * MiB;
      writeLog(bytes, plan, logGuid, [Array.from({ length: n }, (_, i) => ({ kind: 'zero', fileOffset: plan.payloadOffset + (n - i) * 8 * KiB, length: 4 * KiB }))], { lastFileOffset });
      editHeaders(bytes, (h) => encodeGuid(logGuid, bytes, h + 48));
      return bytes;
    }
    case 'logZeroDescriptorsInside': {
      // Valid and within bounds: one entry zeroing 200,000 times the 512 alternate 4 KiB sectors of
      // the image's four allocated blocks, in descending order, over and over.
      const { bytes, plan } = await buildImage({ logSize: 8 * MiB, allocate: [0, 1, 2, 3] });
      const n = 200000;
      const at = (i: number) => plan.payloadOffset + (511 - (i % 512)) * 8 * KiB;
      writeLog(bytes, plan, logGuid, [Array.from({ length: n }, (_, i) => ({ kind: 'zero', fileOffset: at(i), length: 4 * KiB }))]);
      editHeaders(bytes, (h) => encodeGuid(logGuid, bytes, h + 48));
      return bytes;
    }
  }
  throw new Error(`unknown crafted image ${kind}`);
}

/** Where the structures of the (valid) seed image are, from its own layout. */
async function structuresOf(bytes: Uint8Array) {
  const img = await VhdxImage.open(new MemorySource(bytes, { readOnly: true }));
  const l = img.layout;
  const presentEntries: number[] = [];
  const ctx = {
    fileSize: bytes.length,
    dirty: l.log.dirty,
    log: { offset: l.log.logOffset, length: l.log.logLength },
    md: l.metadataRegion.fileOffset,
    items: l.metadataItems.map((m) => ({ offset: m.offset, length: m.length })),
    bat: l.batRegion.fileOffset,
    batEntries: l.batEntries,
    chunkRatio: l.geometry.chunkRatio,
    virtualSize: l.virtualSize,
    blockSize: l.blockSize,
    presentEntries,
  };
  // BAT entries that hold something (allocated blocks, bitmaps, non-zero states), read raw.
  const raw = bytes.subarray(ctx.bat, ctx.bat + Math.min(ctx.batEntries, 65536) * 8);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < raw.length / 8; i++) if (dv.getUint32(i * 8, true) !== 0) ctx.presentEntries.push(i);
  await img.close();
  return ctx;
}

/**
 * Fields worth setting to extremes, [file offset, width in bytes], in groups picked by weight so
 * that the few fields of each structure are hit often enough.
 */
type Structures = Awaited<ReturnType<typeof structuresOf>>;
/** A field: [file offset, width in bytes]. */
type Field = [number, number];

function fieldsOf(ctx: Structures, dirty: boolean) {
  const header: Field[] = [[0, 8]];
  for (const h of HEADER_AT) for (const [at, w] of [[0, 4], [4, 4], [8, 8], [16, 4], [48, 4], [60, 4], [64, 2], [66, 2], [68, 4], [72, 8]] satisfies Field[]) header.push([h + at, w]);
  const region: Field[] = [];
  for (const rt of REGION_TABLE_AT) {
    region.push([rt, 4], [rt + 4, 4], [rt + 8, 4]);
    for (let i = 0; i < 4; i++) for (const [at, w] of [[0, 4], [16, 8], [16, 4], [24, 4], [28, 4]] satisfies Field[]) region.push([rt + 16 + i * 32 + at, w]);
  }
  const mdTable: Field[] = [[ctx.md, 8], [ctx.md + 10, 2]];
  for (let i = 0; i < ctx.items.length + 2; i++) for (const [at, w] of [[0, 4], [16, 4], [20, 4], [24, 4]] satisfies Field[]) mdTable.push([ctx.md + 32 + i * 32 + at, w]);
  const items: Field[] = [];
  for (const it of ctx.items) {
    items.push([ctx.md + it.offset, 4], [ctx.md + it.offset + 4, 4], [ctx.md + it.offset, 8]);
    if (it.length > 16) for (let at = 16; at < Math.min(it.length, 64); at += 2) items.push([ctx.md + it.offset + at, 2]); // locator entries
  }
  const bat: Field[] = [];
  const batIdx = new Set([0, 1, 2, ctx.chunkRatio, ctx.chunkRatio - 1, ctx.batEntries - 1, ...ctx.presentEntries]);
  for (const i of batIdx) if (i >= 0 && i < ctx.batEntries) bat.push([ctx.bat + i * 8, 8], [ctx.bat + i * 8, 4], [ctx.bat + i * 8 + 4, 4]);
  const log: Field[] = [];
  for (const e of [0, 4096, 8192]) {
    const b = ctx.log.offset + e;
    for (const [at, w] of [[0, 4], [4, 4], [8, 4], [12, 4], [16, 8], [24, 4], [32, 4], [48, 8], [56, 8]] satisfies Field[]) log.push([b + at, w]);
    for (let d = 0; d < 2; d++) for (const [at, w] of [[0, 4], [4, 4], [8, 8], [16, 8], [24, 8]] satisfies Field[]) log.push([b + 64 + d * 32 + at, w]);
    log.push([b + 4, 4], [b + 4092, 4]);
  }
  // Fields that size a buffer or a loop: entry counts, lengths, offsets into tables.
  const sizes: Field[] = [];
  for (const h of HEADER_AT) sizes.push([h + 68, 4], [h + 72, 8]);
  for (const rt of REGION_TABLE_AT) {
    sizes.push([rt + 8, 4]);
    for (let i = 0; i < 3; i++) sizes.push([rt + 16 + i * 32 + 16, 8], [rt + 16 + i * 32 + 24, 4]);
  }
  sizes.push([ctx.md + 10, 2]);
  ctx.items.forEach((it, i) => {
    sizes.push([ctx.md + 32 + i * 32 + 16, 4], [ctx.md + 32 + i * 32 + 20, 4], [ctx.md + it.offset, 8], [ctx.md + it.offset, 4]);
    if (it.length > 20) {
      // A parent locator: KeyValueCount, then each entry's offsets and lengths.
      sizes.push([ctx.md + it.offset + 18, 2]);
      for (let k = 0; 20 + k * 12 + 12 <= it.length && k < 4; k++) {
        const e = ctx.md + it.offset + 20 + k * 12;
        sizes.push([e, 4], [e + 4, 4], [e + 8, 2], [e + 10, 2]);
      }
    }
  });
  for (const e of [0, 4096]) sizes.push([ctx.log.offset + e + 8, 4], [ctx.log.offset + e + 24, 4], [ctx.log.offset + e + 64 + 8, 8], [ctx.log.offset + e + 12, 4]);
  const inside = (list: Field[]) => list.filter(([at, w]) => at + w <= Math.min(ctx.fileSize, FOCUS));
  const everyGroup: [number, Field[]][] = [
    [15, inside(header)],
    [20, inside(region)],
    [20, inside(mdTable)],
    [15, inside(items)],
    [12, inside(bat)],
    [dirty ? 25 : 8, inside(log)],
  ];
  const groups = everyGroup.filter(([, list]) => list.length > 0);
  const sizeFields = inside(sizes);
  return { pick: (rng: Rng): Field => rng.pick(rng.weighted(groups)), pickSize: (rng: Rng): Field => rng.pick(sizeFields) };
}

function extremes(width: number, ctx: Structures): (number | bigint)[] {
  const common = [0, 1, 2, 7, 512, 4096, KiB * 64, MiB - 1, MiB, 2 * MiB, 3 * MiB, 4 * MiB, 256 * MiB, ctx.fileSize, ctx.fileSize - MiB];
  if (width === 2) return [0, 1, 0x7fff, 0x8000, 0xffff, 2047, 2048, 126, 127, 128];
  if (width === 4) return [...common, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffff000, 2047, 2048, 0x100000 | 6, 0x400006, 0x600007];
  return [...common.map(BigInt), 2n ** 32n - 1n, 2n ** 32n, 2n ** 46n, 2n ** 46n + 512n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n];
}

function writeField(bytes: Uint8Array, at: number, width: number, value: number | bigint): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (width === 2) dv.setUint16(at, Number(value) & 0xffff, true);
  else if (width === 4) dv.setUint32(at, Number(BigInt.asUintN(32, BigInt(value))), true);
  else dv.setBigUint64(at, BigInt.asUintN(64, BigInt(value)), true);
}
function readField(bytes: Uint8Array, at: number, width: number): bigint {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return width === 2 ? BigInt(dv.getUint16(at, true)) : width === 4 ? BigInt(dv.getUint32(at, true)) : dv.getBigUint64(at, true);
}

/** Recompute the checksum of every log entry in the log (unwrapped ones), whatever their content. */
function resealLog(bytes: Uint8Array, ctx: Structures): void {
  const { offset, length } = ctx.log;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = offset; at + 64 <= Math.min(offset + length, bytes.length); at += 4 * KiB) {
    if (bytes[at] !== 0x6c || bytes[at + 1] !== 0x6f || bytes[at + 2] !== 0x67 || bytes[at + 3] !== 0x65) continue;
    const len = dv.getUint32(at + 8, true);
    if (len < 4 * KiB || len % (4 * KiB) !== 0 || at + len > Math.min(offset + length, bytes.length)) continue;
    dv.setUint32(at + 4, crc32cWithZeroField(bytes.subarray(at, at + len), 4), true);
  }
}

/** Apply 1-4 random mutations to `head` (and maybe cut the file); returns their descriptions. */
function mutate(head: Uint8Array, ctx: Structures, fields: ReturnType<typeof fieldsOf>, rng: Rng, state: { size: number }): string[] {
  const out: string[] = [];
  const focus = head.length;
  const n = 1 + rng.weighted([[50, 0], [30, 1], [15, 2], [5, 3]]);
  for (let k = 0; k < n; k++) {
    const kind = rng.weighted([
      [18, 'flip'],
      [8, 'bytes'],
      [26, 'field'],
      [12, 'size'],
      [10, 'perturb'],
      [14, 'batEntry'],
      [5, 'copy'],
      [4, 'zero'],
      [4, 'truncate'],
      [3, 'dirty'],
    ]);
    switch (kind) {
      case 'flip': {
        // Half the flips land in a known field, half anywhere in the focus area.
        const at = rng() < 0.5 ? fields.pick(rng)[0] + rng.int(4) : rng.int(focus);
        const bit = rng.int(8);
        head[at]! ^= 1 << bit;
        out.push(`flip bit ${bit} at ${at}`);
        break;
      }
      case 'bytes': {
        const at = rng.int(focus);
        const len = 1 + rng.int(16);
        for (let i = 0; i < len && at + i < focus; i++) head[at + i] = rng.int(256);
        out.push(`random ${len} bytes at ${at}`);
        break;
      }
      case 'field': {
        const [at, w] = fields.pick(rng);
        const v = rng.pick(extremes(w, ctx));
        writeField(head, at, w, v);
        out.push(`u${w * 8} at ${at} = ${v}`);
        break;
      }
      case 'size': {
        // A count, length or offset set to something large or just past a limit.
        const [at, w] = fields.pickSize(rng);
        const v = rng.pick(extremes(w, ctx).filter((x) => BigInt(x) >= 2048n));
        writeField(head, at, w, v);
        out.push(`size u${w * 8} at ${at} = ${v}`);
        break;
      }
      case 'perturb': {
        const [at, w] = fields.pick(rng);
        const d = BigInt(rng.pick([1, -1, 2, -2, 8, -8, 512, -512, 4096, -4096, MiB, -MiB, 2 * MiB]));
        writeField(head, at, w, readField(head, at, w) + d);
        out.push(`u${w * 8} at ${at} += ${d}`);
        break;
      }
      case 'batEntry': {
        // A well-formed entry (reserved bits clear most of the time) with a plausible or wild offset.
        const index = rng() < 0.6 && ctx.presentEntries.length ? rng.pick(ctx.presentEntries) : rng.int(Math.min(ctx.batEntries, 8192));
        const at = ctx.bat + index * 8;
        if (at + 8 > focus) break;
        const state = rng.pick([0, 1, 2, 3, 4, 5, 6, 6, 6, 7]);
        const mb = rng.weighted([
          [30, rng.int(Math.ceil(ctx.fileSize / MiB) + 2)],
          [10, 0],
          [10, rng.int(2 ** 20)],
          [5, 2 ** 44 - 1],
        ]);
        const lo = ((mb % 4096) * 2 ** 20 + state + (rng() < 0.1 ? rng.int(0x20000) << 3 : 0)) >>> 0;
        writeField(head, at, 4, lo);
        writeField(head, at + 4, 4, Math.floor(mb / 4096));
        out.push(`BAT entry ${index} = state ${state} at ${mb} MiB (lo 0x${lo.toString(16)})`);
        break;
      }
      case 'copy': {
        // Copy one 32-byte entry or 4 KiB sector over another (duplicates, swapped structures).
        const len = rng() < 0.7 ? 32 : 4 * KiB;
        const from = fields.pick(rng)[0] & ~(len === 32 ? 31 : 4095);
        const to = fields.pick(rng)[0] & ~(len === 32 ? 31 : 4095);
        if (from + len <= focus && to + len <= focus) head.copyWithin(to, from, from + len);
        out.push(`copy ${len} bytes ${from} -> ${to}`);
        break;
      }
      case 'zero': {
        const at = fields.pick(rng)[0] & ~4095;
        const len = rng.pick([64, 4 * KiB, 64 * KiB]);
        head.fill(0, at, Math.min(focus, at + len));
        out.push(`zero ${len} bytes at ${at}`);
        break;
      }
      case 'truncate': {
        const cuts = [0, 7, 8, 4 * KiB, 512 * KiB, MiB - 1, MiB, ctx.log.offset + 4 * KiB, ctx.md + 32 * KiB, ctx.bat + 8, ctx.bat + 32 * KiB, ctx.fileSize - 1, ctx.fileSize - MiB];
        state.size = Math.max(0, Math.min(state.size, rng() < 0.7 ? rng.pick(cuts) : rng.int(ctx.fileSize)));
        out.push(`truncate to ${state.size}`);
        break;
      }
      case 'dirty': {
        // Set a LogGuid (the log must now replay), sometimes the one the log entries carry.
        const g = rng() < 0.5 && ctx.log.offset + 48 <= focus ? head.slice(ctx.log.offset + 32, ctx.log.offset + 48) : Uint8Array.from({ length: 16 }, () => rng.int(256));
        for (const h of HEADER_AT) head.set(g, h + 48);
        out.push('set LogGuid');
        break;
      }
    }
  }
  if (rng() < 0.6) {
    resealHeaders(head);
    resealRegionTables(head);
    resealLog(head, ctx);
    out.push('resealed');
  }
  return out;
}

/** Open, read a few ranges, block status, allocation scan, close. Returns 'opened' or a reason. */
async function exercise(src: GuardedSource, rng: Rng): Promise<string> {
  const img = await VhdxImage.open(src);
  try {
    const size = img.size;
    const bs = img.blockSize;
    const errors: string[] = [];
    const attempt = async (fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (e) {
        if (!(e instanceof VhdxError)) throw e;
        errors.push(e.reason);
      }
    };
    for (let k = 0; k < 3; k++) {
      const off = rng() < 0.5 ? Math.min(size - 1, rng.int(Math.min(size, 64 * MiB) / bs) * bs) : rng.int(Math.min(size, 2 ** 40));
      const len = Math.min(size - off, rng.pick([1, 512, 4096, 65536, MiB + 4096]));
      await attempt(() => img.read(off, new Uint8Array(len)));
    }
    await attempt(async () => {
      const off = rng() < 0.5 ? 0 : rng.int(size);
      const extents = await img.blockStatus(off, Math.min(size - off, 2048 * bs));
      if (!Array.isArray(extents)) throw new TypeError('blockStatus did not return an array');
    });
    await attempt(() => (rng() < 0.3 ? describe(img) : img.allocationStats()));
    return errors[0] ?? 'opened';
  } finally {
    await img.close();
  }
}

/**
 * A parent for the differencing seed image (16 MiB, DataWriteGuid SEED_PARENT_LINKAGE) and a
 * resolver that opens it as openFile's does: it needs a path in the locator to follow.
 */
async function seedParentResolver(): Promise<ParentResolver> {
  const { bytes } = await buildImage({ virtualSize: 16 * MiB, blockSize: MiB, allocate: [0, 4] });
  const src = new MemorySource(bytes);
  const img = await VhdxImage.open(src, { readOnly: false });
  img.setNextDataWriteGuid(SEED_PARENT_LINKAGE);
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

/**
 * Everything the readers do with an image (info, map, convert, reads): open, describe, the
 * allocation scan, block status of the whole disk, and a read of every extent holding data.
 */
async function readEverything(src: RandomAccessSource, parent?: ParentResolver): Promise<void> {
  const img = await VhdxImage.open(src, parent ? { parent } : {});
  try {
    await describe(img);
    await img.allocationStats();
    const buf = new Uint8Array(MiB);
    for (const e of await img.blockStatus(0, img.size)) {
      if (e.type !== 'data') continue;
      for (let at = e.offset; at < Math.min(e.offset + e.length, img.size); at += MiB) {
        await img.read(at, buf.subarray(0, Math.min(MiB, e.offset + e.length - at, img.size - at)));
      }
    }
  } finally {
    await img.close();
  }
}

/** One case of the agreement property: the verdict pair, or a failure message. */
async function agreement(src: RandomAccessSource, parent?: ParentResolver): Promise<{ fail: string } | { outcome: 'bothRefuse' | 'bothAccept' | 'checkOnly' }> {
  const r = await checkImage(src, parent ? { parent } : {});
  const checkAccepts = r.supported && r.canComplete && r.corruptions === 0;
  let refused: VhdxError | null = null;
  try {
    await readEverything(src, parent);
  } catch (e) {
    if (!(e instanceof VhdxError)) throw e;
    refused = e;
  }
  if (checkAccepts && refused) {
    const findings = r.findings.map((f) => `${f.severity} ${f.reason}`).join(', ') || 'none';
    return { fail: `check found no corruption (findings: ${findings}) but the readers refused: ${refused.reason}: ${refused.message}` };
  }
  return { outcome: refused ? 'bothRefuse' : checkAccepts ? 'bothAccept' : 'checkOnly' };
}

async function workerMain(run: Job, port: MessagePort): Promise<void> {
  const post = (m: Message) => port.postMessage(m);
  if (run.crafted) {
    post({ type: 'case', case: 0 });
    const bytes = await craftedImage(run.image);
    const src = new GuardedSource(bytes, bytes, bytes.length);
    const start = performance.now();
    let outcome: string;
    try {
      outcome = await exercise(src, caseRng(run.seed, 0));
    } catch (e) {
      if (!(e instanceof VhdxError)) {
        post({ type: 'fail', case: 0, what: `threw ${(e instanceof Error && e.stack) || String(e)}` });
        return;
      }
      outcome = e.reason;
    }
    const ms = Math.round(performance.now() - start);
    if (src.violation) post({ type: 'fail', case: 0, what: `source guard: ${src.violation}` });
    if (ms > CASE_MS) post({ type: 'fail', case: 0, what: `took ${ms} ms (bound ${CASE_MS} ms)` });
    post({ type: 'done', cases: 1, ms, opened: outcome === 'opened' ? 1 : 0, reasons: { [outcome]: 1 } });
    return;
  }
  const base = await seedImage(run.image);
  const ctx = await structuresOf(base);
  const parent = run.agree && run.image === 'differencing' ? await seedParentResolver() : undefined;
  const fields = fieldsOf(ctx, ctx.dirty);
  const headLength = Math.min(base.length, FOCUS);
  const reasons: Record<string, number> = {};
  let opened = 0;
  let failures = 0;
  const t0 = performance.now();
  for (let c = 0; c < run.cases && failures < 5; c++) {
    post({ type: 'case', case: c });
    const rng = caseRng(run.seed, c);
    const head = base.slice(0, headLength);
    const state = { size: base.length };
    const mutations = mutate(head, ctx, fields, rng, state);
    const src = new GuardedSource(head, base, state.size);
    const start = performance.now();
    let outcome: string;
    try {
      if (run.agree) {
        const v = await agreement(src, parent);
        if ('fail' in v) {
          failures++;
          post({ type: 'fail', case: c, what: v.fail, mutations });
          continue;
        }
        outcome = v.outcome;
      } else outcome = await exercise(src, rng);
      opened++;
    } catch (e) {
      if (e instanceof VhdxError) outcome = e.reason;
      else {
        failures++;
        post({ type: 'fail', case: c, what: `threw ${(e instanceof Error && e.stack) || String(e)}`, mutations });
        continue;
      }
    }
    reasons[outcome] = (reasons[outcome] ?? 0) + 1;
    const ms = performance.now() - start;
    if (src.violation) {
      failures++;
      post({ type: 'fail', case: c, what: `source guard: ${src.violation}`, mutations });
    } else if (ms > CASE_MS) {
      failures++;
      post({ type: 'fail', case: c, what: `took ${Math.round(ms)} ms (bound ${CASE_MS} ms)`, mutations });
    }
  }
  post({ type: 'done', cases: failures ? -1 : run.cases, ms: Math.round(performance.now() - t0), opened, reasons });
}

// Last, once every declaration above is initialised: the same file is the test and the worker.
if (isMainThread) await mainThread();
// A worker always has its parent's port.
else await workerMain(workerData as Job, parentPort!);
