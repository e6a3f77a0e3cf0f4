/** `vhdx map [-f vhdx|raw] [--output=human|json] FILE`: the disk's extents, in the shape of `qemu-img map`. */
import { naming, outputFormat, parentPaths, parse, UsageError, type Io } from './common.js';
import type { Extent } from '../device/block-device.js';
import { RawDevice } from '../device/raw.js';
import { isUrl } from '../device/parents.js';
import { formatOption, newHttpStats, openImage, READ_FORMATS, reportHttp } from './image-format.js';

export { MAP_USAGE } from './usage.js';
import { MAP_USAGE } from './usage.js';
const WINDOW = 1024 * 1024 * 1024;

export async function mapCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(
    args,
    { format: { type: 'string', short: 'f' }, output: { type: 'string' }, parents: { type: 'string' }, 'force-share': { type: 'boolean', short: 'U' }, verbose: { type: 'boolean', short: 'v' } },
    MAP_USAGE,
  );
  const format = outputFormat(values.output);
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${MAP_USAGE}`);
  const path = positionals[0]!;
  const forceShare = values['force-share'] === true;
  const fmt = formatOption(values.format, 'image', READ_FORMATS);
  const stats = isUrl(path) ? newHttpStats() : null;
  const img = await naming(path, () => openImage(path, fmt, { parents: parentPaths(values.parents), forceShare, ...(stats ? { http: { stats } } : {}) }, io));
  // A raw file is one run of data, mapped to itself (Node cannot ask the file system for its holes).
  const names = img instanceof RawDevice ? [path] : img.chain.map((i) => i.name ?? path);
  const status = img instanceof RawDevice ? async (o: number, l: number): Promise<Extent[]> => [{ offset: o, length: l, type: 'data', fileOffset: o }] : (o: number, l: number) => img.blockStatus(o, l);
  await naming(path, async () => {
    let pending: Extent | null = null;
    let first = true;
    const emit = (e: Extent): void => {
      if (format === 'json') {
        const present = e.type !== 'unallocated';
        const rec: Record<string, unknown> = {
          start: e.offset,
          length: e.length,
          depth: e.depth ?? 0,
          present,
          zero: e.type !== 'data',
          data: e.type === 'data',
        };
        if (e.fileOffset !== undefined) rec.offset = e.fileOffset;
        io.out((first ? '[' : ',\n') + JSON.stringify(rec));
      } else if (e.type === 'data') {
        if (first) io.out(`${'Offset'.padEnd(20)}${'Length'.padEnd(20)}${'Mapped to'.padEnd(20)}File\n`);
        io.out(`${hex(e.offset).padEnd(20)}${hex(e.length).padEnd(20)}${hex(e.fileOffset ?? 0).padEnd(20)}${names[e.depth ?? 0] ?? path}\n`);
      } else return;
      first = false;
    };
    // Windows bound memory; extents that continue across a window boundary are joined.
    for (let w = 0; w < img.size; w += WINDOW) {
      for (const e of await status(w, Math.min(WINDOW, img.size - w))) {
        if (
          pending &&
          pending.type === e.type &&
          pending.depth === e.depth &&
          pending.offset + pending.length === e.offset &&
          (e.type !== 'data' || pending.fileOffset! + pending.length === e.fileOffset)
        ) {
          pending.length += e.length;
        } else {
          if (pending) emit(pending);
          pending = { ...e };
        }
      }
    }
    if (pending) emit(pending);
    if (format === 'json') io.out(first ? '[]\n' : ']\n');
  }).finally(() => img.close());
  reportHttp(stats, values.verbose === true, io);
  return 0;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
