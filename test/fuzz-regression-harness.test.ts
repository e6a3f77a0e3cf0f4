// The fuzz harness itself (fuzz/): the format-aware mutations leave the checksums they must
// reseal valid by the library's own checks (so mutated inputs get past them), coverage tells a
// new path from a repeated one, rules are classified and named as documented, minimisation keeps
// only the change that matters, and a short campaign keeps inputs in its corpus directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhdxError } from '../src/index.js';
import { HEADER } from '../src/format/header.js';
import { REGION_TABLE_HEADER } from '../src/format/region-table.js';
import { FOOTER } from '../src/vhd/footer.js';
import { DYNAMIC_HEADER } from '../src/vhd/dynamic-header.js';
import { decodeGptHeader } from '../src/inspect/gpt.js';
import { parseExtSuperblock } from '../src/inspect/ext.js';
import { applyFixups } from '../src/inspect/ntfs-mft.js';
import { crc32cWithZeroField } from '../src/codec/crc32c.js';
import type { FieldSpec } from '../src/codec/struct.js';
import { mutateField } from '../fuzz/mutate.js';
import { vhdxStructures, vhdStructures, diskStructures } from '../fuzz/formats.js';
import { vhdxSeeds, vhdSeedsAndParent, diskSeeds } from '../fuzz/seeds.js';
import { makeRng } from '../fuzz/rng.js';
import { execute, GuardedSource, RuleBroken } from '../fuzz/rules.js';
import { minimise } from '../fuzz/minimise.js';
import { Coverage, isLibrary } from '../fuzz/coverage.js';
import { repoRoot } from './helpers/env.js';

/** A structure found in an input by fuzz/formats.js: its field table and its reseal, when it has them. */
interface Instance {
  name: string;
  at: number;
  struct?: { fields: Record<string, FieldSpec<unknown>> };
  reseal?: (b: Uint8Array) => void;
}
type Seed = { name: string; bytes: Uint8Array };
type Finder = (b: Uint8Array) => Instance[];

const SPAN_FIELDS = new Set(['headerSize', 'entryLength', 'usaOffset', 'usaCount', 'roCompat', 'checksumType', 'magic']);

/** Whether the checksum covering `inst` is valid, by the library's own check. */
function checksumValid(b: Uint8Array, inst: Instance): boolean | null {
  const at = inst.at;
  const n = inst.name;
  if (n.startsWith('header')) return HEADER.checksumOk(b.subarray(at, at + 4096));
  if (n.startsWith('region table')) return [192 * 1024, 256 * 1024].every((t) => REGION_TABLE_HEADER.checksumOk(b.subarray(t, t + 65536)));
  if (n === 'log entry header') return new DataView(b.buffer, b.byteOffset).getUint32(at + 4, true) === crc32cWithZeroField(b.subarray(at, at + new DataView(b.buffer, b.byteOffset).getUint32(at + 8, true)), 4);
  if (n.startsWith('footer')) return FOOTER.checksumOk(b.subarray(at, at + 512));
  if (n === 'dynamic header') return DYNAMIC_HEADER.checksumOk(b.subarray(at, at + 1024));
  if (n.startsWith('GPT header')) {
    const ss = b.length >= 4104 && String.fromCharCode(...b.subarray(4096, 4104)) === 'EFI PART' ? 4096 : 512;
    const h = decodeGptHeader(b.subarray(at, at + ss), at / ss, ss, b.length / ss);
    return !(h && 'reason' in h && h.reason === 'GPT_BAD_CRC');
  }
  if (n === 'ext superblock') {
    const sb = parseExtSuperblock(b.subarray(at, at + 1024));
    return typeof sb !== 'object' || sb === null || sb.checksumOk;
  }
  if (n.startsWith('MFT record') && !n.includes('attribute')) return applyFixups(b.slice(at, at + 1024), 'FILE');
  return null;
}

