// Hostile and damaged VHDs: each kind of damage gives its typed error (code and reason) at open,
// at the first request that needs the damaged part, or as a check finding; nothing allocates by
// a number read from the file before checking it. Then a seeded fuzz loop over mutated VHDs
// (fields set to hostile values with checksums resealed, raw byte flips, cut files): only
// VhdxError may escape the open, the reads, block status, writes and check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemorySource, VhdImage, VhdxError, checkVhd, repairVhd, type VhdParentRequest } from '../../src/index.js';
import { FOOTER, type Footer } from '../../src/vhd/footer.js';
import { DYNAMIC_HEADER, type DynamicHeader } from '../../src/vhd/dynamic-header.js';
import { pattern } from '../helpers/model.js';
import { seededRandom } from '../helpers/hex.js';
import { KiB, MiB, copyOf, newVhd, patchFooter } from '../helpers/vhd.js';

/** A dynamic VHD of 4 MiB in 1 MiB blocks, blocks 0 and 2 written: its bytes. */
async function dynamicBytes() {
  const { src } = await newVhd({ size: 4 * MiB, blockSize: MiB });
  const img = await VhdImage.open(src, { readOnly: false });
  await img.write(0, pattern(1, 4096));
  await img.write(2 * MiB, pattern(2, 4096));
  await img.close();
  return src.bytes().slice();
}

function patchHeader(bytes: Uint8Array, edit: (h: DynamicHeader) => Partial<DynamicHeader>): Uint8Array {
  const h = DYNAMIC_HEADER.decode(bytes.subarray(512, 1536), { lenient: true });
  DYNAMIC_HEADER.encode({ ...h, ...edit(h) }, bytes, 512);
  return bytes;
}

const bat = (bytes: Uint8Array, i: number, v: number) => new DataView(bytes.buffer, bytes.byteOffset).setUint32(1536 + i * 4, v >>> 0, false);
const batGet = (bytes: Uint8Array, i: number) => new DataView(bytes.buffer, bytes.byteOffset).getUint32(1536 + i * 4, false);

async function rejects(promise: Promise<unknown>, reason: string, code = 'EINVAL'): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof VhdxError, `not a VhdxError: ${e instanceof Error ? e.stack : e}`);
    assert.equal(e.reason, reason, e.message);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

async function finding(bytes: Uint8Array, reason: string) {
  const r = await checkVhd(new MemorySource(bytes));
  assert.ok(r.findings.some((f) => f.reason === reason && f.severity === 'corruption'), `${reason} not in ${JSON.stringify(r.findings)}`);
  return r;
}

test('not a VHD, an empty file, a footer with a bad checksum: NOT_VHD, EMPTY_FILE, BAD_CHECKSUM', async () => {
  await rejects(VhdImage.open(new MemorySource(pattern(3, 4096))), 'NOT_VHD');
  await rejects(VhdImage.open(new MemorySource()), 'EMPTY_FILE');
  assert.equal((await checkVhd(new MemorySource(pattern(3, 4096)))).supported, false);
  const { src } = await newVhd({ size: MiB, subformat: 'fixed' });
  const fixed = src.bytes().slice();
  fixed[fixed.length - 512 + 100] = 1; // reserved byte: only the checksum sees it
  await rejects(VhdImage.open(new MemorySource(fixed)), 'BAD_CHECKSUM');
  await finding(fixed, 'BAD_CHECKSUM');
  const dyn = await dynamicBytes();
  dyn[100]! ^= 1;
  dyn[dyn.length - 512 + 100]! ^= 1; // both copies
  await rejects(VhdImage.open(new MemorySource(dyn)), 'BAD_CHECKSUM');
});

test('footer fields: disk type, version, a size beyond 2^53 or the limits, a fixed disk cut short', async () => {
  const cases: [Partial<Footer>, string][] = [
    [{ diskType: 5 }, 'BAD_DISK_TYPE'],
    [{ formatVersion: 0x00020000 }, 'BAD_VERSION'],
    [{ currentSize: 4 * 1024 ** 4 }, 'BAD_VIRTUAL_SIZE'],
  ];
  for (const [edit, reason] of cases) await rejects(VhdImage.open(new MemorySource(patchFooter(await dynamicBytes(), () => edit))), reason);
  const huge = await dynamicBytes();
  for (const at of [0, huge.length - 512]) {
    new DataView(huge.buffer).setBigUint64(at + 48, 0xffffffffffffffffn, false);
    FOOTER.seal(huge.subarray(at, at + 512));
  }
  await rejects(VhdImage.open(new MemorySource(huge)), 'NUMBER_TOO_LARGE', 'EOVERFLOW');
  const { src } = await newVhd({ size: 2 * MiB, subformat: 'fixed' });
  const cut = src.bytes().slice(MiB); // the footer, after only 1 MiB of data
  await rejects(VhdImage.open(new MemorySource(cut)), 'TRUNCATED_FILE');
  // A Virtual PC footer whose geometry is larger than the data the file holds.
  const { src: s2 } = await newVhd({ size: 2 * MiB, subformat: 'fixed' });
  const vpc = patchFooter(s2.bytes().slice(), () => ({ creatorApplication: 'vpc ', cylinders: 1000, heads: 16, sectorsPerTrack: 63 }), { at0: false });
  await rejects(VhdImage.open(new MemorySource(vpc)), 'BAD_VIRTUAL_SIZE');
  assert.equal((await VhdImage.open(new MemorySource(vpc), { sizeRule: 'current-size' })).size, 2 * MiB);
});

