#!/usr/bin/env node
// Makes a small sample image with this project's own code, then shows what the CLI does with it:
// info, map, and a conversion to a sparse raw file checked against the bytes that were written.
// Usage: node scripts/sample.js [DIR]   (default: ./sample)
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { NodeFileSource } from '../dist/node.js';
import { planLayout, writeNewImage, setBatEntry } from '../dist/driver/layout.js';
import { payloadBatIndex, PayloadState } from '../dist/format/bat.js';

const dir = resolve(process.argv[2] ?? 'sample');
mkdirSync(dir, { recursive: true });
const image = join(dir, 'sample.vhdx');
const MiB = 1024 * 1024;

// A 64 MiB dynamic disk with 1 MiB blocks: blocks 0, 1 and 40 hold data, block 20 is a ZERO
// block, everything else is unallocated.
const plan = planLayout({ virtualSize: 64 * MiB, blockSize: MiB, creator: 'vhdx sample' });
const src = await NodeFileSource.open(image, { readOnly: false, create: true, truncate: true });
await writeNewImage(src, plan);
const expected = new Uint8Array(plan.virtualSize);
let next = plan.payloadOffset;
for (const block of [0, 1, 40]) {
  const data = new Uint8Array(MiB);
  const text = new TextEncoder().encode(`block ${block} of a sample VHDX made by the vhdx package\n`);
  for (let at = 0; at + text.length <= MiB; at += 4096) data.set(text, at);
  await src.write(next, data);
  await setBatEntry(src, plan, payloadBatIndex(plan.geometry, block), { state: PayloadState.FULLY_PRESENT, fileOffsetMB: next / MiB });
  expected.set(data, block * MiB);
  next += MiB;
}
await setBatEntry(src, plan, payloadBatIndex(plan.geometry, 20), { state: PayloadState.ZERO, fileOffsetMB: 0 });
await src.flush();
await src.close();

const cli = resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..', 'bin', 'vhdx.cjs');
const vhdx = (...args) => {
  console.log(`\n$ vhdx ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
vhdx('info', image);
vhdx('map', image);
const raw = join(dir, 'sample.raw');
vhdx('convert', '-O', 'raw', image, raw);
const sha = (b) => createHash('sha256').update(b).digest('hex');
const ok = sha(readFileSync(raw)) === sha(expected);
console.log(`\n${raw}: ${ok ? 'matches' : 'DOES NOT match'} the bytes written (sha256 ${sha(expected).slice(0, 16)}…)`);
process.exit(ok ? 0 : 1);
