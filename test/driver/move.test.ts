// Moving blocks (Writer.moveBlocks, src/driver/writer.ts): the one operation compact and resize
// stand on. The disk must read the same after a crash at every write and flush of a sequence of
// moves (payload blocks to the end of the file and into free places, among them another block's
// claim; on a differencing disk also sector bitmap blocks, with bits changed in memory since the
// last commit), and a read or write racing a move must see the block's bytes, not what later
// takes its old place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, VhdxError, createImage, type BlockMove, type WritableSource } from '../../src/index.js';
import type { CrashImageOptions, FaultySource } from '../../src/testing.js';
import { planLayout, writeNewImage } from '../../src/driver/layout.js';
import { checkInvariants } from '../helpers/invariants.js';
import { bytesEqual, crashCheck, pattern, type SparseModel } from '../helpers/model.js';
import { ops, runWorkload, type Op } from '../helpers/workload.js';
import { makeBase, makeChild } from '../helpers/chain.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const B = (n: number): number => n * MiB;

/** The place block `block` holds now (its data extent's file offset). */
async function placeOf(img: VhdxImage, block: number): Promise<number> {
  const [x] = await img.blockStatus(block * img.blockSize, 1);
  assert.equal(x?.type, 'data', `block ${block} holds data`);
  return x.fileOffset ?? assert.fail(`block ${block}'s data extent has no file offset`);
}

// A dynamic disk whose last block is short. Moves to the end, several sharing one log entry;
// into free places: another block's claim (an UNMAPPED block's kept place, dropped in the same
// log entry) and places earlier moves left; a moved block written and moved again; an
// allocation that reuses a place a move left.
const SIZE = B(12) + 64 * KiB;
let claimed = -1;
const PLAIN = ops(({ w, zero, discard, move, flush, close }) => [
  w(0, 3 * MiB),
  w(B(5) + 100, 5000),
  w(B(12), 64 * KiB),
  flush,
  move(async (img) => {
    claimed = await placeOf(img, 1);
    return [
      { kind: 'payload', index: 0, to: 'end' },
      { kind: 'payload', index: 2, to: 'end' },
      { kind: 'payload', index: 12, to: 'end' },
    ];
  }),
  discard(B(1), MiB), // UNMAPPED, keeping its place: a claim
  zero(B(5), MiB), // its place unowned
  flush,
  move(async (img) => {
    const free = await img.freePlaces();
    assert.ok(free.includes(claimed), `block 1's claim ${claimed} is free (${free})`);
    const other = free.find((at) => at !== claimed);
    assert.ok(other !== undefined, `a free place besides the claim (${free})`);
    return [
      { kind: 'payload', index: 0, to: claimed },
      { kind: 'payload', index: 12, to: other },
    ];
  }),
  w(7, 100),
  move([{ kind: 'payload', index: 0, to: 'end' }]),
  w(B(3), 4 * KiB), // a new block: takes a place a move left
  // As compact will: the blocks last in the file into the lowest free places, in one call, so
  // that close cuts off the places they leave (and nothing stays leaked).
  move(async (img) => {
    const free = await img.freePlaces();
    const placed: [at: number, block: number][] = [];
    for (let b = 0; b * MiB < img.size; b++) {
      const [x] = await img.blockStatus(b * MiB, 1);
      if (x?.type === 'data') placed.push([x.fileOffset!, b]);
    }
    placed.sort((a, b) => b[0] - a[0]);
    const moves: BlockMove[] = [];
    for (const [at, b] of placed) {
      const to = free[moves.length];
      if (to === undefined || to > at) break;
      moves.push({ kind: 'payload', index: b, to });
    }
    assert.ok(moves.length >= 2, `${moves.length} blocks to move down`);
    return moves;
  }),
  close,
]);

const CRASH_VARIANTS = (n: number): CrashImageOptions[] => [{ keep: 'none' }, { keep: 'all' }, { keep: 'random', seed: n * 7 + 1, tear: true }];

/**
 * Crash `list` at every mutating operation and check each post-crash disk: it opens read-only
 * and writable (log replayed), both read the same, every byte is what the last durable point
 * left or what a later operation put there, and the structure is sound.
 */
type Opener = (disk: FaultySource) => Promise<VhdxImage>;

