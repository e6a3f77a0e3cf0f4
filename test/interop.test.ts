// Interop matrix against QEMU: images made and written by qemu-img / qemu-io must read through
// openFile exactly as qemu-img convert reads them, and our block status must agree with what
// qemu found. Skips visibly when qemu-img or qemu-io is missing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open as openFh, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openFile, type Extent } from '../src/node.js';
import { cliPath, needTool } from './helpers/env.js';
import { contentModel, must, shmScratch, vhdx, type ByteOp, type MapEntry } from './helpers/tools.js';

const K = 1024;
const M = K * K;
const G = K * M;
const CHUNK = 8 * M;
const IN_FLIGHT = 4;

const qemuMissing = needTool('qemu-img', 'qemu-io');

// ---- operations and the model of what the disk must hold after them ----

/** One operation qemu-io applies to the disk. */
type Op = ByteOp;
/** A range [start, end) of the virtual disk. */
type Range = { start: number; end: number };
/** Reads a disk's bytes: an image or a raw file. */
type Reader = { read(offset: number, into: Uint8Array): Promise<unknown> };

const W = (pattern: number, offset: number, length: number): Op => ({ op: 'write', pattern, offset, length });
const Z = (offset: number, length: number): Op => ({ op: 'zero', offset, length });
const D = (offset: number, length: number): Op => ({ op: 'discard', offset, length });

function qemuIoCommand(o: Op): string {
  if (o.op === 'write') return `write -P 0x${o.pattern.toString(16).padStart(2, '0')} ${o.offset} ${o.length}`;
  if (o.op === 'zero') return `write -z ${o.offset} ${o.length}`;
  return `discard ${o.offset} ${o.length}`;
}

/** The usual mix: unaligned writes, a write straddling blocks, zeroes, a discard, the disk's end. */
function standardOps(size: number, bs: number): Op[] {
  const ops = [
    W(0x11, 0, 4096), // first sector(s)
    W(0x22, bs - 1000, 3000), // unaligned, straddles the first block boundary
    W(0x33, bs + 12345, 777), // unaligned, inside a block
  ];
  if (bs <= 32 * M && size >= 3 * bs + 4096) {
    ops.push(W(0x44, 2 * bs - 512, bs + 1024)); // a whole block plus a sector on each side
    ops.push(Z(2 * bs + 4096, 8192)); // zeroes over written data
    ops.push(D(2 * bs + 64 * K, 64 * K)); // discard over written data
  }
  ops.push(Z(bs - 512, 1024)); // zeroes across the boundary, over written data
  ops.push(W(0x55, size - 512, 512)); // the very last sector
  ops.push(W(0x66, size - 4096 - 333, 1000)); // unaligned, near the end
  ops.push(Z(size - 4096, 100)); // unaligned zeroes near the end
  return ops;
}

