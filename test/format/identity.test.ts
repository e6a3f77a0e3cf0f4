// The generic structure test: for every struct exported by src/format (every defineStruct
// result), decode each of its fixtures and encode the value back: the bytes must come out the
// same, byte for byte. A struct without a fixture fails here, so a new structure cannot slip in
// untested. Fixtures live in ./fixtures/<same name as the src/format file>.js, under FIXTURES.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { assertBytesEqual } from '../helpers/hex.js';

const here = dirname(fileURLToPath(import.meta.url));
const srcFormat = join(here, '..', '..', 'src', 'format');
// Named as imports name them (x.js); TypeScript's rule, which the test hooks follow, loads x.ts.
const modules = readdirSync(srcFormat).filter((f) => f.endsWith('.ts')).map((f) => f.replace(/\.ts$/, '.js')).sort();

/** What this test calls on a structure (codec/struct.ts Struct), whatever its fields. */
interface AnyStruct {
  size: number;
  fields: object;
  decode(bytes: Uint8Array, opts?: { lenient?: boolean }): object;
  encode(value: object, into?: Uint8Array, at?: number): Uint8Array;
  checksumOk(bytes: Uint8Array): boolean;
}

const isStruct = (x: unknown): x is AnyStruct =>
  x !== null && typeof x === 'object' && 'decode' in x && typeof x.decode === 'function' && 'encode' in x && typeof x.encode === 'function' && 'size' in x && typeof x.size === 'number' && 'fields' in x && typeof x.fields === 'object';

const structs: [string, string, AnyStruct][] = []; // [module, exportName, struct]
const fixtures = new Map<string, Uint8Array[]>(); // "module:exportName" -> Uint8Array[]
for (const file of modules) {
  const mod: Record<string, unknown> = await import(pathToFileURL(join(srcFormat, file)).href);
  for (const [name, value] of Object.entries(mod)) if (isStruct(value)) structs.push([file, name, value]);
  const fixtureFile = join(here, 'fixtures', file);
  let fx: Record<string, Uint8Array[]> = {};
  try {
    const fixtureModule: { FIXTURES?: Record<string, Uint8Array[]> } = await import(pathToFileURL(fixtureFile).href);
    fx = fixtureModule.FIXTURES ?? {};
  } catch (e) {
    if (!(e instanceof Error && 'code' in e && e.code === 'ERR_MODULE_NOT_FOUND')) throw e;
  }
  for (const [name, list] of Object.entries(fx)) fixtures.set(`${file}:${name}`, list);
}

test('src/format exports the structures the notes describe', () => {
  assert.ok(modules.length >= 8, `modules: ${modules.join(', ')}`);
  assert.deepEqual(
    structs.map(([f, n]) => `${f}:${n}`).sort(),
    [
      'file-identifier.js:FILE_IDENTIFIER',
      'header.js:HEADER',
      'log.js:LOG_DATA_DESCRIPTOR',
      'log.js:LOG_DATA_SECTOR',
      'log.js:LOG_ENTRY_HEADER',
      'log.js:LOG_ZERO_DESCRIPTOR',
      'metadata.js:FILE_PARAMETERS',
      'metadata.js:LOGICAL_SECTOR_SIZE',
      'metadata.js:METADATA_TABLE_ENTRY',
      'metadata.js:METADATA_TABLE_HEADER',
      'metadata.js:PHYSICAL_SECTOR_SIZE',
      'metadata.js:VIRTUAL_DISK_ID',
      'metadata.js:VIRTUAL_DISK_SIZE',
      'parent-locator.js:PARENT_LOCATOR_ENTRY',
      'parent-locator.js:PARENT_LOCATOR_HEADER',
      'region-table.js:REGION_TABLE_ENTRY',
      'region-table.js:REGION_TABLE_HEADER',
    ],
  );
});

test('every fixture names an exported structure', () => {
  const known = new Set(structs.map(([f, n]) => `${f}:${n}`));
  for (const key of fixtures.keys()) assert.ok(known.has(key), `fixture for unknown structure ${key}`);
});

for (const [file, name, struct] of structs) {
  test(`${file}:${name} — decode then encode gives back every fixture byte for byte`, () => {
    const list = fixtures.get(`${file}:${name}`) ?? [];
    assert.ok(list.length > 0, `no fixture for ${name}: add one to test/format/fixtures/${file}`);
    list.forEach((bytes, i) => {
      assert.equal(bytes.length, struct.size, `fixture ${i} length`);
      const value = struct.decode(bytes);
      assert.deepEqual(struct.decode(bytes, { lenient: true }), value, `fixture ${i}: lenient decode agrees`);
      assert.ok(struct.checksumOk(bytes), `fixture ${i}: checksum`);
      assertBytesEqual(struct.encode(value), bytes, `${name} fixture ${i}`);
      // Encoding into a dirty buffer at an offset gives the same bytes.
      const dirty = new Uint8Array(struct.size + 3).fill(0xa5);
      struct.encode(value, dirty, 3);
      assertBytesEqual(dirty.subarray(3), bytes, `${name} fixture ${i} encoded at an offset`);
    });
  });
}
