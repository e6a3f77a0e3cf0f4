// Corpus distillation: keep the fewest inputs of a corpus directory that together reach every
// block the whole directory and the seeds reach (greedy: the inputs reaching most blocks first;
// hit counts are ignored here, unlike in a campaign, to keep the set small), and delete the
// rest. What remains is what the CI replay (test/fuzz-regression.test.ts) runs.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Coverage, isLibrary } from './coverage.js';
import { execute } from './rules.js';
import { loadInputs } from './store.js';
import { loadTarget } from './targets/index.js';

export async function distil(targetName, corpusDir) {
  const target = await loadTarget(targetName);
  const ctx = await target.setup();
  const cov = new Coverage(isLibrary, { counts: false });
  const inputs = loadInputs(corpusDir);
  const measured = [];
  cov.take();
  for (const input of inputs) {
    await execute(target, ctx, input.bytes);
    measured.push({ ...input, features: new Set(cov.take()) });
  }
  // Seeds are always run by the replay: what they reach needs no corpus input.
  const seen = new Set();
  for (const s of await target.seeds(ctx)) {
    await execute(target, ctx, s.bytes);
    for (const f of cov.take()) seen.add(f);
  }
  measured.sort((a, b) => b.features.size - a.features.size || a.bytes.length - b.bytes.length);
  let kept = 0;
  let removed = 0;
  for (const m of measured) {
    let adds = false;
    for (const f of m.features) if (!seen.has(f)) {
      adds = true;
      seen.add(f);
    }
    if (adds) kept++;
    else {
      rmSync(join(corpusDir, m.name));
      removed++;
    }
  }
  await target.teardown?.(ctx);
  cov.close();
  return { total: inputs.length, kept, removed, features: seen.size };
}