const GiB4 = 4 * G;
/** One image qemu makes and writes: its subformat, geometry and operations (standardOps when absent). */
interface Case {
  subformat: 'dynamic' | 'fixed';
  blockSize: number;
  size: number;
  blockStateZero?: false;
  ops?: Op[];
}
const CASES: Case[] = [
  { subformat: 'dynamic', blockSize: 1 * M, size: 12 * M },
  { subformat: 'fixed', blockSize: 1 * M, size: 12 * M },
  { subformat: 'dynamic', blockSize: 2 * M, size: 5 * M + 512 },
  { subformat: 'fixed', blockSize: 2 * M, size: 5 * M + 512 },
  { subformat: 'dynamic', blockSize: 2 * M, size: 9 * M, blockStateZero: false },
  { subformat: 'dynamic', blockSize: 8 * M, size: 40 * M },
  { subformat: 'fixed', blockSize: 8 * M, size: 24 * M + 4096, blockStateZero: false },
  { subformat: 'dynamic', blockSize: 32 * M, size: 100 * M + 3 * 512 },
  { subformat: 'fixed', blockSize: 32 * M, size: 100 * M + 3 * 512 },
  { subformat: 'dynamic', blockSize: 256 * M, size: 600 * M },
  { subformat: 'fixed', blockSize: 256 * M, size: 300 * M + 512, blockStateZero: false },
  {
    // 4 GiB + 64 MiB with 1 MiB blocks: 4096 blocks per chunk, so the BAT's sector bitmap entry
    // sits between block 4095 and block 4096. Data on both sides of the 4 GiB boundary.
    subformat: 'dynamic',
    blockSize: 1 * M,
    size: GiB4 + 64 * M,
    blockStateZero: false,
    ops: [
      W(0x11, 0, 4096),
      W(0x21, GiB4 - M - 512, 2 * M + 1024), // blocks 4094..4097
      W(0x31, GiB4 - 512, 1024), // straddles 4 GiB exactly
      W(0x41, GiB4 + M + 77, 5000),
      Z(GiB4 - 4096, 2048),
      D(GiB4 + 512 * K, 64 * K),
      W(0x51, GiB4 + 64 * M - 512, 512), // the very last sector
    ],
  },
  {
    // Same geometry, BAT states ZERO (qemu's default), and the chunk boundary crossed in one write.
    subformat: 'dynamic',
    blockSize: 1 * M,
    size: GiB4 + 3 * M,
    ops: [W(0x61, GiB4 - 1000, 3000), W(0x62, GiB4 + 3 * M - 1024, 1024)],
  },
];

function caseName(c: Case): string {
  const mib = (n: number): string => (n % M === 0 ? `${n / M}M` : `${Math.floor(n / M)}M+${n % M}`);
  return `${c.subformat} block_size=${mib(c.blockSize)} size=${mib(c.size)}${c.blockStateZero === false ? ' block_state_zero=off' : ''}`;
}

// ---- reading and comparing whole disks, sparse-aware ----

const ZERO = new Uint8Array(CHUNK);
const patternBufs = new Map<number, Uint8Array>();
function filled(value: number): Uint8Array {
  if (value === 0) return ZERO;
  let b = patternBufs.get(value);
  if (!b) patternBufs.set(value, (b = new Uint8Array(CHUNK).fill(value)));
  return b;
}
function allEqual(bytes: Uint8Array, value: number): boolean {
  return Buffer.compare(bytes, filled(value).subarray(0, bytes.length)) === 0;
}
function firstDiff(bytes: Uint8Array, value: number): number {
  let i = 0;
  while (i < bytes.length && bytes[i] === value) i++;
  return i;
}

/** One chunk's digest: "0" for an all-zero chunk (cheap on sparse disks), else its SHA-256. */
function chunkDigest(bytes: Uint8Array): string {
  return allEqual(bytes, 0) ? '0' : createHash('sha256').update(bytes).digest('hex');
}
/** A SHA-256 over the chunk digests: equal exactly when the byte streams are equal. */
function combine(digests: readonly string[]): string {
  return createHash('sha256').update(digests.join('\n')).digest('hex');
}

/** Readers of [offset, offset + into.length) of a raw file. */
async function rawReader(path: string): Promise<Reader & { close(): Promise<void> }> {
  const fh = await openFh(path, 'r');
  return {
    async read(offset: number, into: Uint8Array) {
      let got = 0;
      while (got < into.length) {
        const { bytesRead } = await fh.read(into, got, into.length - got, offset + got);
        if (bytesRead === 0) throw new Error(`${path}: unexpected end of file at ${offset + got}`);
        got += bytesRead;
      }
    },
    close: () => fh.close(),
  };
}

/**
 * Read every source chunk by chunk (IN_FLIGHT chunks at a time, buffers reused), giving each
 * chunk to `check(offset, buffers)`, and return the per-source chunk digests.
 */
