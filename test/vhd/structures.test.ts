// VHD structures (src/vhd): every structure declared with defineStruct decodes its annotated
// fixture and encodes it back byte for byte, checksums included (the footer and dynamic header
// fixtures are qemu-img's own bytes, so their one's-complement sums come from qemu, not from the
// code under test); the BAT bit order, the CHS geometry and the size rules per creator.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { hex } from '../helpers/hex.js';
import { assertBytesEqual } from '../helpers/hex.js';
import { FOOTER } from '../../src/vhd/footer.js';
import { DYNAMIC_HEADER } from '../../src/vhd/dynamic-header.js';
import { PARENT_LOCATOR_ENTRY, PlatformCode, decodeLocatorPath, encodeLocatorPath, locatorSpaceBytes } from '../../src/vhd/parent-locator.js';
import { BAT_ENTRY, bitRuns, bitSet, setBits, bitmapBytes, batBytes } from '../../src/vhd/bat.js';
import { chsForSectors, chsRoundUp, chsSectors, diskSizeOf, isChsExact, sizesByReader, type SizeRule } from '../../src/vhd/geometry.js';
import type { VhdxError } from '../../src/errors.js';

/** Footer copy at offset 0 of `qemu-img create -f vpc -o subformat=dynamic q.vhd 100M` (qemu 7.2). */
const QEMU_FOOTER = hex.padTo(512)`
  63 6f 6e 65 63 74 69 78   # cookie "conectix"
  00 00 00 02               # features: the reserved bit
  00 01 00 00               # file format version 1.0
  00 00 00 00 00 00 02 00   # data offset 512: the dynamic header
  32 a6 d9 7a               # time stamp (seconds since 2000)
  71 65 6d 75               # creator application "qemu"
  00 05 00 03               # creator version 5.3 (Virtual PC 2007's, as qemu writes)
  57 69 32 6b               # creator host OS "Wi2k"
  00 00 00 00 06 40 20 00   # original size 104865792 (100 MiB rounded up to the CHS geometry)
  00 00 00 00 06 40 20 00   # current size 104865792
  03 ec 0c 11               # geometry: 1004 cylinders, 12 heads, 17 sectors per track
  00 00 00 03               # disk type 3: dynamic
  ff ff ed 23               # checksum, as qemu computed it
  c8 5e d0 1c 0b d6 48 41 8d e9 d6 3e ff 6b e2 05   # unique id, stored in RFC 4122 order
  00                        # saved state: no
                            # reserved: 427 zero bytes
`;

/** Its dynamic header, at offset 512. */
const QEMU_DYNAMIC_HEADER = hex.padTo(1024)`
  63 78 73 70 61 72 73 65   # cookie "cxsparse"
  ff ff ff ff ff ff ff ff   # data offset: unused, all ones
  00 00 00 00 00 00 06 00   # table offset 1536
  00 01 00 00               # header version 1.0
  00 00 00 33               # max table entries 51 (100 MiB + 8 KiB in 2 MiB blocks)
  00 20 00 00               # block size 2 MiB
  ff ff f4 44               # checksum, as qemu computed it
  00*16                     # parent unique id: none
  00 00 00 00               # parent time stamp
  00 00 00 00               # reserved
  00*512                    # parent unicode name: none
  00*192                    # eight unused parent locator entries
                            # reserved: 256 zero bytes
`;

/** A Windows relative-path locator entry as Windows writes it (data space in bytes). */
const W2RU_ENTRY = hex`
  57 32 72 75               # platform code "W2ru"
  00 00 10 00               # platform data space 4096 (bytes, as Windows writes it)
  00 00 00 56               # platform data length 86
  00 00 00 00               # reserved
  00 00 00 00 00 00 10 00   # platform data offset 0x1000
`;

const BAT_ENTRY_FIXTURE = hex`00 00 00 07  # block at sector 7 (file offset 3584)`;

/** What these tests use of a structure declared with defineStruct, whatever its fields. */
interface AnyStruct {
  readonly name: string;
  readonly size: number;
  decode(bytes: Uint8Array): object;
  encode(value: object, into?: Uint8Array, at?: number): Uint8Array;
  checksumOk(bytes: Uint8Array): boolean;
}

