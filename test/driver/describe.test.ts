// src/driver/info.ts: describe() returns a fresh description, frozen all the way down, that
// shares nothing with the image (a caller that edits it cannot change what the next call says).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describe, type ImageInfo } from '../../src/index.js';
import { makeBase, makeChild, openChain } from '../helpers/chain.js';

const MiB = 1024 * 1024;

/** Every object and array inside `value`, `value` included, with its path. */
function objectsIn(value: unknown, path = 'info'): [string, object][] {
  if (typeof value !== 'object' || value === null) return [];
  return [[path, value], ...Object.entries(value).flatMap(([k, v]) => objectsIn(v, `${path}.${k}`))];
}

async function differencingInfo(): Promise<{ info: ImageInfo; again: () => Promise<ImageInfo> }> {
  const { src: base } = await makeBase({ size: 8 * MiB, fill: [{ kind: 'data', offset: 0, length: MiB }] });
  const parent = await openChain([base], { writable: [] });
  const child = await makeChild(parent);
  await parent.close();
  const img = await openChain([child, base], { writable: [] });
  return { info: await describe(img, { allocation: 'always' }), again: () => describe(img, { allocation: 'always' }) };
}

test('describe() is frozen deeply: every nested object and array refuses changes in strict mode', async () => {
  const { info } = await differencingInfo();
  // The nested parts this test relies on are there, so the walk below covers them.
  assert.equal(info.type, 'differencing');
  assert.ok(info.parentLocator !== null && info.parentLocator.entries.length > 0);
  assert.equal(info.parents.length, 1);
  assert.ok(info.allocation !== null);
  const objects = objectsIn(info);
  assert.ok(objects.length > 20, `only ${objects.length} objects found`);
  for (const [path, o] of objects) assert.ok(Object.isFrozen(o), `${path} is not frozen`);
  // Test files are ES modules, so strict: a write to a frozen object throws.
  const writable = info as unknown as { virtualSize: number; header: { slot: number }; metadata: unknown[]; regionTable: { copiesValid: boolean[] } };
  assert.throws(() => {
    writable.virtualSize = 1;
  }, TypeError);
  assert.throws(() => {
    writable.header.slot = 3;
  }, TypeError);
  assert.throws(() => writable.metadata.push({}), TypeError);
  assert.throws(() => {
    writable.regionTable.copiesValid[0] = false;
  }, TypeError);
  const entries = info.parentLocator.entries as unknown as { value: string }[];
  assert.throws(() => {
    entries[0]!.value = 'x';
  }, TypeError);
  assert.throws(() => {
    (info.allocation!.bytesByState as Record<string, number>).zero = 1;
  }, TypeError);
});

test('describe() shares nothing between calls: each returns a new object with the same content', async () => {
  const { info, again } = await differencingInfo();
  const second = await again();
  assert.notEqual(second, info);
  assert.deepEqual(second, info);
  const firstObjects = new Set(objectsIn(info).map(([, o]) => o));
  for (const [path, o] of objectsIn(second)) assert.ok(!firstObjects.has(o), `${path} is the same object in both descriptions`);
});

/**
 * ImageInfo is typed readonly: checked by tsc (tsconfig.test.json, run before the suite), where each
 * @ts-expect-error fails the build if the assignment under it compiles. Never called.
 */
export function readonlyAtCompileTime(info: ImageInfo): void {
  // @ts-expect-error readonly field
  info.virtualSize = 1;
  // @ts-expect-error readonly nested field
  info.header.slot = 1;
  // @ts-expect-error readonly array
  info.metadata.push(info.metadata[0]!);
  // @ts-expect-error readonly tuple
  info.regionTable.copiesValid[0] = true;
  // @ts-expect-error readonly record
  if (info.allocation) info.allocation.bytesByState.zero = 0;
}
