// VHD images (fixed, dynamic, differencing): check, then open + block status + read everything.
// Rules: typed errors only, and check never calls clean an image the readers refuse.
import { VhdImage, checkVhd } from '../../dist/index.js';
import { vhdStructures } from '../formats.js';
import { vhdSeedsAndParent } from '../seeds.js';
import { checkAgreesWithReaders } from './common.js';

export default {
  timeMs: 5000,
  maxBytes: 16 * 1024 * 1024,
  structures: vhdStructures,
  setup: () => vhdSeedsAndParent(),
  seeds: (ctx) => ctx.seeds,
  run: (bytes, ctx) =>
    checkAgreesWithReaders(bytes, { check: (src) => checkVhd(src, { parent: ctx.parent }), open: (src) => VhdImage.open(src, { parent: ctx.parent }), describeIt: false }),
};
