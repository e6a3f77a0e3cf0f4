// azureProblems (src/vhd/azure.ts): a fixed VHD of whole MiB whose file is its size + 512 passes;
// each broken rule is named, with the next valid size for a size that is not whole MiB; the
// disks azureCreateOptions describes are read at their exact size by every reader family.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AZURE_MAX_SIZE, MemorySource, azureCreateOptions, azureProblems, azureSize } from '../../src/index.js';
import { FOOTER } from '../../src/vhd/footer.js';
import { chsForSectors, isChsExact, sizesByReader } from '../../src/vhd/geometry.js';
import { MiB, newVhd, patchFooter } from '../helpers/vhd.js';

const rules = async (bytes: Uint8Array) => (await azureProblems(new MemorySource(bytes))).map((p) => `${p.severity}:${p.rule}`).sort();

test('a fixed VHD of whole MiB, footer at the end, read alike by every reader, breaks no rule', async () => {
  const { src } = await newVhd({ size: 100 * MiB, subformat: 'fixed' });
  assert.deepEqual(await azureProblems(src), []);
});

test('each broken Azure rule is named', async () => {
  const { src: dyn } = await newVhd({ size: 100 * MiB });
  assert.deepEqual(await rules(dyn.bytes()), ['error:fixed']);
  const { src: odd } = await newVhd({ size: 100 * MiB + 4096, subformat: 'fixed' });
  const p = await azureProblems(odd);
  assert.deepEqual(p.map((x) => x.rule), ['whole-mib']);
  assert.match(p[0]!.message, new RegExp(`next valid size is ${101 * MiB} bytes`));
  const { src: fixed } = await newVhd({ size: 4 * MiB, subformat: 'fixed' });
  const bytes = fixed.bytes().slice();
  const padded = new Uint8Array(bytes.length + 512);
  padded.set(bytes.subarray(0, bytes.length - 512));
  padded.set(bytes.subarray(bytes.length - 512), bytes.length);
  assert.deepEqual(await rules(padded), ['error:file-size']);
  const badSum = bytes.slice();
  badSum[badSum.length - 100] = 9;
  assert.deepEqual(await rules(badSum), ['error:checksum']);
  assert.deepEqual(await rules(bytes.subarray(0, bytes.length - 512)), ['error:footer']);
  // A creator qemu before 10 sizes by the geometry, which describes another size.
  const wa = patchFooter(bytes.slice(), () => ({ creatorApplication: 'wa\0\0', cylinders: 100, heads: 4, sectorsPerTrack: 17 }), { at0: false });
  assert.deepEqual(await rules(wa), ['warning:same-size-everywhere']);
});

test('an Azure disk made from azureCreateOptions is read at its size by every reader family, whole MiB or refused with the next one', async () => {
  // 10 MiB and 100 MiB are not CHS-exact: a creator outside qemu 2.6-9.2's Current Size list would read short there.
  for (const size of [10 * MiB, 37 * MiB]) {
    assert.equal(isChsExact(size), false);
    const { src } = await newVhd(azureCreateOptions(size));
    assert.deepEqual(await azureProblems(src), []);
    const b = src.bytes();
    const f = FOOTER.decode(b.subarray(b.length - 512));
    assert.equal(f.creatorApplication, 'win ');
    assert.deepEqual({ cylinders: f.cylinders, heads: f.heads, sectorsPerTrack: f.sectorsPerTrack }, chsForSectors(size / 512), "the specification's geometry, as Hyper-V writes it");
    const r = sizesByReader(f);
    assert.deepEqual([r.currentSize, r.originalSize, r.qemuLegacy, r.qemu10], [size, size, size, size]);
  }
  assert.equal(azureSize(3 * MiB + 1, true), 4 * MiB);
  assert.throws(() => azureSize(3 * MiB + 1), { reason: 'BAD_ARGUMENT', message: /next valid size is 4194304 bytes/ });
  assert.equal(azureSize(AZURE_MAX_SIZE), AZURE_MAX_SIZE);
  assert.throws(() => azureSize(AZURE_MAX_SIZE + 1, true), /at most/);
});
