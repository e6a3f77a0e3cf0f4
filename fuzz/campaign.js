// A fuzz campaign, started by fuzz/run.js (which loads it through the tests' module hooks):
// `npm run fuzz -- TARGET [--time SECONDS] [--corpus DIR] [--crashes DIR] [--seed N] [--runs N]
// [--heap MB]`, or `npm run fuzz -- TARGET --distil` to cut the corpus directory down to the
// smallest set of inputs reaching every feature it reaches (what the CI replay runs), or
// `npm run fuzz -- --list`. The targets run the library from src/, as the tests do.
//
// The loop runs in a worker thread (fuzz/engine.js) with a bounded heap; this process watches
// it: when it makes no progress for --hang seconds, or dies (out of memory included), the input
// it was running (kept in shared memory) is saved as a crash named `hang` or `heap` and the
// worker is started again from the corpus directory.
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { saveCrash, defaultCorpus, defaultCrashes } from './store.js';
import { TARGETS } from './targets/index.js';
import { distil } from './distil.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    time: { type: 'string', default: '60' },
    corpus: { type: 'string' },
    crashes: { type: 'string' },
    seed: { type: 'string' },
    runs: { type: 'string' },
    heap: { type: 'string', default: '1024' },
    hang: { type: 'string', default: '30' },
    distil: { type: 'boolean', default: false },
    list: { type: 'boolean', default: false },
  },
});

if (values.list || positionals.length !== 1 || !TARGETS[positionals[0]]) {
  process.stdout.write(`usage: npm run fuzz -- TARGET [--time SECONDS] [--corpus DIR] [--crashes DIR] [--seed N] [--runs N] [--distil]\ntargets:\n`);
  for (const [name, about] of Object.entries(TARGETS)) process.stdout.write(`  ${name.padEnd(9)} ${about}\n`);
  process.exit(values.list ? 0 : 2);
}

const targetName = positionals[0];
const corpusDir = values.corpus ?? defaultCorpus(targetName);
const crashDir = values.crashes ?? defaultCrashes(targetName);

if (values.distil) {
  const r = await distil(targetName, corpusDir);
  process.stdout.write(`${targetName}: kept ${r.kept} of ${r.total} corpus inputs (${r.features} features); removed ${r.removed}\n`);
  process.exit(0);
}

const seconds = Number(values.time);
const hangMs = Number(values.hang) * 1000;
let seed = values.seed !== undefined ? Number(values.seed) : (Date.now() & 0x7fffffff);
const maxExecs = values.runs !== undefined ? Number(values.runs) : Infinity;
const deadline = Date.now() + seconds * 1000;
const totals = { execs: 0, kept: 0, crashes: 0, restarts: 0 };
let firstFeatures = null;
let lastFeatures = 0;

const log = (s) => process.stdout.write(`[${new Date().toISOString().slice(11, 19)}] ${targetName}: ${s}\n`);
log(`seed ${seed}, ${seconds} s, corpus ${corpusDir}, crashes ${crashDir}`);

/** One worker until it finishes or dies; resolves true when the campaign should go on. */
function runWorker() {
  const shared = new SharedArrayBuffer(8 + 40 * 1024 * 1024);
  const state = new Int32Array(shared, 0, 2);
  const left = Math.max(1, (deadline - Date.now()) / 1000);
  const worker = new Worker(fileURLToPath(new URL('./engine.js', import.meta.url)), {
    // The worker loads the targets through the same hooks (fuzz/run.js says why).
    execArgv: [...process.execArgv, '--import', new URL('../test/setup/register.js', import.meta.url).href],
    workerData: { targetName, seconds: left, corpusDir, crashDir, seed: seed++, shared, maxExecs: maxExecs - totals.execs },
    resourceLimits: { maxOldGenerationSizeMb: Number(values.heap) },
  });
  let lastExecs = -1;
  let lastChange = Date.now();
  let finished = false;
  let base = { execs: 0, kept: 0, crashes: 0 };
  const savedInput = () => new Uint8Array(shared, 8, Atomics.load(state, 1)).slice();
  return new Promise((resolve) => {
    const watch = setInterval(() => {
      const n = Atomics.load(state, 0);
      if (n !== lastExecs) {
        lastExecs = n;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > hangMs) {
        clearInterval(watch);
        const path = saveCrash(crashDir, { rule: 'hang', message: `no progress for ${hangMs / 1000} s` }, savedInput(), `hang|${Date.now()}`);
        log(`HANG: input saved in ${path}; restarting`);
        totals.restarts++;
        void worker.terminate();
      }
    }, 1000);
    worker.on('message', (m) => {
      if (m.type === 'loaded') {
        firstFeatures ??= m.features;
        log(`${m.inputs} inputs loaded, ${m.features} features`);
      } else if (m.type === 'crash') log(`RULE BROKEN ${m.rule}: ${m.message.slice(0, 200)} -> ${m.path}`);
      else if (m.type === 'stats' || m.type === 'done') {
        base = m;
        lastFeatures = m.features;
        const top = Object.entries(m.outcomes).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([k, v]) => `${k} ${v}`).join(', ');
        log(`${m.elapsed} s: ${m.execs} execs (${Math.round(m.execs / Math.max(1, m.elapsed))}/s), ${m.features} features, corpus ${m.corpus} (+${m.kept}), crashes ${m.crashes}; ${top}`);
        if (m.type === 'done') finished = true;
      }
    });
    worker.on('error', (e) => {
      if (String(e?.code ?? '').includes('OUT_OF_MEMORY') || /heap/i.test(String(e?.message))) {
        const path = saveCrash(crashDir, { rule: 'heap', message: String(e.message) }, savedInput(), `heap|${Date.now()}`);
        log(`HEAP: input saved in ${path}; restarting`);
      } else log(`worker failed: ${e?.stack ?? e}`);
      totals.restarts++;
    });
    worker.on('exit', () => {
      clearInterval(watch);
      totals.execs += base.execs;
      totals.kept += base.kept;
      totals.crashes += base.crashes;
      resolve(!finished && Date.now() < deadline - 1000 && totals.restarts < 20);
    });
  });
}

while (await runWorker());
log(`total: ${totals.execs} execs, ${totals.kept} inputs kept, ${totals.crashes} rules broken, ${totals.restarts} restarts; features ${firstFeatures} -> ${lastFeatures}`);