test('dynamic header: checksum, block size, a BAT past the end of the file, a huge table count, a BAT too small', async () => {
  const badSum = await dynamicBytes();
  badSum[512 + 900] = 7;
  await rejects(VhdImage.open(new MemorySource(badSum)), 'BAD_CHECKSUM');
  await rejects(VhdImage.open(new MemorySource(patchHeader(await dynamicBytes(), () => ({ blockSize: 3 * MiB })))), 'BAD_BLOCK_SIZE');
  await rejects(VhdImage.open(new MemorySource(patchHeader(await dynamicBytes(), () => ({ tableOffset: 2 ** 40 })))), 'REGION_OUT_OF_BOUNDS');
  // 2^32 − 1 entries would be a 16 GiB table: refused from the file's size, nothing allocated.
  await rejects(VhdImage.open(new MemorySource(patchHeader(await dynamicBytes(), () => ({ maxTableEntries: 0xffffffff })))), 'REGION_OUT_OF_BOUNDS');
  await rejects(VhdImage.open(new MemorySource(patchHeader(await dynamicBytes(), () => ({ maxTableEntries: 3 })))), 'BAT_TOO_SMALL');
  await rejects(VhdImage.open(new MemorySource(patchHeader(await dynamicBytes(), () => ({ tableOffset: 512 })))), 'REGION_OVERLAP');
  await finding(patchHeader(await dynamicBytes(), () => ({ tableOffset: 2 ** 40 })), 'REGION_OUT_OF_BOUNDS');
});

test('BAT entries: past the end of the file, over the BAT, two blocks in one place', async () => {
  const past = await dynamicBytes();
  bat(past, 1, 0x00ffffff);
  const img = await VhdImage.open(new MemorySource(past));
  const buf = new Uint8Array(512);
  // A BAT page is validated whole when first read: any block it maps is refused.
  await rejects(img.read(MiB, buf), 'BAT_ENTRY_OUT_OF_BOUNDS');
  await rejects(img.read(0, buf), 'BAT_ENTRY_OUT_OF_BOUNDS');
  await rejects(VhdImage.open(new MemorySource(past), { readOnly: false }), 'BAT_ENTRY_OUT_OF_BOUNDS');
  await finding(past, 'BAT_ENTRY_OUT_OF_BOUNDS');
  const overBat = await dynamicBytes();
  bat(overBat, 1, 3); // the BAT's sector
  await rejects((await VhdImage.open(new MemorySource(overBat))).read(MiB, buf), 'BLOCK_OVERLAP');
  const twice = await dynamicBytes();
  bat(twice, 1, batGet(twice, 0));
  await rejects(VhdImage.open(new MemorySource(twice), { readOnly: false }), 'BLOCK_OVERLAP');
  const r = await finding(twice, 'BLOCK_OVERLAP');
  const repair = await repairVhd(new MemorySource(twice), { mode: 'all' });
  assert.ok(repair.refusal && repair.actions.length === 0, 'a repair that would need a guess changes nothing');
  assert.equal(r.corruptions >= 1, true);
});

test('parent locators: data past the end, or over the BAT, is BAD_PARENT_LOCATOR', async () => {
  const { src: psrc } = await newVhd({ size: 2 * MiB });
  const parent = await VhdImage.open(copyOf(psrc));
  const { src } = await newVhd({ parent, parentPaths: [{ platform: 'W2ru', path: '.\\parent.vhd' }] });
  for (const offset of [2 ** 40, 1536]) {
    const bytes = patchHeader(src.bytes().slice(), (h) => ({ parentLocators: h.parentLocators.map((e, i) => (i === 0 ? { ...e, platformDataOffset: offset } : e)) }));
    await rejects(VhdImage.open(new MemorySource(bytes)), 'BAD_PARENT_LOCATOR');
  }
  const long = patchHeader(src.bytes().slice(), (h) => ({ parentLocators: h.parentLocators.map((e, i) => (i === 0 ? { ...e, platformDataLength: 0x7fffffff } : e)) }));
  await rejects(VhdImage.open(new MemorySource(long)), 'BAD_PARENT_LOCATOR');
});


