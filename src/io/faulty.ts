/**
 * A fault-injecting source for tests: a disk with a volatile write cache that can lose power.
 *
 * Model:
 * - Reads see every write issued so far (the cache).
 * - `write` and `truncate` go to the cache; they become durable at the next `flush`. Until then
 *   each is "pending": at a crash, an arbitrary (seeded) subset of the pending operations lands,
 *   in the order issued (a later surviving write still supersedes an earlier one), and at most
 *   one pending write may be torn at a 4 KiB (or 512-byte) boundary of the file: only some of
 *   its pieces land. The file's size is metadata with the same rule: a truncate is durable at the
 *   next flush (or lands at a crash like a write), and a surviving write past the end extends the
 *   file, as writing past the end of a file does.
 * - A crash happens when `crash()` is called, or when the `crashAt`-th mutating operation (write,
 *   flush or truncate, counted from 1 over the source's life) is issued. That operation is in
 *   flight when the power goes: a write or truncate joins the pending set (it may land, in part
 *   or whole, or not at all); a flush does not happen. It throws, and so does every later read,
 *   write, flush or truncate (the machine is dead). `close` always succeeds.
 * - With `writeCache: false` there is no cache: every completed operation is durable, so the
 *   source is a plain sparse memory disk that still counts, traces and can die.
 * - `crashImage(opts)` builds a post-crash disk (a new, healthy FaultySource): the durable state
 *   plus the chosen survivors. It may be called many times with different seeds.
 *
 * Storage is sparse (16 KiB pages, copy on write), so huge mostly-empty files are cheap and the
 * durable snapshot taken at each flush costs a map copy, not a data copy.
 */
import { VhdxError } from '../errors.js';
import type { RandomAccessSource } from './source.js';

const PAGE = 16 * 1024;
const TEAR_UNIT = 4096;

/** Pages shared between snapshots: whoever writes one first copies it. */
const frozen = new WeakSet<Uint8Array>();

class PageStore {
  pages = new Map<number, Uint8Array>();
  size = 0;

  read(offset: number, into: Uint8Array): number {
    if (offset >= this.size) return 0;
    const n = Math.min(into.length, this.size - offset);
    for (let done = 0; done < n; ) {
      const pos = offset + done;
      const index = Math.floor(pos / PAGE);
      const inPage = pos - index * PAGE;
      const len = Math.min(PAGE - inPage, n - done);
      const page = this.pages.get(index);
      if (page) into.set(page.subarray(inPage, inPage + len), done);
      else into.fill(0, done, done + len);
      done += len;
    }
    return n;
  }

  write(offset: number, data: Uint8Array): void {
    for (let done = 0; done < data.length; ) {
      const pos = offset + done;
      const index = Math.floor(pos / PAGE);
      const inPage = pos - index * PAGE;
      const len = Math.min(PAGE - inPage, data.length - done);
      this.writablePage(index).set(data.subarray(done, done + len), inPage);
      done += len;
    }
    if (offset + data.length > this.size) this.size = offset + data.length;
  }

  truncate(size: number): void {
    if (size < this.size) {
      // Forget whole pages past the end and zero the tail of the last one, so that growing the
      // file again reads zeros there.
      for (const index of [...this.pages.keys()]) if (index * PAGE >= size) this.pages.delete(index);
      const last = Math.floor(size / PAGE);
      if (size % PAGE !== 0 && this.pages.has(last)) this.writablePage(last).fill(0, size - last * PAGE);
    }
    this.size = size;
  }

  /** A copy sharing every page (copy on write on both sides). */
  snapshot(): PageStore {
    const s = new PageStore();
    for (const [i, p] of this.pages) {
      frozen.add(p);
      s.pages.set(i, p);
    }
    s.size = this.size;
    return s;
  }

  private writablePage(index: number): Uint8Array {
    let page = this.pages.get(index);
    if (!page) {
      page = new Uint8Array(PAGE);
      this.pages.set(index, page);
    } else if (frozen.has(page)) {
      page = page.slice();
      this.pages.set(index, page);
    }
    return page;
  }
}

/** One mutating operation, as recorded in the trace (and in the pending set). */
export interface FaultyOp {
  /** Which operation. */
  kind: 'write' | 'flush' | 'truncate';
  /** 1-based index among mutating operations (the number `crashAt` refers to). */
  index: number;
  /** write: file offset; truncate: the new size. */
  offset: number;
  /** write: a copy of the bytes written. */
  data?: Uint8Array;
}

