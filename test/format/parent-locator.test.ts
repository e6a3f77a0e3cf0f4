// src/format/parent-locator.ts: the parent locator metadata item (MS-VHDX §2.6.2.6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PARENT_LOCATOR_ENTRY,
  PARENT_LOCATOR_HEADER,
  decodeParentLocator,
  encodeParentLocator,
} from '../../src/format/parent-locator.js';
import { LOCATOR_TYPE_VHDX } from '../../src/format/constants.js';
import { assertBytesEqual, assertRoundTrip, assertVhdxError, concat, hex, utf16le } from '../helpers/hex.js';
import { corpusBytes, needCorpus } from '../helpers/corpus-prefix.js';
import * as F from './fixtures/parent-locator.js';

test('header and entry structs: sizes, decode and identity', () => {
  assert.equal(PARENT_LOCATOR_HEADER.size, 20);
  assert.equal(PARENT_LOCATOR_ENTRY.size, 12);
  assert.deepEqual(assertRoundTrip(PARENT_LOCATOR_HEADER, F.PARENT_LOCATOR_HEADER_FIXTURE), F.PARENT_LOCATOR_HEADER_VALUE);
  assert.equal(F.PARENT_LOCATOR_HEADER_VALUE.locatorType, LOCATOR_TYPE_VHDX);
  assert.deepEqual(assertRoundTrip(PARENT_LOCATOR_ENTRY, F.LINKAGE_ENTRY_FIXTURE), F.LINKAGE_ENTRY_VALUE);
  assert.deepEqual(assertRoundTrip(PARENT_LOCATOR_ENTRY, F.RELATIVE_PATH_ENTRY_FIXTURE), F.RELATIVE_PATH_ENTRY_VALUE);
});

test('a whole locator: decode gives the keys and values in file order', () => {
  assert.equal(F.PARENT_LOCATOR_FIXTURE.length, 212);
  assert.deepEqual(decodeParentLocator(F.PARENT_LOCATOR_FIXTURE), F.PARENT_LOCATOR_VALUE);
});

test('encode(decode(bytes)) equals bytes, and encode packs key, value, key, value after the table', () => {
  assertBytesEqual(encodeParentLocator(decodeParentLocator(F.PARENT_LOCATOR_FIXTURE)), F.PARENT_LOCATOR_FIXTURE);
  assertBytesEqual(encodeParentLocator(F.PARENT_LOCATOR_VALUE), F.PARENT_LOCATOR_FIXTURE);
});

test('round trip of every key the notes name, non-ASCII paths included', () => {
  const loc = {
    locatorType: LOCATOR_TYPE_VHDX,
    entries: [
      { key: 'parent_linkage', value: '{83ad9a06-3f5b-4f5a-a4b6-9c8e0f4a5f21}' },
      { key: 'parent_linkage2', value: '{00000000-0000-0000-0000-000000000000}' },
      { key: 'relative_path', value: '..\\Ünïcode dir\\parent €.vhdx' },
      { key: 'volume_path', value: '\\\\?\\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\\VMs\\parent.vhdx' },
      { key: 'absolute_win32_path', value: '\\\\?\\C:\\VMs\\parent.vhdx' },
    ],
  };
  const b = encodeParentLocator(loc);
  assert.deepEqual(decodeParentLocator(b), loc);
  assertBytesEqual(encodeParentLocator(decodeParentLocator(b)), b);
  assert.equal(b.length, 20 + 5 * 12 + loc.entries.reduce((n, e) => n + 2 * (e.key.length + e.value.length), 0));
});

test('an empty locator: header only', () => {
  const b = encodeParentLocator({ locatorType: LOCATOR_TYPE_VHDX, entries: [] });
  assertBytesEqual(b, hex`${F.PARENT_LOCATOR_HEADER_FIXTURE.subarray(0, 18)} 00 00`);
  assert.deepEqual(decodeParentLocator(b), { locatorType: LOCATOR_TYPE_VHDX, entries: [] });
});

test('keys are case-sensitive: keys differing only in case are not duplicates', () => {
  const loc = { locatorType: LOCATOR_TYPE_VHDX, entries: [{ key: 'relative_path', value: 'a' }, { key: 'Relative_Path', value: 'b' }] };
  assert.deepEqual(decodeParentLocator(encodeParentLocator(loc)), loc);
});

type ParentLocatorEntry = ReturnType<typeof PARENT_LOCATOR_ENTRY.decode>;

/** A copy of the fixture with entry `i`'s field `field` (a PARENT_LOCATOR_ENTRY field) changed. */
function withEntry(i: number, change: Partial<ParentLocatorEntry>): Uint8Array {
  const b = F.PARENT_LOCATOR_FIXTURE.slice();
  const at = 20 + i * 12;
  const e = PARENT_LOCATOR_ENTRY.decode(b.subarray(at));
  PARENT_LOCATOR_ENTRY.encode({ ...e, ...change }, b, at);
  return b;
}

