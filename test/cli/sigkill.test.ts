// SIGKILL of a real `vhdx convert -O vhdx` at several moments: whatever is left behind must be
// an image that `vhdx check` and `qemu-img check` find clean or leaking only (exit 0 or 3), and
// that reads back without error; or no image yet (killed while it was being created: the file
// identifier is written last, so a half-made file is not taken for a VHDX).
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, needTool } from '../helpers/env.js';
import { exec, shmScratch } from '../helpers/tools.js';
import { openFile } from '../../src/node.js';

const MiB = 1024 * 1024;
const dir = shmScratch('vhdx-sigkill-');
const src = join(dir, 'src.raw');
const SIZE = 192 * MiB;

// 4 MiB of data, 1 MiB of zeros, repeated: allocations and holes.
const data = new Uint8Array(SIZE);
for (let off = 0; off < SIZE; off += 5 * MiB) {
  for (let i = off; i < Math.min(SIZE, off + 4 * MiB); i += 512) data[i] = ((i / 512) % 251) + 1;
}
writeFileSync(src, data);

/** Start a conversion and SIGKILL it once the destination holds `fraction` of the source's size. */
function convertAndKill(dst: string, fraction: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; killedAt: number | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, 'convert', '-f', 'raw', '-O', 'vhdx', '-o', 'block_size=1M', src, dst], { stdio: 'ignore' });
    let killedAt: number | null = null;
    const timer = setInterval(() => {
      const size = existsSync(dst) ? statSync(dst).size : 0;
      if (size >= fraction * SIZE) {
        killedAt = size;
        child.kill('SIGKILL');
        clearInterval(timer);
      }
    }, 1);
    child.on('exit', (code, signal) => {
      clearInterval(timer);
      resolve({ code, signal, killedAt });
    });
  });
}

const FRACTIONS = [0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0];

test('SIGKILL of vhdx convert leaves a clean or leaking-only image', { skip: needTool('qemu-img'), timeout: 120_000 }, async (t) => {
  let images = 0;
  for (const fraction of FRACTIONS) {
    await t.test(`killed at ${Math.round(fraction * 100)}% of the output size`, async () => {
      const dst = join(dir, `dst-${fraction}.vhdx`);
      rmSync(dst, { force: true });
      const r = await convertAndKill(dst, fraction);
      if (r.signal !== 'SIGKILL') {
        // It finished first: the result must be complete and equal to the source.
        assert.equal(r.code, 0);
      }
      if (!existsSync(dst)) return;
      const ours = await exec(process.execPath, [cliPath, 'check', dst]);
      if (ours.code === 63 && /not a VHDX|NOT_VHDX|vhdxfile/i.test(ours.stdout + ours.stderr)) return; // killed during create
      images++;
      assert.ok(ours.code === 0 || ours.code === 3, `vhdx check exit ${ours.code}: ${ours.stdout}${ours.stderr}`);
      // A dirty log (killed between a log entry and its LogGuid clearing) is replayed first by
      // `check -r all`, as qemu-img refuses images with a dirty log.
      const repaired = await exec(process.execPath, [cliPath, 'check', '-r', 'all', dst]);
      assert.ok(repaired.code === 0 || repaired.code === 3, `vhdx check -r all exit ${repaired.code}: ${repaired.stdout}${repaired.stderr}`);
      const q = await exec('qemu-img', ['check', '-f', 'vhdx', dst]);
      assert.ok(q.code === 0 || q.code === 3, `qemu-img check exit ${q.code}: ${q.stdout}${q.stderr}`);
      // Every byte reads back as the source's byte or zero (data not yet committed reads as the
      // unallocated zeros it replaced).
      const img = await openFile(dst);
      try {
        assert.equal(img.size, SIZE);
        const back = new Uint8Array(SIZE);
        await img.read(0, back);
        for (let i = 0; i < SIZE; i++) {
          if (back[i] !== 0 && back[i] !== data[i]) assert.fail(`byte ${i} reads ${back[i]}, neither the source's ${data[i]} nor 0`);
        }
        if (r.signal !== 'SIGKILL') assert.ok(Buffer.compare(back, data) === 0, 'a finished conversion equals its source');
      } finally {
        await img.close();
      }
    });
  }
  assert.ok(images >= 4, `only ${images} kills left an image to check`);
});
