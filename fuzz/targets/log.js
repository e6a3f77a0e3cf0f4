// VHDX log replay, in memory (a read-only open) and in place (replayInPlace). Rules: replaying
// in place a second time changes no byte; the image replayed in place reads the same as the
// in-memory replay; after the replay check finds no dirty log; and check never calls clean a
// replayed image the readers refuse. (A log may legitimately write damage into the image, so a
// replayed image is not required to be free of corruption.)
import { VhdxImage, VhdxError, checkImage } from '../../dist/index.js';
import { replayInPlace } from '../../dist/driver/open.js';
import { GuardedSource, RuleBroken } from '../rules.js';
import { vhdxStructures, vhdxGuids } from '../formats.js';
import { corpusSeed, dirtySeed } from '../seeds.js';
import { contentHash } from './common.js';
import { vhdxAgreement } from './vhdx.js';

const sameBytes = (a, b) => a.length === b.length && Buffer.compare(a, b) === 0;

async function openHash(src) {
  const img = await VhdxImage.open(src);
  try {
    return await contentHash(img, 24 * 1024 * 1024);
  } finally {
    await img.close();
  }
}

export default {
  timeMs: 8000,
  maxBytes: 40 * 1024 * 1024,
  structures: vhdxStructures,
  guids: vhdxGuids,
  setup: async () => ({}),
  async seeds() {
    // The Windows-made dirty image of the corpus (36 MiB: the reason for maxBytes), when there.
    const windows = await corpusSeed('vhdx-log-replay.vhdx.gz', 40 * 1024 * 1024);
    return [{ name: 'dirty log', bytes: await dirtySeed() }, ...(windows ? [windows] : [])];
  },
  async run(bytes) {
    let inMemory = null;
    try {
      inMemory = await openHash(new GuardedSource(bytes));
    } catch (e) {
      if (!(e instanceof VhdxError)) throw e;
    }
    const w = new GuardedSource(bytes, { readOnly: false });
    await replayInPlace(w);
    w.assertClean();
    const once = w.bytes().slice();
    const w2 = new GuardedSource(once, { readOnly: false });
    await replayInPlace(w2);
    if (!sameBytes(w2.bytes(), once)) throw new RuleBroken('replay-twice-differs', 'a second replay in place changed the image');
    let inPlace = null;
    try {
      inPlace = await openHash(new GuardedSource(once));
    } catch (e) {
      if (!(e instanceof VhdxError)) throw e;
    }
    if (inMemory !== null && inPlace !== null && inMemory !== inPlace) throw new RuleBroken('replay-in-memory-differs', 'the image replayed in place reads differently from the in-memory replay');
    if (inMemory !== null && inPlace === null) throw new RuleBroken('replay-in-place-unreadable', 'the in-memory replay opened and read, the image replayed in place does not');
    const r = await checkImage(new GuardedSource(once));
    if (r.log && r.log.state !== 'clean') throw new RuleBroken('replayed-log-dirty', `check finds the log ${r.log.state} after a replay in place`);
    return vhdxAgreement(once, undefined);
  },
};