const FIXTURES = new Map<AnyStruct, Uint8Array[]>([
  [FOOTER, [QEMU_FOOTER]],
  [DYNAMIC_HEADER, [QEMU_DYNAMIC_HEADER]],
  [PARENT_LOCATOR_ENTRY, [W2RU_ENTRY]],
  [BAT_ENTRY, [BAT_ENTRY_FIXTURE]],
]);

const here = dirname(fileURLToPath(import.meta.url));
const srcVhd = join(here, '..', '..', 'src', 'vhd');
const isStruct = (x: unknown): x is AnyStruct =>
  x !== null && typeof x === 'object' && 'decode' in x && typeof x.decode === 'function' && 'encode' in x && typeof x.encode === 'function' && 'fields' in x && typeof x.fields === 'object';

test('every structure src/vhd declares has a fixture here', async () => {
  const found: AnyStruct[] = [];
  for (const file of readdirSync(srcVhd).filter((f) => f.endsWith('.ts'))) {
    const module: Record<string, unknown> = await import(pathToFileURL(join(srcVhd, file)).href);
    for (const v of Object.values(module)) if (isStruct(v)) found.push(v);
  }
  assert.deepEqual(found.map((s) => s.name).sort(), [...FIXTURES.keys()].map((s) => s.name).sort());
});

for (const [struct, list] of FIXTURES) {
  test(`${struct.name}: decode then encode gives back the fixture byte for byte`, () => {
    for (const bytes of list) {
      assert.equal(bytes.length, struct.size);
      const value = struct.decode(bytes);
      assert.ok(struct.checksumOk(bytes));
      assertBytesEqual(struct.encode(value), bytes, struct.name);
      const dirty = new Uint8Array(struct.size + 5).fill(0x5a);
      struct.encode(value, dirty, 5);
      assertBytesEqual(dirty.subarray(5), bytes, `${struct.name} at an offset`);
    }
  });
}

test('the footer decodes to the values qemu wrote, big-endian', () => {
  const f = FOOTER.decode(QEMU_FOOTER);
  assert.equal(f.creatorApplication, 'qemu');
  assert.equal(f.currentSize, 104865792);
  assert.equal(f.originalSize, 104865792n);
  assert.deepEqual([f.cylinders, f.heads, f.sectorsPerTrack], [1004, 12, 17]);
  assert.equal(f.diskType, 3);
  assert.equal(f.dataOffset, 512n);
  assert.equal(f.uniqueId, 'c85ed01c-0bd6-4841-8de9-d63eff6be205');
  assert.equal(f.checksum, 0xffffed23);
  const h = DYNAMIC_HEADER.decode(QEMU_DYNAMIC_HEADER);
  assert.equal(h.tableOffset, 1536);
  assert.equal(h.maxTableEntries, 51);
  assert.equal(h.blockSize, 2 * 1024 * 1024);
  assert.equal(h.dataOffset, 0xffffffffffffffffn);
  assert.equal(h.parentLocators.length, 8);
});

test('a footer whose checksum does not match is refused with BAD_CHECKSUM, one with another cookie with BAD_SIGNATURE', () => {
  const b = QEMU_FOOTER.slice();
  b[100] = 1; // a reserved byte: only the checksum catches it
  assert.throws(() => FOOTER.decode(b), (e: VhdxError) => e.reason === 'BAD_CHECKSUM');
  const c = QEMU_FOOTER.slice();
  c[0] = 0x43;
  assert.throws(() => FOOTER.decode(c), (e: VhdxError) => e.reason === 'BAD_SIGNATURE');
});

test('parent locator data: UTF-16LE Windows paths, UTF-8 MacX URLs, Data Space in bytes or sectors', () => {
  const e = PARENT_LOCATOR_ENTRY.decode(W2RU_ENTRY);
  assert.equal(e.platformCode, PlatformCode.W2RU);
  assert.equal(locatorSpaceBytes(e), 4096);
  assert.equal(locatorSpaceBytes({ ...e, platformDataSpace: 1 }), 512); // sectors, as the specification says
  const data = encodeLocatorPath(PlatformCode.W2RU, '.\\päth\\p.vhd');
  assert.deepEqual([...data.subarray(0, 4)], [0x2e, 0, 0x5c, 0]);
  assert.equal(decodeLocatorPath(PlatformCode.W2RU, data), '.\\päth\\p.vhd');
  assert.equal(decodeLocatorPath(PlatformCode.MACX, encodeLocatorPath(PlatformCode.MACX, 'file:///a/é.vhd')), 'file:///a/é.vhd');
  assert.equal(decodeLocatorPath(PlatformCode.MAC, new Uint8Array(8)), null);
});