test('a duplicate key is BAD_PARENT_LOCATOR', () => {
  // Entry 1 names entry 0's key.
  const b = withEntry(1, { keyOffset: F.LINKAGE_ENTRY_VALUE.keyOffset, keyLength: F.LINKAGE_ENTRY_VALUE.keyLength });
  const e = assertVhdxError(() => decodeParentLocator(b, 0x210028), 'BAD_PARENT_LOCATOR', 'EINVAL');
  assert.match(e.message, /duplicate key "parent_linkage"/);
  assert.match(e.message, /parent locator at file offset 0x210028/);
  // The encoder refuses to write what the decoder would refuse to read.
  assertVhdxError(
    () => encodeParentLocator({ locatorType: LOCATOR_TYPE_VHDX, entries: [{ key: 'k', value: '1' }, { key: 'k', value: '2' }] }),
    'BAD_ARGUMENT',
  );
  assertVhdxError(() => encodeParentLocator({ locatorType: LOCATOR_TYPE_VHDX, entries: [{ key: 'k', value: '' }] }), 'BAD_ARGUMENT');
  assertVhdxError(() => encodeParentLocator({ locatorType: LOCATOR_TYPE_VHDX, entries: [{ key: 'k', value: 'x'.repeat(40000) }] }), 'BAD_ARGUMENT');
});

test('offsets and lengths out of bounds or malformed are BAD_PARENT_LOCATOR', () => {
  const size = F.PARENT_LOCATOR_FIXTURE.length; // 212
  const bad: [string, number, Partial<ParentLocatorEntry>][] = [
    ['value past the end', 1, { valueOffset: size - 36 }],
    ['value offset far beyond the item', 1, { valueOffset: 0xffffff00 }],
    ['key past the end', 0, { keyOffset: size - 2, keyLength: 4 }],
    ['key inside the entry table', 0, { keyOffset: 20 }],
    ['value inside the header', 1, { valueOffset: 0 }],
    ['odd key length', 0, { keyLength: 27 }],
    ['odd value length', 1, { valueLength: 37 }],
    ['empty key', 0, { keyLength: 0 }],
  ];
  for (const [what, i, change] of bad) {
    const e = assertVhdxError(() => decodeParentLocator(withEntry(i, change)), 'BAD_PARENT_LOCATOR', 'EINVAL');
    assert.match(e.message, new RegExp(`entry ${i}`), what);
  }
  // Exactly up to the end is fine.
  assert.equal(decodeParentLocator(withEntry(1, { valueOffset: size - 2, valueLength: 2 })).entries[1]!.value, 'x');
});

test('more entries than the item holds is BAD_PARENT_LOCATOR; a short header is SHORT_READ', () => {
  const b = F.PARENT_LOCATOR_FIXTURE.slice();
  b[18] = 0xff; // KeyValueCount 255: a 3080-byte table in a 212-byte item
  assertVhdxError(() => decodeParentLocator(b), 'BAD_PARENT_LOCATOR', 'EINVAL');
  assertVhdxError(() => decodeParentLocator(F.PARENT_LOCATOR_FIXTURE.subarray(0, 19)), 'SHORT_READ', 'EIO');
  assertVhdxError(() => decodeParentLocator(F.PARENT_LOCATOR_FIXTURE.subarray(0, 43)), 'BAD_PARENT_LOCATOR');
});

test('keys and values may be shared or reordered; decode reads them where the entries point', () => {
  // Hand-made: values before keys, both entries sharing one value.
  const b = hex`
    ${F.PARENT_LOCATOR_HEADER_FIXTURE}               #  0: header, 2 entries
    2e 00 00 00  2c 00 00 00  04 00  02 00           # 20: key "ab" at 46, value "z" at 44
    32 00 00 00  2c 00 00 00  02 00  02 00           # 32: key "c" at 50, value "z" at 44
    7a 00                                            # 44: "z"
    61 00 62 00                                      # 46: "ab"
    63 00                                            # 50: "c"
  `;
  assert.deepEqual(decodeParentLocator(b).entries, [{ key: 'ab', value: 'z' }, { key: 'c', value: 'z' }]);
  // Re-encoding gives the canonical packing, which decodes to the same locator.
  const again = encodeParentLocator(decodeParentLocator(b));
  assertBytesEqual(again.subarray(44), concat(utf16le('ab'), utf16le('z'), utf16le('c'), utf16le('z')));
  assert.deepEqual(decodeParentLocator(again), decodeParentLocator(b));
});

test('corpus: the locator Hyper-V wrote in differencing.avhdx decodes and re-encodes byte for byte', { skip: needCorpus('differencing.avhdx.gz') }, async () => {
  const item = await corpusBytes('differencing.avhdx.gz', 2 * 1048576 + 65576, 1014);
  const loc = decodeParentLocator(item, 2 * 1048576 + 65576);
  assert.equal(loc.locatorType, LOCATOR_TYPE_VHDX);
  const map = Object.fromEntries(loc.entries.map((e) => [e.key, e.value]));
  assert.deepEqual(Object.keys(map), ['parent_linkage', 'absolute_win32_path', 'relative_path', 'volume_path', 'parent_linkage2']);
  assert.equal(map.parent_linkage, '{ff34003b-11ed-4cf8-a166-b2be05e20b80}');
  assert.equal(map.relative_path, '.\\Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx');
  assert.match(map.absolute_win32_path!, /^C:\\Users\\Public\\Documents\\Hyper-V\\Virtual hard disks\\Generation 1_/);
  assert.match(map.volume_path!, /^\\\\\?\\Volume\{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9\}\\/);
  assert.equal(map.parent_linkage2, '{00000000-0000-0000-0000-000000000000}');
  assertBytesEqual(encodeParentLocator(loc), item);
});
