// The source folders' layers point one way: a module imports at run time only from its own
// folder or from a lower layer. Type-only imports (`import type`) are free: the block-device
// interface (src/device/block-device.ts) is implemented in driver/ and vhd/ and taken by inspect/
// and ops/, and erased from the output. The order, lowest first: codec (pure byte helpers, used
// by io as well as format) · io and format · driver · vhd · inspect · ops · device · nbd · cli;
// the top-level files are shared leaves (errors.ts, human-size.ts, package-version.ts) or the
// public entries (index.ts, node.ts, testing.ts), which may import anything.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { repoRoot } from './helpers/env.js';

const RANK: Record<string, number> = { codec: 0, io: 1, format: 1, driver: 2, vhd: 3, inspect: 4, ops: 5, device: 6, nbd: 7, cli: 8 };
const LEAVES = new Set(['errors.ts', 'human-size.ts', 'package-version.ts']);
const ENTRIES = new Set(['index.ts', 'node.ts', 'testing.ts']);

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith('.ts') ? [path] : [];
  });
}

/** The runtime imports (and re-exports) of a module's text: relative specifiers, `import type` / `export type` left out. */
function runtimeImports(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/^(import|export)\s+(type\s+)?[^;]*?from\s+'(\.[^']+)'/gms)) {
    if (m[2] === undefined) out.push(m[3]!);
  }
  for (const m of text.matchAll(/^import\s+'(\.[^']+)'/gm)) out.push(m[1]!);
  return out;
}

test('src/ layers import one way: each folder only from its own layer or lower ones (type-only imports aside)', () => {
  const src = join(repoRoot, 'src');
  const wrong: string[] = [];
  let checked = 0;
  for (const file of sources(src)) {
    const rel = relative(src, file);
    const folder = rel.includes('/') ? rel.split('/')[0]! : null;
    if (folder === null && (ENTRIES.has(rel) || !LEAVES.has(rel))) {
      assert.ok(ENTRIES.has(rel), `${rel}: a top-level file that is neither an entry nor a known leaf`);
      continue;
    }
    for (const spec of runtimeImports(readFileSync(file, 'utf8'))) {
      checked++;
      const target = relative(src, normalize(join(dirname(file), spec)));
      const to = target.includes('/') ? target.split('/')[0]! : null;
      if (to === null) {
        if (!LEAVES.has(target.replace(/\.js$/, '.ts'))) wrong.push(`${rel} imports ${target}, which is not a shared leaf`);
        continue;
      }
      if (folder === null) {
        wrong.push(`${rel} (a shared leaf) imports ${target}`);
        continue;
      }
      const from = RANK[folder];
      const into = RANK[to];
      assert.ok(from !== undefined && into !== undefined, `${rel} -> ${target}: a folder the layer order does not name`);
      if (to !== folder && into >= from) {
        wrong.push(`${rel} (${folder}) imports ${target} (${to}) at run time`);
      }
    }
  }
  assert.ok(checked > 200, `only ${checked} imports found: the parser missed them`);
  assert.deepEqual(wrong, []);
});