async function crashEverywhere(base: Uint8Array, list: Op[], size: number, { open, openRo, model }: { open?: Opener; openRo?: Opener; model?: SparseModel } = {}) {
  const runOpts = { ...(open ? { open } : {}), ...(model ? { model } : {}) };
  const dry = await runWorkload(base, list, undefined, runOpts);
  const total = dry.disk.mutations;
  assert.ok(total > 20, `only ${total} mutating operations`);
  const ro = new Uint8Array(size);
  const rw = new Uint8Array(size);
  {
    const img = await (openRo ?? ((d) => VhdxImage.open(d)))(dry.disk.clone());
    await img.read(0, ro);
    await img.close();
    assert.equal(crashCheck(ro, 0, dry.model, []), null, 'dry run');
    assert.deepEqual(await checkInvariants(dry.disk), [], 'dry run');
  }
  const failures: string[] = [];
  let images = 0;
  for (let n = 1; n <= total && failures.length < 10; n++) {
    const run = await runWorkload(base, list, n, runOpts);
    assert.ok(run.disk.isCrashed, `crash point ${n} was not reached`);
    for (const v of CRASH_VARIANTS(n)) {
      images++;
      const label = `crash at operation ${n}/${total} (${run.disk.trace?.[n - 1]?.kind}), ${JSON.stringify(v)}`;
      const crashed = run.disk.crashImage(v);
      try {
        const a = await (openRo ?? ((d) => VhdxImage.open(d)))(crashed.clone());
        await a.read(0, ro);
        await a.close();
        const m = crashCheck(ro, 0, run.durable, run.since);
        if (m) failures.push(`${label}: ${m}`);
        const b = await (open ?? ((d) => VhdxImage.open(d, { readOnly: false })))(crashed);
        await b.read(0, rw);
        await b.close();
        if (!bytesEqual(ro, rw)) failures.push(`${label}: the writable open (replayed in place) reads differently`);
        for (const f of await checkInvariants(crashed)) failures.push(`${label}: ${f}`);
      } catch (e) {
        failures.push(`${label}: ${(e as VhdxError).reason ?? ''} ${(e as Error).stack}`);
      }
    }
  }
  assert.deepEqual(failures, [], `${failures.length} failures over ${images} crash images`);
  return { total, images };
}

test('power loss at every write and flush of a sequence of moves: a dynamic disk reads the same', async (t) => {
  const mem = new MemorySource();
  await writeNewImage(mem, planLayout({ virtualSize: SIZE, blockSize: MiB, logicalSectorSize: 512 }));
  const base = mem.bytes().slice();
  // Without a crash: the moves happened, and the image closed names all its space.
  const dry = await runWorkload(base, PLAIN, undefined);
  const img = await VhdxImage.open(dry.disk.clone());
  const st = await img.blockStatus(0, SIZE);
  assert.ok(st.some((x) => x.type === 'data' && x.offset === 0 && x.fileOffset !== planLayout({ virtualSize: SIZE, blockSize: MiB }).payloadOffset));
  await img.close();
  assert.deepEqual(await checkInvariants(dry.disk, { noLeaks: true }), [], 'closed without a crash: nothing leaked');
  const { total, images } = await crashEverywhere(base, PLAIN, SIZE);
  t.diagnostic(`${total} crash points, ${images} crash images`);
});

