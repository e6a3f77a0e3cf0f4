// The write path (Cloud Hypervisor's pattern): open writable, write zeros and a pattern across
// the disk, flush, close, reopen: the content is as written, and an image check called clean
// before is clean after. Writing is bounded: the first 8 MiB, and 4 KiB at eight places across
// the rest of the disk.
import { VhdxImage, VhdxError, checkImage } from '../../dist/index.js';
import { GuardedSource, RuleBroken } from '../rules.js';
import { vhdxStructures, vhdxGuids } from '../formats.js';
import { vhdxSeeds, vhdxParentResolver } from '../seeds.js';

const MiB = 1024 * 1024;
/** The bytes written at `at`: never zero, so that a lost write shows. A plain loop: Uint8Array.from with a mapping function took most of the target's time. */
function pattern(at, n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (((at + i) * 131 + 7) >>> 3 & 0xff) || 1;
  return out;
}

/** [offset, length, zero?] writes for a disk of `size` bytes of `sector`-byte sectors. */
function plan(size, sector) {
  const head = Math.min(size, 8 * MiB) - (Math.min(size, 8 * MiB) % sector);
  const half = Math.floor(head / 2 / sector) * sector;
  const out = [[0, half, true], [half, head - half, false]];
  for (let k = 1; k <= 8; k++) {
    const at = Math.floor((size * k) / 9 / 4096) * 4096;
    if (at >= head && at + 4096 <= size) out.push([at, 4096, k % 2 === 0]);
  }
  return out.filter(([, n]) => n > 0);
}

export default {
  timeMs: 8000,
  maxBytes: 24 * 1024 * 1024,
  structures: vhdxStructures,
  guids: vhdxGuids,
  async setup() {
    return { parent: await vhdxParentResolver() };
  },
  seeds: async () => (await vhdxSeeds()).filter((s) => s.name !== 'dirty log'),
  async run(bytes, ctx) {
    const before = await checkImage(new GuardedSource(bytes), { parent: ctx.parent });
    const wasClean = before.supported && before.canComplete && before.corruptions === 0;
    const src = new GuardedSource(bytes, { readOnly: false });
    const img = await VhdxImage.open(src, { readOnly: false, parent: ctx.parent });
    const writes = plan(img.size, img.logicalSectorSize);
    let refused = null;
    try {
      for (const [at, n, zero] of writes) {
        if (zero) await img.writeZeroes(at, n);
        else for (let o = at; o < at + n; o += MiB) await img.write(o, pattern(o, Math.min(MiB, at + n - o)));
      }
      await img.flush();
    } catch (e) {
      if (!(e instanceof VhdxError)) throw e;
      refused = e;
    } finally {
      await img.close().catch((e) => {
        if (!(e instanceof VhdxError)) throw e;
        refused ??= e;
      });
    }
    src.assertClean();
    if (refused) return `write refused: ${refused.reason}`;
    const again = await VhdxImage.open(new GuardedSource(src.bytes()), { parent: ctx.parent });
    try {
      for (const [at, n, zero] of writes) {
        const got = new Uint8Array(Math.min(n, MiB));
        for (let o = at; o < at + n; o += got.length) {
          const len = Math.min(got.length, at + n - o);
          await again.read(o, got.subarray(0, len));
          const want = zero ? new Uint8Array(len) : pattern(o, len);
          if (Buffer.compare(got.subarray(0, len), want) !== 0) throw new RuleBroken('content-not-as-written', `bytes at ${o} (${len}) differ from what was written and flushed`);
        }
      }
    } finally {
      await again.close();
    }
    if (wasClean) {
      const after = await checkImage(new GuardedSource(src.bytes()), { parent: ctx.parent });
      if (!(after.canComplete && after.corruptions === 0)) {
        const f = after.findings.filter((x) => x.severity === 'corruption').map((x) => x.reason).join(', ');
        throw new RuleBroken('written-image-fails-check', `check was clean before writing, finds ${after.corruptions} corruptions after (${f})${after.error ? `; ${after.error.reason}` : ''}`);
      }
    }
    return 'written';
  },
};
