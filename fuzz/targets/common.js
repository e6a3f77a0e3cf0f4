// What the image targets share: reading everything a reader can (as info, map, convert and the
// NBD server do), bounded per input.
import { describe, VhdxError } from '../../dist/index.js';
import { GuardedSource, RuleBroken } from '../rules.js';

const MiB = 1024 * 1024;
/** Bytes of data extents read per input at most (many BAT entries may name the same block). */
const READ_BUDGET = 48 * MiB;

/**
 * Block status of the whole disk, a read of every data extent (up to READ_BUDGET), and libvhdi's
 * pattern: 128 reads of 4097 bytes at an unaligned stride across the disk.
 */
export async function readEverything(img, { describeIt = true } = {}) {
  if (describeIt) await describe(img);
  if (typeof img.allocationStats === 'function') await img.allocationStats();
  const buf = new Uint8Array(MiB);
  let budget = READ_BUDGET;
  let next = 0;
  for (const e of await img.blockStatus(0, img.size)) {
    if (!(e.offset === next && e.length > 0 && e.offset + e.length <= img.size)) {
      throw new RuleBroken('bad-extents', `block status gave extent ${JSON.stringify(e)} after ${next} on a ${img.size}-byte disk`);
    }
    next = e.offset + e.length;
    if (e.type !== 'data') continue;
    for (let at = e.offset; at < e.offset + e.length && budget > 0; at += MiB) {
      const n = Math.min(MiB, e.offset + e.length - at);
      budget -= n;
      await img.read(at, buf.subarray(0, n));
    }
  }
  const stride = Math.max(4097, Math.floor(img.size / 128) + 511);
  for (let k = 0, at = 0; k < 128 && at < img.size; k++, at += stride) {
    await img.read(at, buf.subarray(0, Math.min(4097, img.size - at)));
  }
}

/** A hash of the first `limit` bytes of the virtual disk, for comparing two openings. */
export async function contentHash(img, limit = 64 * MiB) {
  const { createHash } = await import('node:crypto');
  const h = createHash('sha1');
  const buf = new Uint8Array(MiB);
  for (let at = 0; at < Math.min(img.size, limit); at += MiB) {
    const n = Math.min(MiB, img.size - at);
    await img.read(at, buf.subarray(0, n));
    h.update(buf.subarray(0, n));
  }
  return h.digest('hex');
}

/**
 * The check and the readers on one image: `check(src)` (checkImage or checkVhd) and
 * `open(src)` then readEverything. Throws RuleBroken when check finds no corruption and could
 * complete but the readers refuse; else returns the readers' refusal reason, 'clean' or 'check-only'.
 */
export async function checkAgreesWithReaders(bytes, { check, open, describeIt = true }) {
  const src = new GuardedSource(bytes);
  const r = await check(src);
  const clean = r.supported && r.canComplete && r.corruptions === 0;
  let refused = null;
  try {
    const img = await open(src);
    try {
      await readEverything(img, { describeIt });
    } finally {
      await img.close();
    }
  } catch (e) {
    if (!(e instanceof VhdxError)) throw e;
    refused = e;
  }
  src.assertClean();
  if (clean && refused) {
    const findings = r.findings.map((f) => `${f.severity} ${f.reason}`).join(', ') || 'none';
    throw new RuleBroken('check-clean-but-unreadable', `${r.format} check found no corruption (findings: ${findings}) but the readers refused: ${refused.reason}: ${refused.message}`);
  }
  return refused ? refused.reason : clean ? 'clean' : 'check-only';
}