test('format-aware mutations reseal the checksums the library checks: VHDX, VHD, GPT, ext4, NTFS', async () => {
  const rng = makeRng(7);
  const inputs = [
    ...(await vhdxSeeds()).map((s): [Seed, Finder] => [s, vhdxStructures]),
    ...(await vhdSeedsAndParent()).seeds.map((s): [Seed, Finder] => [s, vhdStructures]),
    ...diskSeeds().map((s): [Seed, Finder] => [s, diskStructures]),
  ];
  const checked = new Set<string>();
  for (const [seed, find] of inputs) {
    for (const inst of find(seed.bytes)) {
      if (!inst.reseal || !inst.struct) continue;
      for (let k = 0; k < 4; k++) {
        const b = seed.bytes.slice();
        // Left alone: signatures (refused before any checksum) and the fields that say what the
        // checksum covers or whether there is one (a reseal cannot follow a nonsense span).
        const fields = Object.fromEntries(Object.entries(inst.struct.fields).filter(([k, f]) => f.expect === undefined && !SPAN_FIELDS.has(k)));
        const d = mutateField(b, { ...inst, struct: { fields } }, rng, []);
        if (!d) continue;
        inst.reseal(b);
        const ok = checksumValid(b, inst);
        if (ok === null) continue;
        checked.add(inst.name.replace(/[\d ]+$/, '').replace(/ at \d+$/, ''));
        assert.ok(ok, `${seed.name}: ${d}: the checksum is not valid after resealing`);
      }
    }
  }
  for (const kind of ['header', 'region table', 'log entry header', 'footer', 'dynamic header', 'GPT header', 'ext superblock', 'MFT record']) {
    assert.ok([...checked].some((c) => c.startsWith(kind)), `no ${kind} was mutated and checked (checked: ${[...checked].join(', ')})`);
  }
});

test('coverage: the same path twice gives no new feature, another branch does', async () => {
  const cov = new Coverage(isLibrary);
  cov.take();
  const run = async (b: Uint8Array): Promise<number[]> => {
    await execute({ run: async (x: Uint8Array) => new GuardedSource(x).read(0, new Uint8Array(x.length > 4 ? 4 : 1)) }, {}, b);
    return cov.take();
  };
  const seen = new Set(await run(new Uint8Array(8)));
  assert.deepEqual((await run(new Uint8Array(8))).filter((f) => !seen.has(f)), []);
  const { HttpSource } = await import('../src/index.js');
  cov.take();
  await HttpSource.open('http://x.invalid/', { fetch: async () => new Response('ab', { status: 200 }), retries: 0 }).catch(() => {});
  assert.ok(cov.take().some((f) => !seen.has(f)), 'a new path gave no new feature');
  cov.close();
});

test('rules: typed errors pass, anything else is named by the rule it broke', async () => {
  const outcome = (fn: () => Promise<unknown>, timeMs?: number) => execute({ run: fn, timeMs }, {}, new Uint8Array(0));
  assert.deepEqual(await outcome(async () => 'fine').then((r) => r.outcome), 'fine');
  assert.equal((await outcome(async () => { throw new VhdxError('EIO', 'BAD_CHECKSUM', 'x'); })).outcome, 'BAD_CHECKSUM');
  // A property read on null, deliberately (the cast lets it through the type check).
  assert.equal((await outcome(async () => (null as unknown as { x: number }).x)).rule, 'untyped-TypeError');
  assert.equal((await outcome(async () => { throw new RuleBroken('replay-twice-differs', 'y'); })).rule, 'replay-twice-differs');
  assert.equal((await outcome(() => new Promise(() => {}), 50)).rule, 'slow');
  // A read sized by an unchecked number is caught even when the library swallows the error.
  const src = new GuardedSource(new Uint8Array(16));
  await src.read(0, new Uint8Array(65 * 1024 * 1024)).catch(() => {});
  assert.equal((await outcome(async () => src.assertClean())).rule, 'unchecked-size');
});

test('minimisation keeps only the change that matters, for images and for streams', async () => {
  const parent = new Uint8Array(4096);
  const child = parent.slice();
  child[10] = 1;
  child[2000] = 2;
  child[4000] = 3;
  const small = await minimise(child, parent, async (c: Uint8Array) => c[2000] === 2);
  assert.deepEqual([...small.keys()].filter((i) => small[i] !== 0), [2000]);
  const stream = new TextEncoder().encode('xxxxxxxxKEYyyyyyyyyyyyyy');
  const shorter = await minimise(stream, stream, async (c: Uint8Array) => new TextDecoder().decode(c).includes('KEY'), { stream: true, budget: 200 });
  assert.equal(new TextDecoder().decode(shorter), 'KEY');
});

test('a short campaign keeps inputs reaching new code in its corpus directory', { timeout: 120000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-harness-'));
  try {
    const out = execFileSync(process.execPath, ['fuzz/run.js', 'http', '--runs', '300', '--time', '60', '--seed', '3', '--corpus', join(dir, 'c'), '--crashes', join(dir, 'x')], { cwd: repoRoot, encoding: 'utf8' });
    assert.match(out, /total: \d+ execs, [1-9]\d* inputs kept, 0 rules broken/);
    assert.ok(readdirSync(join(dir, 'c')).length > 0, out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
