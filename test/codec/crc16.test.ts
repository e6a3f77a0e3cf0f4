// CRC-16 (reflected 0xA001), the checksum of ext4 group descriptors without metadata_csum.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc16Update } from '../../src/codec/crc16.js';

const check = new TextEncoder().encode('123456789');

test('crc16 matches the catalogue check values (ARC from 0, MODBUS from 0xFFFF)', () => {
  assert.equal(crc16Update(0, check), 0xbb3d);
  assert.equal(crc16Update(0xffff, check), 0x4b37);
});

test('crc16 continues across pieces as over the whole', () => {
  assert.equal(crc16Update(crc16Update(0xffff, check.subarray(0, 4)), check.subarray(4)), crc16Update(0xffff, check));
  assert.equal(crc16Update(0x1234, new Uint8Array(0)), 0x1234);
});