test('fuzz: mutated VHDs give only typed errors (open, reads, block status, a write, check, repair)', async (t) => {
  // Small seeds: fixed, dynamic with data in 4 KiB blocks, differencing over a fixed parent.
  const { src: fixedSrc } = await newVhd({ size: 64 * KiB, subformat: 'fixed' });
  const { src: dynSrc } = await newVhd({ size: 64 * KiB, blockSize: 4 * KiB });
  const dyn = await VhdImage.open(dynSrc, { readOnly: false });
  await dyn.write(5000, pattern(1, 9000));
  await dyn.write(60 * KiB, pattern(2, 100));
  await dyn.close();
  const parent = await VhdImage.open(copyOf(fixedSrc));
  const { src: diffSrc } = await newVhd({ parent, blockSize: 4 * KiB, parentPaths: [{ platform: 'W2ru', path: '.\\p.vhd' }, { platform: 'MacX', path: 'file:///p.vhd' }] });
  const diff = await VhdImage.open(diffSrc, { readOnly: false, parent: async () => VhdImage.open(copyOf(fixedSrc)) });
  await diff.write(7000, pattern(3, 3000));
  await diff.close();
  const seeds = [fixedSrc.bytes().slice(), dynSrc.bytes().slice(), diffSrc.bytes().slice()];
  const resolver = async (req: VhdParentRequest) => VhdImage.open(copyOf(fixedSrc), { depth: req.depth, chain: req.chain });

  const r = seededRandom(17);
  const pick = (n: number) => Math.floor(r() * n);
  const hostile = (): number => [0, 1, 511, 512, 0xffffffff, 0x7fffffff, 0x80000000, pick(2 ** 32), pick(70000)][pick(9)]!;
  const mutate = (seed: Uint8Array): Uint8Array => {
    let b = seed.slice();
    const kind = r();
    const reseal = r() < 0.8;
    if (kind < 0.35) {
      // A footer field (both copies), checksum resealed.
      const at = [8, 12, 16, 20, 24, 40, 44, 48, 52, 56, 58, 59, 60, 84][pick(14)]!;
      const v = hostile();
      for (const base of [0, b.length - 512]) {
        const f = b.subarray(base, base + 512);
        if (String.fromCharCode(...f.subarray(0, 8)) !== 'conectix') continue;
        if (at === 58 || at === 59 || at === 84) f[at] = v & 0xff;
        else if (at === 56) new DataView(f.buffer, f.byteOffset).setUint16(at, v & 0xffff, false);
        else new DataView(f.buffer, f.byteOffset).setUint32(at, v >>> 0, false);
        if (reseal) FOOTER.seal(f);
      }
    } else if (kind < 0.6 && b.length > 1536) {
      // A dynamic header field, or a locator entry's, checksum resealed.
      const h = b.subarray(512, 1536);
      const at = [8, 16, 20, 24, 28, 32, 40, 56, 60, 576, 580, 584, 588, 592, 596, 600, 604, 608][pick(18)]!;
      new DataView(h.buffer, h.byteOffset).setUint32(at, hostile() >>> 0, false);
      if (reseal) DYNAMIC_HEADER.seal(h);
    } else if (kind < 0.75 && b.length > 2048) {
      // A BAT entry.
      new DataView(b.buffer).setUint32(1536 + pick(16) * 4, r() < 0.5 ? hostile() >>> 0 : pick(b.length / 512), false);
    } else if (kind < 0.9) {
      for (let i = 0, n = 1 + pick(8); i < n; i++) b[pick(b.length)]! ^= 1 << pick(8);
    } else {
      b = b.subarray(0, pick(b.length));
    }
    return b;
  };
  let typed = 0;
  let opened = 0;
  const rounds = 1000;
  for (let i = 0; i < rounds; i++) {
    const bytes = mutate(seeds[i % seeds.length]!);
    const guard = async <T>(what: string, fn: () => Promise<T>): Promise<T | undefined> => {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof VhdxError)) throw new Error(`round ${i}, ${what}: ${e instanceof Error ? e.stack : e}`);
        typed++;
        return undefined;
      }
    };
    const img = await guard('open', () => VhdImage.open(new MemorySource(bytes.slice()), { parent: resolver }));
    if (img) {
      opened++;
      const n = Math.min(img.size, 16 * KiB);
      await guard('read head', () => img.read(0, new Uint8Array(n)));
      await guard('read tail', () => img.read(img.size - n, new Uint8Array(n)));
      if (img.size / (img.blockSize ?? img.size) <= 4096) await guard('block status', () => img.blockStatus(0, img.size));
      await img.close();
    }
    const rw = await guard('writable open', () => VhdImage.open(new MemorySource(bytes.slice()), { readOnly: false, parent: resolver }));
    if (rw) {
      await guard('write', () => rw.write(Math.min(rw.size - 600, 4000), new Uint8Array(600).fill(1)));
      await guard('close', () => rw.close());
    }
    const check = await checkVhd(new MemorySource(bytes.slice()), { parent: resolver });
    assert.equal(typeof check.corruptions, 'number');
    await guard('repair', () => repairVhd(new MemorySource(bytes.slice()), { mode: 'all', parent: resolver }));
  }
  t.diagnostic(`${rounds} mutated images: ${opened} opened, ${typed} typed errors`);
  assert.ok(opened > 50 && typed > 100, `${opened} opened, ${typed} typed errors`);
});
