// Helpers for the filesystem-driver tests (test/inspect/{ext,ntfs,fat,exfat}.test.ts): which mkfs
// tools exist, a device over fixture bytes, the used map collected and checked against the
// driver contract, free spans to compare with the tools' own lists, and a seeded mutation loop.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { MemorySource } from '../../src/io/source.js';
import { RawDevice } from '../../src/device/raw.js';
import { isVhdxError } from '../../src/errors.js';
import type { BlockDevice } from '../../src/device/block-device.js';
import type { FilesystemDriver, FilesystemInfo, Region, Run, UsedMapOptions } from '../../src/inspect/filesystem.js';
import { seededRandom } from './hex.js';
import { exec } from './tools.js';

const found = new Map<string, string | false>();
/** Skip message when `tool` is not on PATH (also /sbin and /usr/sbin), else false. */
export async function needTool(tool: string, pkg: string): Promise<string | false> {
  let skip = found.get(tool);
  if (skip === undefined) {
    const r = await exec('sh', ['-c', `PATH="$PATH:/sbin:/usr/sbin" command -v ${tool}`]);
    skip = r.code === 0 ? false : `${tool} (Debian package ${pkg}) not installed`;
    found.set(tool, skip);
  }
  return skip;
}

/** Options for exec that find the tools in /sbin too. */
export const sbinEnv = { env: { ...process.env, PATH: `${process.env.PATH}:/sbin:/usr/sbin` } };

/** A read-only device over `bytes` (a fixture file's content). */
export function deviceOf(bytes: Uint8Array): RawDevice {
  return new RawDevice(new MemorySource(bytes));
}

export function deviceOfFile(path: string): RawDevice {
  return deviceOf(new Uint8Array(readFileSync(path)));
}

/**
 * Collect the driver's used runs for `region`, checking the contract on the way: ascending,
 * non-overlapping, non-empty, inside the region. Returns { runs, used }.
 */
export async function collectUsed(
  driver: FilesystemDriver,
  dev: BlockDevice,
  region: Region,
  info: FilesystemInfo,
  opts?: UsedMapOptions,
): Promise<{ runs: Run[]; used: number }> {
  if (!driver.usedRuns) throw new Error(`the ${driver.types.join('/')} driver lists no used runs`);
  const runs: Run[] = [];
  let used = 0;
  let end = region.start;
  for await (const r of driver.usedRuns(dev, region, info, opts)) {
    assert.ok(r.length > 0, 'runs are not empty');
    assert.ok(r.start >= end, `runs ascend without overlap: ${r.start} after ${end}`);
    assert.ok(r.start + r.length <= region.start + region.length, 'runs stay inside the region');
    end = r.start + r.length;
    runs.push(r);
    used += r.length;
  }
  return { runs, used };
}

/** The free spans [start, end) between used runs, relative to the region. */
export function freeSpans(runs: readonly Run[], region: Region): [number, number][] {
  const out: [number, number][] = [];
  let pos = 0;
  for (const r of runs) {
    const s = r.start - region.start;
    if (s > pos) out.push([pos, s]);
    pos = s + r.length;
  }
  if (region.length > pos) out.push([pos, region.length]);
  return out;
}

/** Merge [start, end) spans that touch (a tool's list, sorted). */
export function mergeSpans(spans: readonly (readonly [number, number])[]): [number, number][] {
  const out: [number, number][] = [];
  for (const [s, e] of [...spans].sort((a, b) => a[0] - b[0])) {
    const last = out[out.length - 1];
    if (last && last[1] === s) last[1] = e;
    else out.push([s, e]);
  }
  return out;
}

/**
 * Mutate `rounds` copies of `bytes` (a few random bytes each, inside `hot` byte ranges where
 * the structures are) and run detect and usedRuns on each: the driver may return info or null,
 * or throw a VhdxError, and its runs must keep the contract. `regionLength` may exceed the
 * bytes (a fixture cut after its structures): reads past the cut are then damage. Returns how
 * many rounds gave info.
 */
export async function fuzzDriver(
  driver: FilesystemDriver,
  bytes: Uint8Array,
  {
    seed,
    rounds,
    hot,
    flips = 4,
    regionLength = bytes.length,
  }: { seed: number; rounds: number; hot: readonly (readonly [number, number])[]; flips?: number; regionLength?: number },
): Promise<number> {
  const rnd = seededRandom(seed);
  let recognised = 0;
  for (let round = 0; round < rounds; round++) {
    const copy = bytes.slice();
    for (let i = 0; i < flips; i++) {
      const [a, b] = hot[Math.floor(rnd() * hot.length)]!;
      const at = a + Math.floor(rnd() * (b - a));
      copy[at] = rnd() < 0.3 ? 0xff : Math.floor(rnd() * 256);
    }
    const dev = deviceOf(copy);
    const region = { start: 0, length: regionLength };
    try {
      const info = await driver.detect(dev, region);
      if (info) {
        recognised++;
        await collectUsed(driver, dev, region, info);
      }
    } catch (e) {
      if (!isVhdxError(e)) throw new Error(`round ${round} (seed ${seed}): ${e instanceof Error ? e.stack : String(e)}`);
    }
  }
  return recognised;
}
