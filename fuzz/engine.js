// The campaign loop, run in a worker thread by fuzz/run.js (which watches it for hangs and
// out-of-memory deaths). Coverage-guided in the usual way: every input of the corpus (seeds,
// then the corpus directory) is run once to learn the features (V8 blocks and hit-count
// buckets, fuzz/coverage.js) it reaches; then repeatedly a corpus input is mutated
// (fuzz/mutate.js) and run; a mutant reaching a feature no input reached before is minimised
// (its changes reverted one run of bytes at a time, or for byte streams chunks removed, as long
// as the new features stay) and kept in memory and in the corpus directory. A mutant that breaks
// a rule (fuzz/rules.js) is saved in the crash directory, once per rule and place in the code.
//
// The input being run is always in the shared buffer given by the parent: [0] executions,
// [1] length, then the bytes, so the parent can save it when the worker hangs or dies.
import { parentPort, workerData } from 'node:worker_threads';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { Coverage, isLibrary } from './coverage.js';
import { execute, signature } from './rules.js';
import { mutate } from './mutate.js';
import { minimise } from './minimise.js';
import { makeRng } from './rng.js';
import { inputNames, readInput, saveCorpusInput, saveCrash, hashOf } from './store.js';
import { loadTarget } from './targets/index.js';

const { targetName, seconds, corpusDir, crashDir, seed, shared, maxExecs } = workerData;
const state = new Int32Array(shared, 0, 2);
const inputArea = new Uint8Array(shared, 8);

const target = await loadTarget(targetName);
const ctx = await target.setup();
const cov = new Coverage(isLibrary);
const rng = makeRng(seed);
const seen = new Set();
/**
 * The corpus in memory, each input compressed (images are megabytes, mostly zeros), with the
 * most recently used ones kept inflated.
 */
const corpus = [];
const inflated = new Map();
const INFLATED_MAX = 12;
const keep = (bytes) => corpus.push({ id: corpus.length, z: deflateRawSync(bytes, { level: 1 }) });
function bytesOf(entry) {
  let b = inflated.get(entry.id);
  if (b) inflated.delete(entry.id);
  else b = new Uint8Array(inflateRawSync(entry.z));
  inflated.set(entry.id, b);
  if (inflated.size > INFLATED_MAX) inflated.delete(inflated.keys().next().value);
  return b;
}
const crashSigs = new Set();
const stats = { execs: 0, kept: 0, crashes: 0, minimiseExecs: 0, outcomes: {} };

function run(bytes) {
  const n = Math.min(bytes.length, inputArea.length);
  inputArea.set(bytes.subarray(0, n));
  Atomics.store(state, 1, n);
  Atomics.add(state, 0, 1);
  stats.execs++;
  return execute(target, ctx, bytes).then((r) => ({ r, features: cov.take() }));
}

function recordCrash(r, bytes) {
  const sig = signature(r);
  if (crashSigs.has(sig)) return;
  crashSigs.add(sig);
  stats.crashes++;
  const path = saveCrash(crashDir, r, bytes, sig);
  parentPort.postMessage({ type: 'crash', rule: r.rule, message: r.message, path });
}

/** Shrink `child` (derived from `parent`) while it still reaches every feature of `needed`. */
function shrink(child, parent, needed) {
  return minimise(child, parent, async (candidate) => {
    stats.minimiseExecs++;
    const { r, features } = await run(candidate);
    if (r.rule) return false;
    const got = new Set(features);
    return needed.every((f) => got.has(f));
  }, { stream: Boolean(target.stream) });
}

function addFeatures(features) {
  let fresh = 0;
  for (const f of features) if (!seen.has(f)) {
    seen.add(f);
    fresh++;
  }
  return fresh;
}

const t0 = performance.now();
let lastReport = t0;
const report = (final = false) => {
  parentPort.postMessage({ type: final ? 'done' : 'stats', elapsed: Math.round((performance.now() - t0) / 1000), features: seen.size, corpus: corpus.length, ...stats });
};

// Learn what the seeds and the saved corpus reach (read one at a time: they are megabytes each).
const known = new Set();
const initial = [...(await target.seeds(ctx)).map((s) => () => s.bytes), ...inputNames(corpusDir).map((n) => () => readInput(corpusDir, n))];
for (const read of initial) {
  const bytes = read();
  const h = hashOf(bytes);
  if (known.has(h)) continue;
  known.add(h);
  const { r, features } = await run(bytes);
  if (r.rule) recordCrash(r, bytes);
  addFeatures(features);
  keep(bytes);
}
parentPort.postMessage({ type: 'loaded', inputs: corpus.length, features: seen.size });

while ((performance.now() - t0) / 1000 < seconds && stats.execs < maxExecs && corpus.length > 0) {
  // Newer entries (deeper paths) a little more often than older ones.
  const entry = rng.chance(0.3) ? corpus[corpus.length - 1 - rng.int(Math.min(8, corpus.length))] : rng.pick(corpus);
  const parent = bytesOf(entry);
  const { bytes } = mutate(parent, rng, {
    structures: target.structures ? (b) => target.structures(b) : null,
    guids: target.guids ?? (() => []),
    stream: Boolean(target.stream),
    maxBytes: target.maxBytes ?? 32 * 1024 * 1024,
    custom: target.mutate ?? null,
  });
  const { r, features } = await run(bytes);
  const o = r.rule ? `RULE ${r.rule}` : r.outcome;
  stats.outcomes[o] = (stats.outcomes[o] ?? 0) + 1;
  if (r.rule) {
    recordCrash(r, bytes);
    continue;
  }
  const fresh = features.filter((f) => !seen.has(f));
  if (fresh.length > 0) {
    const small = await shrink(bytes, parent, fresh);
    const again = await run(small);
    addFeatures(again.features);
    addFeatures(features);
    keep(small);
    stats.kept++;
    saveCorpusInput(corpusDir, small);
  }
  if (performance.now() - lastReport > 10000) {
    lastReport = performance.now();
    report();
  }
}
report(true);
await target.teardown?.(ctx);
cov.close();
