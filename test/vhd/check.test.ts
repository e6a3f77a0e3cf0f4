// checkVhd and repairVhd (src/vhd/check.ts): clean images have no findings; what an interrupted
// write leaves (the footer not yet at the new end, a block whose BAT entry never landed, a
// damaged footer copy) is found, repaired by the mode that may, and reads the same after; what
// needs a guess is reported and left alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdImage, checkVhd, repairVhd, type VhdCheckResult, type VhdxError } from '../../src/index.js';
import { pattern, bytesEqual } from '../helpers/model.js';
import { needTool } from '../helpers/env.js';
import { must, shmScratch } from '../helpers/tools.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KiB, MiB, newVhd, patchFooter } from '../helpers/vhd.js';
import { FOOTER } from '../../src/vhd/footer.js';

const BS = MiB;

/** A dynamic VHD of 8 MiB, blocks 0 and 3 written, closed cleanly: { bytes, footerAt }. */
async function clean() {
  const { src } = await newVhd({ size: 8 * MiB, blockSize: BS });
  const img = await VhdImage.open(src, { readOnly: false });
  await img.write(0, pattern(1, 5000));
  await img.write(3 * MiB + 7, pattern(2, 5000));
  await img.close();
  const bytes = src.bytes().slice();
  return { bytes, footerAt: bytes.length - 512 };
}

async function readAll(bytes: Uint8Array): Promise<Uint8Array> {
  const img = await VhdImage.open(new MemorySource(bytes.slice()));
  const out = new Uint8Array(img.size);
  await img.read(0, out);
  return out;
}

const serious = (r: VhdCheckResult) => r.findings.filter((f) => f.severity === 'corruption' || f.severity === 'leak');

test('clean images have no findings: fixed, dynamic, differencing with its parent, qemu-img\'s', async () => {
  const { bytes } = await clean();
  const r = await checkVhd(new MemorySource(bytes));
  assert.deepEqual(r.findings, []);
  assert.equal(r.type, 'dynamic');
  assert.equal(r.allocatedBlocks, 2);
  assert.equal(r.totalBlocks, 8);
  assert.equal(r.imageEndOffset, bytes.length - 512);
  const { src: fixed } = await newVhd({ size: 3 * MiB, subformat: 'fixed' });
  assert.deepEqual((await checkVhd(fixed)).findings, []);
  const parent = await VhdImage.open(new MemorySource(bytes.slice()));
  const { src: child } = await newVhd({ parent, parentPaths: [{ platform: 'W2ru', path: '.\\p.vhd' }] });
  const ok = await checkVhd(child, { parent: async () => VhdImage.open(new MemorySource(bytes.slice())) });
  assert.deepEqual(ok.findings, []);
  // Another disk as the parent: a corruption.
  const { bytes: other } = await clean();
  const bad = await checkVhd(child, { parent: async () => VhdImage.open(new MemorySource(other)) });
  assert.ok(bad.findings.some((f) => f.reason === 'PARENT_MISMATCH' && f.severity === 'corruption'));
});

test('qemu-img\'s dynamic VHD checks clean', { skip: needTool('qemu-img', 'qemu-io') }, async () => {
  const dir = shmScratch('vhd-check-');
  const path = join(dir, 'q.vhd');
  await must('qemu-img', ['create', '-q', '-f', 'vpc', path, '20M']);
  await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 1 0 3M', '-c', 'write -P 2 9M 4k', path]);
  const r = await checkVhd(new MemorySource(readFileSync(path)));
  assert.deepEqual(serious(r), []);
  assert.equal(r.allocatedBlocks, 3);
});

test('an interrupted allocation (a block written over the old footer, the footer not yet moved): found, and repaired by \'all\'', async () => {
  const { bytes, footerAt } = await clean();
  // The new block: its bitmap where the footer was, part of its data; no footer after it.
  const crashed = new Uint8Array(footerAt + 512 + 300 * KiB);
  crashed.set(bytes.subarray(0, footerAt));
  crashed.fill(0xff, footerAt, footerAt + 512);
  crashed.set(pattern(9, 300 * KiB), footerAt + 512);
  const before = await readAll(bytes);
  assert.ok(bytesEqual(await readAll(crashed), before), 'read-only, it opens from the copy at offset 0 and reads as before');
  await assert.rejects(VhdImage.open(new MemorySource(crashed.slice()), { readOnly: false }), (e: VhdxError) => e.reason === 'FOOTER_MISSING');
  const r = await checkVhd(new MemorySource(crashed.slice()));
  assert.ok(r.findings.some((f) => f.reason === 'FOOTER_MISSING' && f.repairableBy === 'all'));
  assert.ok(r.findings.some((f) => f.reason === 'LEAKED_SPACE' && f.repairableBy === 'all'));
  const src = new MemorySource(crashed.slice());
  const leaksOnly = await repairVhd(src, { mode: 'leaks' });
  assert.ok(leaksOnly.refusal);
  assert.ok(bytesEqual(src.bytes(), crashed), 'a refused repair changes nothing');
  const fixed = await repairVhd(src, { mode: 'all' });
  assert.equal(fixed.refusal, null);
  assert.deepEqual(fixed.actions.map((a) => a.action), ['rewriteFooter', 'truncateLeaks']);
  assert.deepEqual(fixed.after.findings, []);
  assert.ok(bytesEqual(src.bytes(), bytes), 'the file is as it was before the interrupted write');
  const rw = await VhdImage.open(src, { readOnly: false });
  await rw.close();
});

