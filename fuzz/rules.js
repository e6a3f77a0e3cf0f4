// What a fuzz target may and may not do, shared by the campaign (fuzz/engine.js) and the CI
// replay (test/fuzz-regression.test.ts).
//
// A target's run(input) may finish or throw the library's typed VhdxError. It breaks a rule
// when it throws anything else (named `untyped-<ErrorName>`), throws RuleBroken (a property the
// target checks: named by the target), reads through a GuardedSource more than MAX_READ at once
// (`unchecked-size`: a buffer sized by a number taken from the input), or takes longer than its
// bound per input (`slow`), or leaves more than MAX_BUFFER_GROWTH of buffers allocated (`heap`). A synchronous hang (`hang`) and running out of heap (`heap`) are
// caught by the parent process of the campaign (fuzz/run.js), which holds the input in shared memory.
import { VhdxError } from '../dist/index.js';

/** A single read larger than this is a buffer sized by an unchecked number. */
export const MAX_READ = 64 * 1024 * 1024;

/** Buffer memory one input may leave allocated (measured after it ran: a bounded heap per input). */
export const MAX_BUFFER_GROWTH = 512 * 1024 * 1024;

/** A property the target checks was broken; `rule` names it (and the crash file). */
export class RuleBroken extends Error {
  constructor(rule, message) {
    super(message);
    this.name = 'RuleBroken';
    this.rule = rule;
  }
}

/**
 * A source over `bytes` (copied when writable) that refuses oversized reads and remembers the
 * violation even when the library catches the error it throws.
 */
export class GuardedSource {
  constructor(bytes, { readOnly = true } = {}) {
    this.buf = readOnly ? bytes : bytes.slice();
    this.size = this.buf.length;
    this.readOnly = readOnly;
    this.violation = null;
  }
  fail(what) {
    this.violation ??= what;
    throw new RuleBroken('unchecked-size', what);
  }
  async read(offset, into) {
    if (into.length > MAX_READ) this.fail(`read of ${into.length} bytes at ${offset}`);
    if (!Number.isSafeInteger(offset) || offset < 0) this.fail(`read at offset ${offset}`);
    if (offset >= this.size) return 0;
    const n = Math.min(into.length, this.size - offset);
    into.set(this.buf.subarray(offset, offset + n));
    return n;
  }
  async write(offset, data) {
    if (this.readOnly) throw new RuleBroken('wrote-read-only', `write of ${data.length} bytes at ${offset} to a read-only source`);
    if (data.length > MAX_READ) this.fail(`write of ${data.length} bytes at ${offset}`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > 2 ** 40) this.fail(`write at offset ${offset}`);
    const end = offset + data.length;
    if (end > MAX_READ * 4) this.fail(`write to ${end}: the file grows past ${MAX_READ * 4} bytes`);
    if (end > this.buf.length) {
      const grown = new Uint8Array(Math.max(end, Math.min(this.buf.length * 2, MAX_READ * 4)));
      grown.set(this.buf);
      this.buf = grown;
    }
    this.buf.set(data, offset);
    this.size = Math.max(this.size, end);
  }
  async truncate(size) {
    if (this.readOnly) throw new RuleBroken('wrote-read-only', `truncate to ${size} of a read-only source`);
    if (size > this.buf.length) await this.write(size - 1, new Uint8Array(1)).then(() => this.buf.fill(0, this.size - 1, size));
    this.size = size;
  }
  async flush() {}
  async close() {}
  bytes() {
    return this.buf.subarray(0, this.size);
  }
  /** Throw if the library swallowed a violation. */
  assertClean() {
    if (this.violation) throw new RuleBroken('unchecked-size', this.violation);
  }
}

/**
 * Run `target.run(input, ctx)` once: { outcome } (how it ended: 'ok' or a VhdxError reason) or
 * { rule, message, stack } when it broke a rule.
 */
export async function execute(target, ctx, input) {
  let timer;
  // ctx.timeScale (the CI replay sets it) widens every time bound: on a loaded machine only a
  // real hang should count there.
  const bound = (target.timeMs ?? 5000) * (ctx.timeScale ?? 1);
  const buffersBefore = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  try {
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new RuleBroken('slow', `no result within ${bound} ms`)), bound);
    });
    const outcome = await Promise.race([target.run(input, ctx), timeout]);
    const ms = performance.now() - t0;
    if (ms > bound) return { rule: 'slow', message: `took ${Math.round(ms)} ms (bound ${bound} ms)` };
    const grown = process.memoryUsage().arrayBuffers - buffersBefore;
    if (grown > MAX_BUFFER_GROWTH) return { rule: 'heap', message: `${Math.round(grown / 2 ** 20)} MiB of buffers allocated by one input` };
    return { outcome: outcome ?? 'ok', ms };
  } catch (e) {
    if (e instanceof RuleBroken) return { rule: e.rule, message: e.message, stack: e.stack };
    if (e instanceof VhdxError) return { outcome: e.reason, ms: performance.now() - t0 };
    const name = e && typeof e === 'object' && typeof e.name === 'string' ? e.name : typeof e;
    return { rule: `untyped-${name.replace(/[^A-Za-z0-9]/g, '')}`, message: String(e?.message ?? e), stack: String(e?.stack ?? e) };
  } finally {
    clearTimeout(timer);
  }
}

/** A short signature of a broken rule (the first frames of the stack in the library), to keep one crash per bug. */
export function signature(result) {
  const frames = String(result.stack ?? '')
    .split('\n')
    .filter((l) => /\/(dist|src)\//.test(l) && !l.includes('/node_modules/'))
    .slice(0, 2)
    .map((l) => l.replace(/:\d+\)?$/, '').replace(/^.*\/(dist|src)\//, '').replace(/\.ts\b/, '.js'));
  return `${result.rule}|${frames.join('|') || result.message.replace(/\d+/g, 'N').slice(0, 80)}`;
}
