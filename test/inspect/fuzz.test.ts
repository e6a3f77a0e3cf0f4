// Seeded fuzzing of the partition-table readers and the recognition drivers: mutated GPTs
// (CRCs recomputed most of the time, so the checks behind them are reached), MBRs with EBR
// chains, and filesystem headers inside the partitions. readPartitions, inspectDisk and
// usedRuns may only report findings or throw VhdxError; the device refuses any read larger
// than MAX_READ (a buffer sized by an unchecked number) or outside the disk, and the used runs
// must stay ascending and inside the disk. Each run is in a worker thread watched for hangs.
// Longer hunts: VHDX_FUZZ_SCALE=20.
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { buildGpt as BuildGpt, resealGptHeader as ResealGptHeader } from '../helpers/disk.js';
import type { crc32 as Crc32 } from '../../src/codec/crc32.js';

const MAX_READ = 2 * 1024 * 1024;
const WATCHDOG_MS = 30000;
const SCALE = Number(process.env.VHDX_FUZZ_SCALE ?? 1);
/** One fuzz run: its seed, how many cases, and the seed disk (see seedImage). */
interface Spec {
  name: string;
  seed: number;
  cases: number;
  image: 'gpt512' | 'gpt4k' | 'mbr';
}

/** What a worker posts: a case begins, a case failed, or the run is done. */
type Message =
  | { type: 'case'; case: number }
  | { type: 'fail'; case: number; what: string; mutations: string[] }
  | { type: 'done'; cases: number; reasons: Record<string, number>; withPartitions: number };

const RUNS: Spec[] = [
  { name: 'GPT, 512-byte sectors, with swap and LVM2 headers in its partitions', seed: 0x1a5e0001, cases: 600, image: 'gpt512' },
  { name: 'GPT, 4096-byte sectors', seed: 0x1a5e0002, cases: 250, image: 'gpt4k' },
  { name: 'MBR with an extended partition and a chain of 4 EBRs', seed: 0x1a5e0003, cases: 600, image: 'mbr' },
];

function rngFor(seed: number, caseIndex: number) {
  let s = (seed ^ Math.imul(caseIndex + 1, 0x9e3779b9)) >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  next.int = (n: number): number => Math.floor(next() * n);
  next.pick = <T>(a: readonly T[]): T => a[next.int(a.length)]!;
  return next;
}

if (isMainThread) {
  const { test } = await import('node:test');
  for (const spec of RUNS) {
    const cases = Math.max(1, Math.round(spec.cases * SCALE));
    test(`inspect fuzz seed 0x${spec.seed.toString(16)}: ${cases} cases, ${spec.name}`, { timeout: 10 * 60 * 1000 }, async () => {
      const r = await new Promise<{ failures: string[]; done: Extract<Message, { type: 'done' }> | null }>((resolve) => {
        const failures: string[] = [];
        let done: Extract<Message, { type: 'done' }> | null = null;
        let last = -1;
        const w = new Worker(fileURLToPath(import.meta.url), { workerData: { ...spec, cases }, resourceLimits: { maxOldGenerationSizeMb: 256 } });
        let timer: NodeJS.Timeout | undefined;
        const arm = () => {
          clearTimeout(timer);
          timer = setTimeout(() => {
            failures.push(`no progress for ${WATCHDOG_MS} ms: hang in case ${last}`);
            w.terminate();
          }, WATCHDOG_MS);
        };
        arm();
        w.on('message', (m: Message) => {
          if (m.type === 'case') {
            last = m.case;
            arm();
          } else if (m.type === 'fail') failures.push(`case ${m.case}: ${m.what}\n  mutations: ${m.mutations.join('; ')}`);
          else done = m;
        });
        w.on('error', (e: Error) => failures.push(`worker died in case ${last}: ${e?.stack ?? e}`));
        w.on('exit', () => {
          clearTimeout(timer);
          resolve({ failures, done });
        });
      });
      assert.deepEqual(r.failures.slice(0, 5), []);
      assert.equal(r.done?.cases, cases);
      // The mutations must reach past the first checks: several reasons, and tables still read.
      assert.ok(r.done, 'the worker finished');
      assert.ok(Object.keys(r.done.reasons).length >= 4, `only these findings were provoked: ${JSON.stringify(r.done.reasons)}`);
      assert.ok(r.done.withPartitions >= cases * 0.2, `only ${r.done.withPartitions} of ${cases} cases read any partition`);
    });
  }
} else {
  await worker(workerData as Spec);
}