async function scan(size: number, sources: readonly Reader[], check: (offset: number, buffers: Uint8Array[]) => void): Promise<string[][]> {
  const digests = sources.map((): string[] => []);
  const chunks = Math.ceil(size / CHUNK);
  const pool = Array.from({ length: IN_FLIGHT }, () => sources.map(() => new Uint8Array(CHUNK)));
  const readChunk = async (i: number) => {
    const o = i * CHUNK;
    const len = Math.min(CHUNK, size - o);
    const bufs = pool[i % IN_FLIGHT]!.map((b) => b.subarray(0, len));
    await Promise.all(sources.map((s, k) => s.read(o, bufs[k]!)));
    return { i, o, bufs };
  };
  const pending: ReturnType<typeof readChunk>[] = [];
  let next = 0;
  while (next < chunks && pending.length < IN_FLIGHT) pending.push(readChunk(next++));
  while (pending.length) {
    const { i, o, bufs } = await pending.shift()!;
    check(o, bufs);
    bufs.forEach((b, k) => (digests[k]![i] = chunkDigest(b)));
    if (next < chunks) pending.push(readChunk(next++));
  }
  return digests;
}

/** Parts of [a, b) not covered by the sorted, disjoint ranges. */
function uncovered(a: number, b: number, ranges: readonly Range[]): [number, number][] {
  const out: [number, number][] = [];
  let pos = a;
  for (const r of ranges) {
    if (r.end <= pos) continue;
    if (r.start >= b) break;
    if (r.start > pos) out.push([pos, r.start]);
    pos = Math.max(pos, r.end);
    if (pos >= b) break;
  }
  if (pos < b) out.push([pos, b]);
  return out;
}

// ---- the matrix ----

// In RAM when /dev/shm exists: sparse multi-GiB raw files cost nothing there.
const dir = qemuMissing ? '' : shmScratch('vhdx-interop-');
const haveCli = existsSync(cliPath);

test('interop: 4096-byte logical sectors', { skip: 'qemu-img cannot create VHDX images with 4096-byte logical sectors (it has no such option)' }, () => {});

