// `check` and the readers agree: what check calls clean (or warnings only), open, read,
// blockStatus, allocationStats and describe accept; what the readers refuse, check reports as a
// corruption. The property over thousands of mutated images is in test/fuzz.test.js; these are
// the cases found by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdxImage, describe } from '../../dist/index.js';
import { checkImage } from '../../dist/driver/check.js';
import { buildImage, putBatEntry, batEntryAt, setU32, fillByte, PayloadState, MiB } from '../helpers/build.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTool, run, runCli, scratch } from '../helpers/env.js';

const dir = scratch('vhdx-check-agrees-');
let n = 0;
function file(bytes) {
  const p = join(dir, `img-${n++}.vhdx`);
  writeFileSync(p, bytes);
  return p;
}

/** Everything a reader does with an image: open, describe, allocation scan, block status, read it all. */
async function readAll(bytes, opts = {}) {
  const img = await VhdxImage.open(new MemorySource(bytes.slice(), { readOnly: true }), opts);
  try {
    await describe(img);
    await img.allocationStats();
    const extents = await img.blockStatus(0, img.size);
    const buf = new Uint8Array(img.size);
    await img.read(0, buf);
    return { extents, data: buf };
  } finally {
    await img.close();
  }
}

test('non-zero BAT entries past the disk\'s last block: check warns, every reader ignores them', async () => {
  // 3 blocks of 1 MiB: entries 3 to 4095 of the first chunk describe no block of the disk.
  const { bytes, plan } = await buildImage({ virtualSize: 3 * MiB, allocate: [1] });
  const b = bytes.slice();
  putBatEntry(b, plan, 3, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 2 ** 30 }); // far past the file's end
  putBatEntry(b, plan, 4, { state: 4, fileOffsetMB: 0 }); // an undefined state
  setU32(b, batEntryAt(plan, 5), 0x0ffff8 | PayloadState.FULLY_PRESENT); // reserved bits set
  putBatEntry(b, plan, 4095, { state: PayloadState.PARTIALLY_PRESENT, fileOffsetMB: 1 }); // inside the header section

  const r = await checkImage(new MemorySource(b.slice()));
  assert.equal(r.corruptions, 0, JSON.stringify(r.findings));
  assert.deepEqual(
    r.findings.filter((f) => f.severity === 'warning').map((f) => [f.reason, f.structure]),
    [['BAD_BAT_ENTRY', 'BAT entry 3']],
  );
  const { extents, data } = await readAll(b);
  assert.deepEqual(extents.map((e) => e.type), ['unallocated', 'data', 'unallocated']);
  assert.ok(data.subarray(MiB, 2 * MiB).every((x) => x === fillByte(1)));
  assert.ok(data.subarray(0, MiB).every((x) => x === 0));
});

test('the same image through the CLI: check exits 0, info, map and convert succeed, qemu-img reads the same bytes', async () => {
  const { bytes, plan } = await buildImage({ virtualSize: 3 * MiB, allocate: [1] });
  const b = bytes.slice();
  putBatEntry(b, plan, 3, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: 2 ** 30 });
  const p = file(b);
  assert.equal(runCli(['check', p]).status, 0);
  for (const args of [['info', p], ['map', p], ['convert', '-O', 'raw', p, `${p}.raw`]]) {
    const r = runCli(args);
    assert.equal(r.status, 0, `${args[0]}: ${r.stderr}`);
  }
  const raw = readFileSync(`${p}.raw`);
  assert.equal(raw.length, 3 * MiB);
  assert.ok(raw.subarray(MiB, 2 * MiB).every((x) => x === fillByte(1)));
  if (!needTool('qemu-img')) {
    run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', p, `${p}.qemu.raw`]);
    assert.ok(readFileSync(`${p}.qemu.raw`).equals(raw), 'qemu-img reads the same bytes');
  }
});