/** Post a message to the test in the main thread. */
function post(m: Message): void {
  parentPort!.postMessage(m);
}

async function worker(spec: Spec): Promise<void> {
  const { MemorySource, RawDevice, VhdxError, readPartitions, inspectDisk, usedRuns } = await import('../../src/index.js');
  const { crc32 } = await import('../../src/codec/crc32.js');
  const { buildGpt, resealGptHeader, MiB } = await import('../helpers/disk.js');
  const sectorSize = spec.image === 'gpt4k' ? 4096 : 512;
  const { bytes: seed, fields, reseal } = seedImage(spec.image, { buildGpt, resealGptHeader, crc32, MiB });
  const reasons: Record<string, number> = {};
  let withPartitions = 0;

  class GuardedDevice extends RawDevice {
    override async read(offset: number, into: Uint8Array): Promise<void> {
      if (into.length > MAX_READ) throw new Error(`GUARD: read of ${into.length} bytes at ${offset}`);
      if (!Number.isSafeInteger(offset) || offset < 0 || offset + into.length > this.size) throw new Error(`GUARD: read at ${offset}+${into.length} outside the disk`);
      return super.read(offset, into);
    }
  }

  for (let c = 0; c < spec.cases; c++) {
    post({ type: 'case', case: c });
    const rng = rngFor(spec.seed, c);
    const b = seed.slice();
    const mutations: string[] = [];
    const n = 1 + rng.int(4);
    for (let k = 0; k < n; k++) {
      if (rng() < 0.1) {
        const at = rng.int(b.length);
        b[at]! ^= 1 << rng.int(8);
        mutations.push(`bit at ${at}`);
        continue;
      }
      const [at, width] = rng.pick(fields);
      const dv = new DataView(b.buffer);
      const v = rng.pick([0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff, 0xffffffff, rng.int(2 ** 32), rng.int(b.length / sectorSize), rng.int(64)]);
      if (width === 1) b[at] = v & 0xff;
      else if (width === 2) dv.setUint16(at, v & 0xffff, true);
      else if (width === 4) dv.setUint32(at, v >>> 0, true);
      else dv.setBigUint64(at, rng() < 0.3 ? BigInt.asUintN(64, BigInt(v) << BigInt(rng.int(60))) : BigInt(v), true);
      mutations.push(`${width}-byte field at ${at} = ${v}`);
    }
    if (rng() < 0.8) reseal(b);
    const dev = new GuardedDevice(new MemorySource(b, { readOnly: true }), { logicalSectorSize: sectorSize });
    try {
      const t = await readPartitions(dev);
      for (const f of t.findings) reasons[f.reason] = (reasons[f.reason] ?? 0) + 1;
      if (t.partitions.length > 0 && t.scheme !== 'none') withPartitions++;
      await inspectDisk(dev);
      let end = -1;
      for await (const r of usedRuns(dev, { table: t })) {
        if (!(r.start > end && r.length > 0 && r.start + r.length <= dev.size)) throw new Error(`GUARD: bad used run ${JSON.stringify(r)} after ${end}`);
        end = r.start + r.length;
      }
    } catch (e) {
      if (!(e instanceof VhdxError)) post({ type: 'fail', case: c, what: e instanceof Error ? (e.stack ?? String(e)) : String(e), mutations });
      else reasons[`thrown ${e.reason}`] = (reasons[`thrown ${e.reason}`] ?? 0) + 1;
    }
  }
  post({ type: 'done', cases: spec.cases, reasons, withPartitions });
}

