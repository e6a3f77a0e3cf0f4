// VHDX images: check, then open + describe + allocation scan + block status + read everything
// (fuzz/targets/common.js). Rules beyond the typed-error rule: check never calls clean (no
// corruption, could complete) an image the readers then refuse, and the image is never written.
import { VhdxImage, checkImage } from '../../dist/index.js';
import { vhdxStructures, vhdxGuids } from '../formats.js';
import { vhdxSeeds, vhdxParentResolver } from '../seeds.js';
import { checkAgreesWithReaders } from './common.js';

/** The VHDX check and readers on `bytes`, a differencing image's parent opened by `parent`. */
export const vhdxAgreement = (bytes, parent) =>
  checkAgreesWithReaders(bytes, { check: (src) => checkImage(src, { parent }), open: (src) => VhdxImage.open(src, { parent }) });

export default {
  timeMs: 5000,
  maxBytes: 24 * 1024 * 1024,
  structures: vhdxStructures,
  guids: vhdxGuids,
  async setup() {
    return { parent: await vhdxParentResolver() };
  },
  seeds: () => vhdxSeeds(),
  run: (bytes, ctx) => vhdxAgreement(bytes, ctx.parent),
};