test('power loss at every write and flush of moves in a differencing disk: payload and sector bitmap blocks', async (t) => {
  const size = B(6);
  const { src: psrc, model: pmodel } = await makeBase({
    size,
    fill: [
      { kind: 'data', offset: 0, length: B(4) },
      { kind: 'data', offset: B(5), length: MiB },
    ],
  });
  const p = await VhdxImage.open(psrc);
  const mem = new MemorySource();
  await makeChild(p, { blockSize: MiB, src: mem });
  await p.close();
  const openParent = () => VhdxImage.open(psrc);
  const list = ops(({ w, discard, move, flush, close }) => [
    w(100, 50), // block 0 partially present: chunk 0's sector bitmap block allocated
    w(B(2), MiB), // block 2 fully present
    w(B(3) + 5000, 3000), // block 3 partially present
    flush,
    move([
      { kind: 'payload', index: 0, to: 'end' },
      { kind: 'bitmap', index: 0, to: 'end' },
      { kind: 'payload', index: 2, to: 'end' },
    ]),
    w(700, 3 * 512), // bits set in memory, in the moved bitmap block
    w(B(3) + 100, 10),
    move([
      { kind: 'bitmap', index: 0, to: 'end' }, // with pages changed since the last commit
      { kind: 'payload', index: 3, to: 'end' },
    ]),
    discard(B(2), MiB), // a claim
    flush,
    move(async (img) => [{ kind: 'payload', index: 0, to: (await img.freePlaces())[0] ?? assert.fail('no free place') }]), // a partially present block into a free place
    w(B(1) + 3, 10),
    close,
  ]);
  const open: Opener = (disk) => VhdxImage.open(disk, { readOnly: false, parent: openParent });
  const openRo: Opener = (disk) => VhdxImage.open(disk, { parent: openParent });
  const before = psrc.mutations;
  const { total, images } = await crashEverywhere(mem.bytes().slice(), list, size, { open, openRo, model: pmodel });
  assert.equal(psrc.mutations, before, 'the parent was never written');
  t.diagnostic(`${total} crash points, ${images} crash images`);
});

/**
 * A source over memory whose reads or writes touching a file range can be held: `hold(kind,
 * from, to)` holds those that start from then on until `stop()` (later ones pass), and
 * `release()` lets the held ones go; each held operation does its I/O only once released.
 */
interface Gate {
  kind: 'read' | 'write';
  from: number;
  to: number;
  open: Promise<void>;
  held: number;
  armed: boolean;
  release: () => void;
}

class HoldingSource implements WritableSource {
  readonly readOnly = false;
  gate: Gate | null = null;
  readonly reads: number[] = [];
  constructor(readonly mem: MemorySource) {}
  get size() {
    return this.mem.size;
  }
  hold(kind: Gate['kind'], from: number, to: number): Gate {
    let release = (): void => undefined;
    const open = new Promise<void>((r) => (release = r));
    this.gate = { kind, from, to, open, held: 0, armed: true, release: () => release() };
    return this.gate;
  }
  async pass(kind: Gate['kind'], offset: number, length: number): Promise<void> {
    const g = this.gate;
    if (g && g.armed && g.kind === kind && offset < g.to && offset + length > g.from) {
      g.held++;
      await g.open;
    }
  }
  async read(offset: number, into: Uint8Array): Promise<number> {
    this.reads.push(offset);
    await this.pass('read', offset, into.length);
    return this.mem.read(offset, into);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.pass('write', offset, data.length);
    return this.mem.write(offset, data);
  }
  flush(): Promise<void> {
    return this.mem.flush();
  }
  truncate(size: number): Promise<void> {
    return this.mem.truncate(size);
  }
  close(): Promise<void> {
    return this.mem.close();
  }
}

const settle = async () => {
  for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
};

async function holdingImage() {
  const mem = new MemorySource();
  await createImage(mem, { size: B(16), blockSize: MiB });
  const src = new HoldingSource(mem);
  return { src, img: await VhdxImage.open(src, { readOnly: false }) };
}

test('a read that looked a block up before it moved reads the block, not what later took its old place', async () => {
  const { src, img } = await holdingImage();
  const p0 = pattern(1, MiB);
  await img.write(0, p0);
  await img.write(B(1), pattern(2, MiB));
  await img.flush();
  const old = await placeOf(img, 0);
  // Two reads of block 0 held at the old place: one on the fast path, one across two blocks.
  const gate = src.hold('read', old, old + MiB);
  const a = new Uint8Array(4 * KiB);
  const b = new Uint8Array(8 * KiB);
  const reads = Promise.all([img.read(4 * KiB, a), img.read(MiB - 4 * KiB, b)]);
  await settle();
  assert.equal(gate.held, 2);
  gate.armed = false;
  const moved = await img.moveBlocks([{ kind: 'payload', index: 0, to: 'end' }]);
  assert.deepEqual(moved, [{ kind: 'payload', index: 0, from: old, to: moved[0]?.to }]);
  assert.notEqual(moved[0]?.to, old);
  // The old place is free: the next new block takes it and overwrites it.
  assert.ok((await img.freePlaces()).includes(old));
  await img.write(B(5), pattern(5, MiB));
  assert.equal(await placeOf(img, 5), old, 'block 5 took the place block 0 left');
  gate.release();
  await reads;
  assert.ok(bytesEqual(a, p0.subarray(4 * KiB, 8 * KiB)), 'the fast-path read returned block 0');
  assert.ok(bytesEqual(b.subarray(0, 4 * KiB), p0.subarray(MiB - 4 * KiB)), 'the two-block read returned block 0');
  await img.close();
  assert.deepEqual(await checkInvariants(src.mem, { noLeaks: true }), []);
});