/** Options of a new {@link FaultySource}. */
export interface FaultyOptions {
  /** Crash when the `crashAt`-th mutating operation (write, flush or truncate; from 1) is issued. */
  crashAt?: number;
  /**
   * Model a volatile write cache (the default). With `false` every operation is durable when
   * issued: nothing is pending, a crash loses nothing, and flushes cost nothing (a plain sparse
   * memory disk that still counts, traces and crashes).
   */
  writeCache?: boolean;
  /** Keep every mutating operation (with a copy of written bytes) in `trace`. */
  trace?: boolean;
  /** Refuse writes, flushes and truncates (EROFS / READ_ONLY); default false. */
  readOnly?: boolean;
}

/** Options of {@link FaultySource.crashImage}: which pending operations survive the crash. */
export interface CrashImageOptions {
  /** Seed of the choice of survivors and of the tear (default 1). */
  seed?: number;
  /** Which pending operations land: none, all, or each with probability 1/2 (default). */
  keep?: 'none' | 'all' | 'random';
  /**
   * Tear one pending write that spans several pieces of the file (`tearUnit` bytes, aligned in
   * the file): a non-empty proper subset of its pieces lands, whatever `keep` says of it. No
   * effect when no such write exists.
   */
  tear?: boolean;
  /** The atomic unit of a write, for tearing: 4096 (default) or 512, the disk's physical sector. */
  tearUnit?: number;
}

/** mulberry32: small, seedable, good enough to pick survivors. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A memory disk with a volatile write cache that can lose power at any write or flush, to test
 * crash safety (see the model at the top of src/io/faulty.ts). After a crash every operation but
 * `close` throws EIO / IO_ERROR; {@link FaultySource.crashImage} gives the disk as it would come back.
 */
export class FaultySource implements RandomAccessSource {
  /** What reads see: every operation issued. */
  private current: PageStore;
  /** The state as of the last flush. */
  private durable: PageStore;
  private pending: FaultyOp[] = [];
  private crashed = false;
  private readonly crashAt: number | undefined;
  private readonly writeCache: boolean;
  /** True when created with `readOnly`. */
  readonly readOnly: boolean;
  /** Every mutating operation issued, when created with `trace`. */
  readonly trace: FaultyOp[] | null;
  /** Counts of operations issued (the crashing one included). */
  readonly counts = { reads: 0, writes: 0, flushes: 0, truncates: 0, bytesWritten: 0 };
  /** Mutating operations issued so far: the value `crashAt` compares with. */
  mutations = 0;

  /** A disk holding `initial` (durable), or empty. */
  constructor(initial: Uint8Array | { bytes(): Uint8Array } = new Uint8Array(0), opts: FaultyOptions = {}) {
    this.current = new PageStore();
    const bytes = initial instanceof Uint8Array ? initial : initial.bytes();
    // Pages of zeros are left out: the store stays sparse.
    for (let at = 0; at < bytes.length; at += PAGE) {
      const piece = bytes.subarray(at, Math.min(bytes.length, at + PAGE));
      if (!isZero(piece)) this.current.write(at, piece);
    }
    this.current.size = bytes.length;
    this.writeCache = opts.writeCache ?? true;
    this.durable = this.writeCache ? this.current.snapshot() : this.current;
    this.crashAt = opts.crashAt;
    this.readOnly = opts.readOnly ?? false;
    this.trace = opts.trace ? [] : null;
  }

  /** Current size in bytes, as reads see it (pending operations included). */
  get size(): number {
    return this.current.size;
  }

  /** True once the power went. */
  get isCrashed(): boolean {
    return this.crashed;
  }

  /** Mutating operations issued since the last flush (what a crash may lose). */
  get pendingCount(): number {
    return this.pending.length;
  }

  /** Read what every write issued so far left at `offset`; resolves to the count read (short at the end). */
  async read(offset: number, into: Uint8Array): Promise<number> {
    this.assertAlive();
    this.counts.reads++;
    return this.current.read(offset, into);
  }

  /** Write `data` at `offset` into the cache: pending (lost or torn at a crash) until the next flush. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertWritable();
    const op: FaultyOp = { kind: 'write', index: 0, offset };
    if (this.writeCache || this.trace) op.data = data.slice();
    this.counts.writes++;
    this.counts.bytesWritten += data.length;
    this.issue(op);
    this.current.write(offset, data);
  }

  /** Set the size in bytes; pending like a write until the next flush. */
  async truncate(size: number): Promise<void> {
    this.assertWritable();
    this.counts.truncates++;
    this.issue({ kind: 'truncate', index: 0, offset: size });
    this.current.truncate(size);
  }