for (const [n, c] of CASES.entries()) {
  test(`interop: qemu ${caseName(c)}`, { skip: qemuMissing ? `${qemuMissing}: interop matrix not run` : false }, async (t) => {
    const img = join(dir, `case${n}.vhdx`);
    const qemuRaw = join(dir, `case${n}.qemu.raw`);
    const oursRaw = join(dir, `case${n}.ours.raw`);
    const ops = c.ops ?? standardOps(c.size, c.blockSize);
    t.after(() => Promise.all([img, qemuRaw, oursRaw].map((p) => rm(p, { force: true }))));

    const o = [`subformat=${c.subformat}`, `block_size=${c.blockSize}`];
    if (c.blockStateZero === false) o.push('block_state_zero=off');
    await must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', o.join(','), img, String(c.size)]);
    await must('qemu-io', ['-f', 'vhdx', ...ops.flatMap((op) => ['-c', qemuIoCommand(op)]), img]);
    await must('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', img, qemuRaw]);
    assert.equal((await stat(qemuRaw)).size, c.size, 'qemu-img convert output has the virtual size');

    const image = await openFile(img);
    const qemu = await rawReader(qemuRaw);
    // Per-chunk digests of qemu's raw copy, from the openFile pass, for the CLI comparison.
    let qemuDigests: string[] | null = null;
    try {
      let extents: Extent[] | undefined;
      let dataRanges: Range[] | undefined;
      const expected = contentModel(c.size, ops, -1);

      await t.test('geometry, block status and allocation', async () => {
        assert.equal(image.size, c.size, 'virtual size');
        assert.equal(image.layout.blockSize, c.blockSize, 'block size');
        assert.equal(image.layout.type, c.subformat, 'disk type');
        assert.equal(image.layout.logicalSectorSize, 512);
        assert.equal(image.layout.log.dirty, false, 'qemu leaves the log clean');

        // Extents tile the disk, in order.
        extents = await image.blockStatus(0, image.size);
        let pos = 0;
        for (const x of extents) {
          assert.equal(x.offset, pos, `extent at ${x.offset} should start at ${pos}`);
          assert.ok(x.length > 0 && ['data', 'zero', 'unallocated'].includes(x.type), JSON.stringify(x));
          if (x.type === 'data') assert.ok(x.fileOffset !== undefined && x.fileOffset >= M && x.fileOffset % 512 === 0, `data extent file offset ${x.fileOffset}`);
          pos += x.length;
        }
        assert.equal(pos, image.size, 'extents end at the virtual size');
        dataRanges = extents.filter((x) => x.type === 'data').map((x) => ({ start: x.offset, end: x.offset + x.length }));
        const stats = await image.allocationStats();
        assert.equal(Object.values(stats.bytesByState).reduce((a, b) => a + b, 0), c.size, 'allocationStats bytes sum to the virtual size');
        assert.equal(stats.bytesByState.fullyPresent ?? 0, dataRanges.reduce((a, r) => a + r.end - r.start, 0), 'fully present bytes equal data extents');

        // Every block the model says holds non-zero bytes must be data.
        for (const s of expected.filter((x) => x.value > 0)) {
          assert.deepEqual(uncovered(s.start, s.end, dataRanges), [], `bytes 0x${s.value.toString(16)} at ${s.start}..${s.end} lie in data extents`);
        }
      });

      await t.test('openFile reads what qemu-img convert reads', { skip: !extents && 'no block status' }, async () => {
        // One pass: digests of both, the model's expected bytes, and zero/unallocated extents.
        // (The skip above leaves extents set here.)
        const holes = extents!.filter((x) => x.type !== 'data').map((x) => ({ start: x.offset, end: x.offset + x.length }));
        let segIndex = 0;
        let holeIndex = 0;
        const [ourDigests, theirDigests] = await scan(c.size, [image, qemu], (off, bufs) => {
          const [ours, theirs] = [bufs[0]!, bufs[1]!];
          const end = off + ours.length;
          while (expected[segIndex]!.end <= off) segIndex++;
          for (let k = segIndex; k < expected.length && expected[k]!.start < end; k++) {
            const s = expected[k]!;
            if (s.value < 0) continue;
            const a = Math.max(s.start, off) - off;
            const b = Math.min(s.end, end) - off;
            for (const [who, buf] of [
              ['we', ours],
              ['qemu', theirs],
            ] as const) {
              const part = buf.subarray(a, b);
              if (!allEqual(part, s.value)) {
                const i = firstDiff(part, s.value);
                assert.fail(`${who} read 0x${part[i]!.toString(16)} at ${off + a + i}, expected 0x${s.value.toString(16)}`);
              }
            }
          }
          while (holeIndex < holes.length && holes[holeIndex]!.end <= off) holeIndex++;
          for (let k = holeIndex; k < holes.length && holes[k]!.start < end; k++) {
            const hole = holes[k]!;
            const a = Math.max(hole.start, off) - off;
            const b = Math.min(hole.end, end) - off;
            assert.ok(allEqual(ours.subarray(a, b), 0), `we read non-zero bytes in a zero/unallocated extent at ${off + a}..${off + b}`);
            assert.ok(allEqual(theirs.subarray(a, b), 0), `qemu reads non-zero bytes where we report no data, at ${off + a}..${off + b}`);
          }
        });
        // (scan gives one digest list per source.)
        qemuDigests = theirDigests!;
        await assertSameDigests(ourDigests!, theirDigests!, 'openFile', 'qemu-img convert', image, qemu, c.size);
      });

      await t.test('block status agrees with qemu-img map', { skip: !extents && 'no block status' }, async () => {
        // QEMU's VHDX driver has no block-status callback, so its map of the image calls the
        // whole disk data; it must at least cover exactly our virtual size. Its map of the raw copy
        // it converted to (sparse where it found zeros) says where qemu found data: any part of
        // that which we report as zero or unallocated must hold only zeros in qemu's copy.
        const vmap: MapEntry[] = JSON.parse(await must('qemu-img', ['map', '--output=json', '-f', 'vhdx', img]));
        let at = 0;
        for (const r of vmap) {
          assert.equal(r.start, at, 'qemu map ranges are contiguous');
          at += r.length;
          if (r.data === false || r.zero === true) {
            // Only a qemu that knows VHDX block states says this: such ranges must read as zeros for us.
            assert.ok(await rangeIsZero(image, r.start, r.start + r.length), `qemu calls ${r.start}..${r.start + r.length} zero but we read data there`);
          }
        }
        assert.equal(at, c.size, 'qemu map of the image covers the virtual size');
        const rmap: MapEntry[] = JSON.parse(await must('qemu-img', ['map', '--output=json', '-f', 'raw', qemuRaw]));
        const qemuData = rmap.filter((x) => x.data);
        assert.ok(qemuData.length > 0, 'qemu found the written data');
        for (const r of qemuData) {
          for (const [a, b] of uncovered(r.start, r.start + r.length, dataRanges!)) {
            // (The extents tile the disk: one holds a.)
            const type = extents!.find((x) => x.offset <= a && x.offset + x.length > a)!.type;
            assert.ok(await rangeIsZero(qemu, a, b), `qemu found data at ${a}..${b}, which we report as ${type}`);
          }
        }
      });

      await t.test('vhdx convert -O raw equals qemu-img convert', { skip: haveCli ? false : 'bin/vhdx.cjs not present yet' }, async () => {
        const r = await vhdx(['convert', '-O', 'raw', img, oursRaw]);
        assert.equal(r.code, 0, `vhdx convert failed: ${r.stderr}`);
        assert.equal((await stat(oursRaw)).size, c.size, 'vhdx convert output has the virtual size');
        const cli = await rawReader(oursRaw);
        try {
          const [cliDigests, theirDigests] = qemuDigests ? [(await scan(c.size, [cli], () => {}))[0], qemuDigests] : await scan(c.size, [cli, qemu], () => {});
          await assertSameDigests(cliDigests!, theirDigests!, 'vhdx convert', 'qemu-img convert', cli, qemu, c.size);
        } finally {
          await cli.close();
        }
      });
    } finally {
      await image.close();
      await qemu.close();
    }
  });
}

