// Coverage feedback from V8 itself: precise block coverage through node:inspector's Profiler
// (the same data `NODE_V8_COVERAGE` and c8 use). After each execution `take()` returns the
// blocks of the library (dist/) that ran since the previous call; V8 resets its counters on
// every take, so each call sees one execution alone.
//
// A feature is one block (script, start, end) that ran, with its hit count bucketed as AFL does
// (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+): a new feature means the input reached code, or a
// loop count, no earlier input did. The session is synchronous within this thread.
import { Session } from 'node:inspector';

const BUCKETS = [0, 1, 2, 3, 4, 4, 4, 4, 5]; // counts 0..8; above: by magnitude
function bucket(count) {
  if (count < BUCKETS.length) return BUCKETS[count];
  if (count < 16) return 5;
  if (count < 32) return 6;
  if (count < 128) return 7;
  return 8;
}

/**
 * Whether a script is the library: its build under dist/, or its sources under src/ when the
 * tests run them (test/setup/ts-hooks.js serves imports of dist/ from src/).
 */
export function isLibrary(url) {
  return /\/(dist|src)\//.test(url) && !url.includes('/node_modules/');
}

export class Coverage {
  /**
   * @param {(url: string) => boolean} wanted  scripts whose blocks count as features
   * @param {{ counts?: boolean }} opts  counts: false makes a feature the block alone (distillation)
   */
  constructor(wanted, { counts = true } = {}) {
    this.wanted = wanted;
    this.counts = counts;
    this.session = new Session();
    this.session.connect();
    this.post('Profiler.enable');
    this.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
    /** Script ids already judged wanted or not. */
    this.scripts = new Map();
  }

  post(method, params) {
    let out;
    let err;
    this.session.post(method, params, (e, r) => {
      err = e;
      out = r;
    });
    if (err) throw err;
    return out;
  }

  /** The features of the execution since the last call, as numbers (a hash of script, range, bucket). */
  take() {
    const { result } = this.post('Profiler.takePreciseCoverage');
    const features = [];
    for (const script of result) {
      let want = this.scripts.get(script.scriptId);
      if (want === undefined) {
        want = this.wanted(script.url);
        this.scripts.set(script.scriptId, want);
      }
      if (!want) continue;
      const sid = Number(script.scriptId);
      for (const fn of script.functions) {
        for (const r of fn.ranges) {
          if (r.count === 0) continue;
          // Blocks are identified by where they start and end in the script; the count by its bucket.
          let h = Math.imul(sid, 0x9e3779b1) ^ Math.imul(r.startOffset, 0x85ebca6b) ^ Math.imul(r.endOffset + 1, 0xc2b2ae35);
          h = (Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) + (this.counts ? bucket(r.count) : 0)) >>> 0;
          features.push(h);
        }
      }
    }
    return features;
  }

  close() {
    this.post('Profiler.stopPreciseCoverage');
    this.session.disconnect();
  }
}