  /** Make every operation issued so far durable. */
  async flush(): Promise<void> {
    this.assertWritable();
    this.counts.flushes++;
    this.issue({ kind: 'flush', index: 0, offset: 0 });
    if (this.writeCache) this.durable = this.current.snapshot();
    this.pending = [];
  }

  /** Always succeeds, crashed or not; the source stays usable. */
  async close(): Promise<void> {}

  /** Lose power now: every later operation throws. */
  crash(): void {
    this.crashed = true;
  }

  /**
   * The disk after a power loss at this moment: the durable state plus the pending operations
   * `opts` lets land. Returns a new, healthy source; this one is unchanged.
   */
  crashImage(opts: CrashImageOptions = {}): FaultySource {
    const random = rng(opts.seed ?? 1);
    const keep = opts.keep ?? 'random';
    const store = this.durable.snapshot();
    const unit = opts.tearUnit ?? TEAR_UNIT;
    let torn = -1;
    if (opts.tear) {
      const candidates = this.pending.filter((op) => op.kind === 'write' && pieces(op, unit).length >= 2);
      if (candidates.length > 0) torn = candidates[Math.floor(random() * candidates.length)]!.index;
    }
    for (const op of this.pending) {
      if (op.index === torn) {
        const ps = pieces(op, unit);
        // A non-empty proper subset of the pieces.
        let mask = ps.map(() => random() < 0.5);
        if (mask.every((m) => m) || mask.every((m) => !m)) {
          const k = Math.floor(random() * ps.length);
          const land = !mask[k];
          mask = ps.map((_, i) => (i === k ? land : !land));
        }
        ps.forEach(([from, to], i) => {
          if (mask[i]) store.write(op.offset + from, op.data!.subarray(from, to));
        });
        continue;
      }
      const lands = keep === 'all' || (keep === 'random' && random() < 0.5);
      if (!lands) continue;
      if (op.kind === 'write') store.write(op.offset, op.data!);
      else if (op.kind === 'truncate') store.truncate(op.offset);
    }
    const out = new FaultySource();
    out.current = store;
    out.durable = store.snapshot();
    return out;
  }

  /** A healthy copy of what reads see now, all of it durable (`opts` as for a new source). */
  clone(opts: FaultyOptions = {}): FaultySource {
    const out = new FaultySource(new Uint8Array(0), opts);
    out.current = this.current.snapshot();
    out.durable = out.writeCache ? out.current.snapshot() : out.current;
    return out;
  }

  /** What reads see now, as one contiguous copy. */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.current.size);
    this.current.read(0, out);
    return out;
  }

  /** The non-zero-filled pages (offset and bytes) of what reads see: for writing sparse files. */
  *extents(): Generator<{ offset: number; data: Uint8Array }> {
    const indexes = [...this.current.pages.keys()].sort((a, b) => a - b);
    for (const i of indexes) {
      const offset = i * PAGE;
      if (offset >= this.current.size) continue;
      const page = this.current.pages.get(i)!;
      yield { offset, data: page.subarray(0, Math.min(PAGE, this.current.size - offset)) };
    }
  }

  private issue(op: FaultyOp): void {
    op.index = ++this.mutations;
    this.trace?.push(op);
    const crash = this.crashAt !== undefined && op.index >= this.crashAt;
    if (crash) this.crashed = true;
    // With a write cache, a write or truncate waits in the pending set for the next flush (the
    // one in flight at the crash too). Without, `durable` is `current`: what completed is durable
    // and the operation in flight at the crash never happens.
    if (this.writeCache && op.kind !== 'flush') this.pending.push(op);
    if (crash) throw powerLoss();
  }

  private assertAlive(): void {
    if (this.crashed) throw powerLoss();
  }

  private assertWritable(): void {
    this.assertAlive();
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'faulty source is read-only');
  }
}

/** The `unit`-aligned pieces (of the file) a write covers, as ranges of its data. */
function pieces(op: FaultyOp, unit: number): [number, number][] {
  const out: [number, number][] = [];
  const len = op.data!.length;
  let from = 0;
  while (from < len) {
    const next = (Math.floor((op.offset + from) / unit) + 1) * unit - op.offset;
    const to = Math.min(len, next);
    out.push([from, to]);
    from = to;
  }
  return out;
}

function isZero(b: Uint8Array): boolean {
  const words = b.byteOffset % 4 === 0 ? Math.floor(b.length / 4) : 0;
  const w = new Uint32Array(b.buffer, b.byteOffset, words);
  for (let i = 0; i < words; i++) if (w[i] !== 0) return false;
  for (let i = words * 4; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function powerLoss(): VhdxError {
  return new VhdxError('EIO', 'IO_ERROR', 'simulated power loss: the disk is gone');
}