test('writes into a moving block: those in flight land before the copy, those during the move go to the new place', async () => {
  const { src, img } = await holdingImage();
  const p0 = pattern(1, MiB);
  await img.write(0, p0);
  await img.flush();
  const old = await placeOf(img, 0);
  // A write held at the old place: the move must wait for it before it copies.
  const gate = src.hold('write', old, old + MiB);
  const q = pattern(7, 100);
  const w1 = img.write(100, q);
  await settle();
  assert.equal(gate.held, 1);
  gate.armed = false;
  const readsBefore = src.reads.length;
  const m1 = img.moveBlocks([{ kind: 'payload', index: 0, to: 'end' }]);
  await settle();
  assert.ok(!src.reads.slice(readsBefore).some((at) => at >= old && at < old + MiB), 'the copy waited for the write in flight');
  gate.release();
  await Promise.all([w1, m1]);
  // A move held in its copy (writes past the file's end); a write that comes meanwhile waits.
  const end = src.size;
  const gate2 = src.hold('write', end, Infinity);
  const m2 = img.moveBlocks([{ kind: 'payload', index: 0, to: 'end' }]);
  await settle();
  assert.equal(gate2.held, 1, 'the move is copying');
  gate2.armed = false;
  let w2done = false;
  const r = pattern(8, 300);
  const w2 = img.write(200, r).then(() => (w2done = true));
  await settle();
  assert.equal(w2done, false, 'the write waits for the move');
  gate2.release();
  await Promise.all([m2, w2]);
  const want = p0.slice();
  want.set(q, 100);
  want.set(r, 200);
  const got = new Uint8Array(MiB);
  await img.read(0, got);
  assert.ok(bytesEqual(got, want), 'block 0 holds both writes');
  const now = await placeOf(img, 0);
  assert.ok(now >= end, 'block 0 is in the place the second move gave it');
  const raw = new Uint8Array(300);
  await src.mem.read(now + 200, raw);
  assert.ok(bytesEqual(raw, r), 'the write during the move landed in the new place');
  await img.close();
  assert.deepEqual(await checkInvariants(src.mem), []);
});

test('moveBlocks refuses what it cannot do before it changes anything', async () => {
  const { src, img } = await holdingImage();
  await img.write(0, pattern(1, 4 * KiB));
  await img.flush();
  const size = src.size;
  const refuse = async (moves: BlockMove[], re: RegExp): Promise<void> =>
    assert.rejects(img.moveBlocks(moves), (e: VhdxError) => {
      assert.ok(e instanceof VhdxError && e.reason === 'BAD_ARGUMENT', `${e.reason}: ${e.message}`);
      assert.match(e.message, re);
      return true;
    });
  await refuse([{ kind: 'payload', index: 16, to: 'end' }], /no such block/);
  await refuse([{ kind: 'bitmap', index: 0, to: 'end' }], /no such block/); // not a differencing disk
  await refuse([{ kind: 'payload', index: 0, to: MiB + 1 }], /1 MiB multiple/);
  await refuse(
    [
      { kind: 'payload', index: 0, to: 'end' },
      { kind: 'payload', index: 0, to: 'end' },
    ],
    /named twice/,
  );
  await refuse([{ kind: 'payload', index: 0, to: 64 * MiB }], /not a free place/);
  assert.equal(src.size, size, 'nothing grew');
  // A block with nothing to move is left out.
  assert.deepEqual(await img.moveBlocks([{ kind: 'payload', index: 3, to: 'end' }]), []);
  await img.close();
  assert.deepEqual(await checkInvariants(src.mem), []);
});