test('a block written whose BAT entry never landed, the footer after it: a leak \'leaks\' cuts off', async () => {
  const { bytes, footerAt } = await clean();
  const leaky = new Uint8Array(footerAt + 512 + BS + 512);
  leaky.set(bytes.subarray(0, footerAt));
  leaky.fill(0xff, footerAt, footerAt + 512);
  leaky.set(bytes.subarray(footerAt), footerAt + 512 + BS);
  const r = await checkVhd(new MemorySource(leaky));
  assert.equal(r.leaks, 1);
  assert.equal(r.leakedBytes, BS + 512);
  assert.equal(r.corruptions, 0);
  const src = new MemorySource(leaky.slice());
  const fixed = await repairVhd(src, { mode: 'leaks' });
  assert.deepEqual(fixed.actions.map((a) => a.action), ['truncateLeaks']);
  assert.equal(fixed.leaksFixed, 1);
  assert.ok(bytesEqual(src.bytes(), bytes));
});

test('a damaged or different footer copy at offset 0: corruption that \'all\' rewrites from the end', async () => {
  for (const damage of ['checksum', 'different']) {
    const { bytes } = await clean();
    if (damage === 'checksum') bytes[200] = 1;
    else {
      // A valid copy that says something else (its time stamp).
      const f = FOOTER.decode(bytes.subarray(0, 512));
      FOOTER.encode({ ...f, timestamp: f.timestamp + 1 }, bytes, 0);
    }
    const r = await checkVhd(new MemorySource(bytes));
    assert.ok(r.findings.some((f) => f.structure === 'VHD footer copy' && f.severity === 'corruption' && f.repairableBy === 'all'), JSON.stringify(r.findings));
    await assert.rejects(VhdImage.open(new MemorySource(bytes.slice()), { readOnly: false }), (e: VhdxError) => e.reason === 'FOOTER_MISMATCH');
    const src = new MemorySource(bytes.slice());
    const fixed = await repairVhd(src, { mode: 'all' });
    assert.deepEqual(fixed.actions.map((a) => a.action), ['rewriteFooterCopy'], damage);
    assert.deepEqual(fixed.after.findings, []);
  }
});

test('space inside the file that nothing names is reported, not moved', async () => {
  const { bytes, footerAt } = await clean();
  // A gap of one whole block before a block appended after it (block 5).
  const gap = new Uint8Array(footerAt + 2 * (BS + 512) + 512);
  gap.set(bytes.subarray(0, footerAt));
  const second = footerAt + BS + 512;
  gap.fill(0xff, second, second + 512);
  gap.set(bytes.subarray(footerAt), gap.length - 512);
  new DataView(gap.buffer).setUint32(1536 + 5 * 4, second / 512, false);
  const r = await checkVhd(new MemorySource(gap));
  const leak = r.findings.find((f) => f.reason === 'LEAKED_SPACE');
  assert.ok(leak && leak.repairableBy === null);
  const src = new MemorySource(gap.slice());
  const res = await repairVhd(src, { mode: 'all' });
  assert.deepEqual(res.actions, []);
  assert.ok(bytesEqual(src.bytes(), gap));
});

test('readers disagreeing on the size is a warning that names each reader\'s size', async () => {
  const { bytes } = await clean();
  patchFooter(bytes, () => ({ creatorApplication: 'wa\0\0', cylinders: 100, heads: 16, sectorsPerTrack: 10 }));
  const r = await checkVhd(new MemorySource(bytes));
  const w = r.findings.find((f) => f.reason === 'SIZE_RULES_DISAGREE');
  assert.ok(w && w.severity === 'warning');
  assert.match(w.message, /qemu 2\.6 to 9\.2 8192000, qemu 10 8388608/);
});
