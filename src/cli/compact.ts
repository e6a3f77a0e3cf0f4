/** `vhdx compact [-p] [--dry-run] [--mode=full|zeroes|filesystem] [--output=human|json] FILE`: reclaim space in place. */
import { openFile } from '../device/open-node.js';
import { compact, COMPACT_MODES, type CompactMode, type CompactReport } from '../ops/compact.js';
import { humanSize, naming, outputFormat, parse, UsageError, type Io } from './common.js';

export { COMPACT_USAGE } from './usage.js';
import { COMPACT_USAGE } from './usage.js';

export async function compactCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      progress: { type: 'boolean', short: 'p' },
      'dry-run': { type: 'boolean' },
      mode: { type: 'string' },
      output: { type: 'string' },
    },
    COMPACT_USAGE,
  );
  const format = outputFormat(values.output);
  const mode = (values.mode ?? 'full') as CompactMode;
  if (!COMPACT_MODES.includes(mode)) throw new UsageError(`--mode must be ${COMPACT_MODES.join(', ')}, not ${String(values.mode)}`);
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${COMPACT_USAGE}`);
  const path = positionals[0]!;
  const dryRun = values['dry-run'] === true;
  const bar = values.progress === true ? (await import('./progress.js')).progressBar(true, dryRun ? 'analysing' : 'compacting') : null;
  let r: CompactReport;
  try {
    r = await naming(path, async () => {
      const img = await openFile(path, { readOnly: dryRun });
      try {
        return await compact(img, { mode, dryRun, signal, ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}) });
      } finally {
        await img.close();
      }
    });
  } finally {
    bar?.stop();
  }
  if (format === 'json') {
    io.out(`${JSON.stringify({ file: path, ...r }, null, 2)}\n`);
    return 0;
  }
  for (const s of r.skipped) {
    const where = s.partition === 0 ? 'the disk' : `partition ${s.partition}`;
    io.out(`kept: ${where} (${humanSize(s.length)}${s.filesystem ? `, ${s.filesystem}` : ''}): ${s.reason}\n`);
  }
  const n = r.released.unused + r.released.zero;
  const blocks = `${n} block${n === 1 ? '' : 's'} of ${humanSize(r.blockSize)} (${r.released.unused} unused by any filesystem, ${r.released.zero} all zeros)`;
  if (r.dryRun) {
    io.out(`Would release ${blocks}: ${path} ${humanSize(r.fileSizeBefore)} -> about ${humanSize(r.fileSizeAfter)}. Nothing was written.\n`);
  } else {
    io.out(`Compacted ${path}: ${humanSize(r.fileSizeBefore)} -> ${humanSize(r.fileSizeAfter)}; released ${blocks}, moved ${r.moved}, in ${r.seconds.toFixed(1)} s.\n`);
  }
  return 0;
}