/** The seed disk, the fields worth mutating ([offset, width]) and how to recompute its checksums. */
function seedImage(
  kind: Spec['image'],
  { buildGpt, resealGptHeader, crc32, MiB }: { buildGpt: typeof BuildGpt; resealGptHeader: typeof ResealGptHeader; crc32: typeof Crc32; MiB: number },
): { bytes: Uint8Array; fields: [number, number][]; reseal: (b: Uint8Array) => void } {
  const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';
  const SWAP = '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f';
  if (kind === 'gpt512' || kind === 'gpt4k') {
    const ss = kind === 'gpt4k' ? 4096 : 512;
    const sectors = (8 * MiB) / ss;
    const per = MiB / ss;
    const bytes = buildGpt({
      sectorSize: ss,
      sectors,
      entryCount: kind === 'gpt4k' ? 32 : 128,
      partitions: [
        { type: SWAP, first: per, last: 3 * per - 1, name: 'swap' },
        { type: LINUX, first: 3 * per, last: 5 * per - 1, name: 'lvm' },
        { type: LINUX, first: 5 * per, last: 7 * per - 1, name: 'data' },
      ],
    });
    // A swap header in partition 1, an LVM2 label in partition 2.
    const swapAt = MiB;
    bytes.set(new TextEncoder().encode('SWAPSPACE2'), swapAt + 4096 - 10);
    const sdv = new DataView(bytes.buffer, swapAt);
    sdv.setUint32(1024, 1, true);
    sdv.setUint32(1028, 511, true);
    const lvmAt = 3 * MiB + 512;
    bytes.set(new TextEncoder().encode('LABELONE'), lvmAt);
    new DataView(bytes.buffer, lvmAt).setBigUint64(8, 1n, true);
    new DataView(bytes.buffer, lvmAt).setUint32(20, 32, true);
    bytes.set(new TextEncoder().encode('LVM2 001'), lvmAt + 24);
    bytes.set(new TextEncoder().encode('0123456789abcdefghijABCDEFGHIJ01'), lvmAt + 32);
    const lastLba = sectors - 1;
    const arrayBytes = (kind === 'gpt4k' ? 32 : 128) * 128;
    const backupArray = (lastLba - Math.ceil(arrayBytes / ss)) * ss;
    const fields: [number, number][] = [];
    for (const h of [ss, lastLba * ss]) for (const [at, w] of [[8, 4], [12, 4], [16, 4], [24, 8], [32, 8], [40, 8], [48, 8], [72, 8], [80, 4], [84, 4], [88, 4]] as const) fields.push([h + at, w]);
    for (const a of [2 * ss, backupArray]) for (let e = 0; e < 4; e++) for (const [at, w] of [[0, 4], [32, 8], [40, 8], [48, 8]] as const) fields.push([a + e * 128 + at, w]);
    for (let e = 0; e < 4; e++) for (const [at, w] of [[0, 1], [4, 1], [8, 4], [12, 4]] as const) fields.push([446 + e * 16 + at, w]);
    fields.push([swapAt + 1024, 4], [swapAt + 1028, 4], [lvmAt + 8, 8], [lvmAt + 20, 4], [lvmAt + 64, 8]);
    const reseal = (b: Uint8Array): void => {
      for (const [h, a] of [[ss, 2 * ss], [lastLba * ss, backupArray]] as const) {
        const hd = b.subarray(h, h + ss);
        const dv = new DataView(hd.buffer, hd.byteOffset);
        const count = dv.getUint32(80, true);
        const size = dv.getUint32(84, true);
        if (count * size > 0 && count * size <= 64 * 1024 && a + count * size <= b.length) dv.setUint32(88, crc32(b.subarray(a, a + count * size)), true);
        if (dv.getUint32(12, true) <= ss) resealGptHeader(hd);
      }
    };
    return { bytes, fields, reseal };
  }
  // MBR: 1 primary, 1 extended (LBA 4096..16383) holding 4 logical partitions, one EBR each.
  const bytes = new Uint8Array(8 * MiB);
  const dv = new DataView(bytes.buffer);
  const entry = (sectorAt: number, slot: number, type: number, first: number, count: number): void => {
    const at = sectorAt + 446 + slot * 16;
    bytes[at + 4] = type;
    dv.setUint32(at + 8, first, true);
    dv.setUint32(at + 12, count, true);
    bytes[sectorAt + 510] = 0x55;
    bytes[sectorAt + 511] = 0xaa;
  };
  entry(0, 0, 0x83, 2048, 2048);
  entry(0, 1, 0x05, 4096, 12288);
  const fields: [number, number][] = [];
  for (let e = 0; e < 4; e++) for (const [at, w] of [[0, 1], [4, 1], [8, 4], [12, 4]] as const) fields.push([446 + e * 16 + at, w]);
  for (let k = 0; k < 4; k++) {
    const ebr = 4096 + k * 3072;
    entry(ebr * 512, 0, 0x83, 2048, 1024);
    if (k < 3) entry(ebr * 512, 1, 0x05, (k + 1) * 3072, 3072);
    for (let e = 0; e < 2; e++) for (const [at, w] of [[4, 1], [8, 4], [12, 4]] as const) fields.push([ebr * 512 + 446 + e * 16 + at, w]);
    fields.push([ebr * 512 + 510, 2]);
  }
  return { bytes, fields, reseal: () => {} };
}
