// VHDX images: check, then open + describe + allocation scan + block status + read everything
// (fuzz/targets/common.js). Rules beyond the typed-error rule: check never calls clean (no
// corruption, could complete) an image the readers then refuse, and the image is never written.
import { VhdxImage, VhdxError, checkImage } from '../../dist/index.js';
import { GuardedSource, RuleBroken } from '../rules.js';
import { vhdxStructures, vhdxGuids } from '../formats.js';
import { vhdxSeeds, vhdxParentResolver } from '../seeds.js';
import { readEverything } from './common.js';

/** check's verdict and the readers' on one image; throws RuleBroken when they disagree. */
export async function checkAgreesWithReaders(bytes, parent) {
  const src = new GuardedSource(bytes);
  const r = await checkImage(src, { parent });
  const clean = r.supported && r.canComplete && r.corruptions === 0;
  let refused = null;
  try {
    const img = await VhdxImage.open(src, { parent });
    try {
      await readEverything(img);
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
    throw new RuleBroken('check-clean-but-unreadable', `check found no corruption (findings: ${findings}) but the readers refused: ${refused.reason}: ${refused.message}`);
  }
  return refused ? refused.reason : clean ? 'clean' : 'check-only';
}

export default {
  timeMs: 5000,
  maxBytes: 24 * 1024 * 1024,
  structures: vhdxStructures,
  guids: vhdxGuids,
  async setup() {
    return { parent: await vhdxParentResolver() };
  },
  seeds: () => vhdxSeeds(),
  run: (bytes, ctx) => checkAgreesWithReaders(bytes, ctx.parent),
};
