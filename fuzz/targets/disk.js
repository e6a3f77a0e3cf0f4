// Raw disks with partition tables and filesystems: readPartitions, inspectDisk (filesystem
// recognition in every partition), usedRuns. Rules: typed errors only, no oversized read, and
// the used runs ascend and stay inside the disk.
import { RawDevice, readPartitions, inspectDisk, usedRuns } from '../../dist/index.js';
import { GuardedSource, RuleBroken } from '../rules.js';
import { diskStructures } from '../formats.js';
import { diskSeeds } from '../seeds.js';

export default {
  timeMs: 5000,
  maxBytes: 16 * 1024 * 1024,
  structures: diskStructures,
  setup: async () => ({}),
  seeds: async () => diskSeeds(),
  async run(bytes) {
    const src = new GuardedSource(bytes);
    // 4 KiB sectors when the GPT header is where such a disk has it.
    const s4k = bytes.length >= 4104 && String.fromCharCode(...bytes.subarray(4096, 4104)) === 'EFI PART';
    const dev = new RawDevice(src, { logicalSectorSize: s4k ? 4096 : 512 });
    const table = await readPartitions(dev);
    await inspectDisk(dev);
    let end = -1;
    for await (const r of usedRuns(dev, { table })) {
      if (!(r.start > end && r.length > 0 && r.start + r.length <= dev.size)) throw new RuleBroken('bad-used-runs', `used run ${JSON.stringify(r)} after ${end} on a ${dev.size}-byte disk`);
      end = r.start + r.length;
    }
    src.assertClean();
    return `${table.scheme} ${table.partitions.length}`;
  },
};