test('sector bitmaps are most significant bit first, padded to a sector', () => {
  assert.equal(bitmapBytes(2 * 1024 * 1024), 512);
  assert.equal(bitmapBytes(512 * 1024), 512);
  assert.equal(bitmapBytes(8 * 1024 * 1024), 2048);
  assert.equal(batBytes(51), 512);
  assert.equal(batBytes(129), 1024);
  const b = new Uint8Array(2);
  setBits(b, 0, 1, true);
  assert.equal(b[0], 0x80);
  setBits(b, 3, 7, true);
  assert.deepEqual([...b], [0x9f, 0xc0]);
  assert.ok(bitSet(b, 9) && !bitSet(b, 10));
  assert.deepEqual(bitRuns(b, 0, 16), [
    { present: true, count: 1 },
    { present: false, count: 2 },
    { present: true, count: 7 },
    { present: false, count: 6 },
  ]);
});

test('CHS geometry: the specification\'s algorithm, qemu\'s rounding up (100 MiB becomes 100 MiB + 8 KiB)', () => {
  assert.deepEqual(chsForSectors(204816), { cylinders: 1004, heads: 12, sectorsPerTrack: 17 });
  assert.equal(chsRoundUp(100 * 1024 * 1024), 104865792);
  assert.ok(isChsExact(104865792));
  assert.ok(!isChsExact(100 * 1024 * 1024));
  assert.deepEqual(chsForSectors(2 ** 40), { cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
  // Every size's geometry describes at most that size.
  for (const sectors of [1, 17, 1000, 65536, 1 << 20, 65535 * 16 * 63, 65535 * 16 * 63 + 1, 3e8]) {
    assert.ok(chsSectors(chsForSectors(sectors)) <= sectors, `${sectors}`);
  }
});

test('size rules: which size each reader family gives per creator application', () => {
  const base = FOOTER.decode(QEMU_FOOTER);
  // 100 MiB stored, the geometry of 100 MiB + 8 KiB: the two answers differ by 8 KiB.
  const f = (app: string) => ({ ...base, creatorApplication: app, currentSize: 100 * 1024 * 1024 });
  const chs = 104865792;
  const cur = 100 * 1024 * 1024;
  const table = {
    'vpc ': { auto: chs, legacy: chs },
    qemu: { auto: chs, legacy: chs },
    qem2: { auto: cur, legacy: cur },
    'win ': { auto: cur, legacy: cur },
    'd2v ': { auto: cur, legacy: cur },
    CTXS: { auto: cur, legacy: cur },
    'tap\0': { auto: cur, legacy: cur },
    'wa\0\0': { auto: cur, legacy: chs },
    vhdx: { auto: cur, legacy: chs },
  };
  for (const [app, want] of Object.entries(table)) {
    assert.equal(diskSizeOf(f(app)).size, want.auto, `auto ${JSON.stringify(app)}`);
    assert.equal(diskSizeOf(f(app), 'current-size').size, cur);
    assert.equal(diskSizeOf(f(app), 'chs').size, chs);
    assert.deepEqual(sizesByReader(f(app)), { currentSize: cur, originalSize: 104865792, qemuLegacy: want.legacy, qemu10: want.auto }, JSON.stringify(app));
  }
  // The maximum geometry means "use the current size" for every creator.
  const max = { ...f('vpc '), cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
  assert.equal(diskSizeOf(max).size, cur);
  assert.equal(diskSizeOf(max).otherSize, null);
  // A rule that does not exist, on purpose.
  assert.throws(() => diskSizeOf(base, 'biggest' as SizeRule), (e: VhdxError) => e.reason === 'BAD_ARGUMENT');
});