/** Equal digest lists, or a failure naming the first differing byte (read again from `ra`, `rb`). */
async function assertSameDigests(a: readonly string[], b: readonly string[], nameA: string, nameB: string, ra: Reader, rb: Reader, size: number): Promise<void> {
  assert.equal(a.length, b.length);
  if (combine(a) === combine(b)) return;
  const i = a.findIndex((x, j) => x !== b[j]);
  const o = i * CHUNK;
  const len = Math.min(CHUNK, size - o);
  const [x, y] = [new Uint8Array(len), new Uint8Array(len)];
  await Promise.all([ra.read(o, x), rb.read(o, y)]);
  let k = 0;
  while (k < len && x[k] === y[k]) k++;
  let n = k;
  while (n < len && x[n] !== y[n]) n++;
  assert.fail(`${nameA} and ${nameB} differ first at virtual offset ${o + k} (for ${n - k} bytes there): 0x${x[k]?.toString(16)} against 0x${y[k]?.toString(16)}`);
}

/** True when [a, b) of the reader holds only zeros; read in chunks. */
async function rangeIsZero(reader: Reader, a: number, b: number): Promise<boolean> {
  const buf = new Uint8Array(CHUNK);
  for (let o = a; o < b; o += CHUNK) {
    const part = buf.subarray(0, Math.min(CHUNK, b - o));
    await reader.read(o, part);
    if (!allEqual(part, 0)) return false;
  }
  return true;
}
