// Replays what the fuzz campaigns (fuzz/, `npm run fuzz`) saved: for every target, its seeds, its
// distilled corpus (fuzz/corpus/TARGET) and every input that once broke a rule
// (fuzz/crashes/TARGET, each fixed since). Each must now keep every rule of fuzz/rules.js: only
// typed errors, no oversized read, within six times the target's time bound (a hang, not a slow machine), and the target's own
// properties (check agrees with the readers, replay is idempotent, written content reads back,
// the NBD server keeps serving its other client, ...). Each target runs in a worker thread with
// a bounded heap, watched for hangs.
import { Worker, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';

const WATCHDOG_MS = 30000;

/** What a replay worker tells the test: the input it starts, a rule an input broke, the end. */
type Done = { type: 'done'; inputs: number; seeds: number };
type Message = { type: 'input'; name: string } | { type: 'broken'; name: string; rule: string; message: string | undefined } | Done;

if (isMainThread) {
  const { test } = await import('node:test');
  const assert: typeof import('node:assert/strict') = (await import('node:assert/strict')).default;
  const { TARGETS } = await import('../fuzz/targets/index.js');
  const { inputNames, defaultCorpus, defaultCrashes } = await import('../fuzz/store.js');
  for (const target of Object.keys(TARGETS)) {
    const corpus = inputNames(defaultCorpus(target)).length;
    const crashes = inputNames(defaultCrashes(target)).length;
    test(`fuzz regression ${target}: seeds, ${corpus} corpus inputs and ${crashes} former crashes keep every rule`, { timeout: 5 * 60 * 1000 }, async () => {
      const r = await replay(target);
      assert.deepEqual(r.broken, []);
      assert.equal(r.done?.inputs, r.done ? corpus + crashes + r.done.seeds : -1, 'the replay stopped early');
      // (r.done is there: the assertion above fails without it.)
      assert.ok(r.done!.seeds >= 1, 'the target has no seeds');
    });
  }
} else {
  // A worker always has its parent's port.
  await worker((workerData as { target: string }).target, parentPort!);
}

function replay(target: string): Promise<{ broken: string[]; done: Done | null }> {
  return new Promise((resolve) => {
    const broken: string[] = [];
    let done: Done | null = null;
    let last = '';
    const w = new Worker(fileURLToPath(import.meta.url), { workerData: { target }, resourceLimits: { maxOldGenerationSizeMb: 1024 } });
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        broken.push(`hang: no progress for ${WATCHDOG_MS} ms after ${last}`);
        void w.terminate();
      }, WATCHDOG_MS);
    };
    arm();
    w.on('message', (m: Message) => {
      if (m.type === 'input') {
        last = m.name;
        arm();
      } else if (m.type === 'broken') broken.push(`${m.name}: ${m.rule}: ${m.message}`);
      else if (m.type === 'done') done = m;
    });
    w.on('error', (e: Error) => broken.push(`worker died after ${last}: ${e?.stack ?? e}`));
    w.on('exit', () => {
      clearTimeout(timer);
      resolve({ broken, done });
    });
  });
}

async function worker(name: string, port: MessagePort): Promise<void> {
  const { loadTarget } = await import('../fuzz/targets/index.js');
  const { execute } = await import('../fuzz/rules.js');
  const { inputNames, readInput, defaultCorpus, defaultCrashes } = await import('../fuzz/store.js');
  const target = await loadTarget(name);
  const ctx = await target.setup();
  // Time bounds six times the campaign's: here only a hang, not a loaded machine, may fail.
  ctx.timeScale = 6;
  const seeds = await target.seeds(ctx);
  // Read one at a time: the images are megabytes each.
  const inDir = (dir: string, kind: string) => inputNames(dir).map((n) => ({ name: `${kind}/${name}/${n}`, read: () => readInput(dir, n) }));
  const all = [
    ...seeds.map((s: { name: string; bytes: Uint8Array }) => ({ name: `seed ${s.name}`, read: () => s.bytes })),
    ...inDir(defaultCorpus(name), 'corpus'),
    ...inDir(defaultCrashes(name), 'crashes'),
  ];
  for (const input of all) {
    port.postMessage({ type: 'input', name: input.name } satisfies Message);
    const r = await execute(target, ctx, input.read());
    if (r.rule) port.postMessage({ type: 'broken', name: input.name, rule: r.rule, message: r.message } satisfies Message);
  }
  await target.teardown?.(ctx);
  port.postMessage({ type: 'done', inputs: all.length, seeds: seeds.length } satisfies Message);
}
