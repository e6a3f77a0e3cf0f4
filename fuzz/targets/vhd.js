// VHD images (fixed, dynamic, differencing): check, then open + block status + read everything.
// Rules: typed errors only, and check never calls clean an image the readers refuse.
import { VhdImage, VhdxError, checkVhd } from '../../dist/index.js';
import { GuardedSource, RuleBroken } from '../rules.js';
import { vhdStructures } from '../formats.js';
import { vhdSeedsAndParent } from '../seeds.js';
import { readEverything } from './common.js';

export default {
  timeMs: 5000,
  maxBytes: 16 * 1024 * 1024,
  structures: vhdStructures,
  async setup() {
    return vhdSeedsAndParent();
  },
  seeds: (ctx) => ctx.seeds,
  async run(bytes, ctx) {
    const src = new GuardedSource(bytes);
    const r = await checkVhd(src, { parent: ctx.parent });
    const clean = r.supported && r.canComplete && r.corruptions === 0;
    let refused = null;
    try {
      const img = await VhdImage.open(src, { parent: ctx.parent });
      try {
        await readEverything(img, { describeIt: false });
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
      throw new RuleBroken('check-clean-but-unreadable', `checkVhd found no corruption (findings: ${findings}) but the readers refused: ${refused.reason}: ${refused.message}`);
    }
    return refused ? refused.reason : clean ? 'clean' : 'check-only';
  },
};
