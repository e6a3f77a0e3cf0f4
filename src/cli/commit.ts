/** `vhdx commit [-p] [-d | --remove] [--parents=relative|any] CHILD`: merge a differencing image into its parent. */
import { commitFile, type CommitChildOutcome } from '../device/commit-file.js';
import { formatOption, refuseUrl } from './image-format.js';
import { humanSize, naming, parentPaths, parse, UsageError, type Io } from './common.js';

export { COMMIT_USAGE } from './usage.js';
import { COMMIT_USAGE } from './usage.js';

const OUTCOME_TEXT: Record<CommitChildOutcome, string> = {
  empty: 'the child is empty',
  keep: 'the child keeps its data',
  remove: 'the child was removed',
};

export async function commitCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      progress: { type: 'boolean', short: 'p' },
      // As qemu-img commit -d: do not empty the child. Deleting it takes the long option.
      keep: { type: 'boolean', short: 'd' },
      remove: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
      format: { type: 'string', short: 'f' },
      parents: { type: 'string' },
    },
    COMMIT_USAGE,
  );
  formatOption(values.format, 'image', ['vhdx']);
  if (positionals.length !== 1) throw new UsageError(`expected one CHILD\nusage: ${COMMIT_USAGE}`);
  if (values.keep === true && values.remove === true) throw new UsageError('-d keeps the child and --remove deletes it: give one of them');
  const outcome: CommitChildOutcome = values.keep === true ? 'keep' : values.remove === true ? 'remove' : 'empty';
  const parents = parentPaths(values.parents);
  if (parents === 'none') throw new UsageError('commit needs the parent: --parents=none cannot be used');
  const child = positionals[0]!;
  refuseUrl(child);
  const bar = values.progress === true ? (await import('./progress.js')).progressBar(true, 'committing') : null;
  let r;
  try {
    r = await naming(child, () =>
      commitFile(child, {
        parents,
        child: outcome,
        signal,
        ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}),
      }),
    );
  } finally {
    bar?.stop();
  }
  if (values.quiet !== true) {
    const grew = r.parentGrowth > 0 ? ` (the parent grew by ${humanSize(r.parentGrowth)} to the child's size)` : '';
    io.out(`Image committed into ${r.parentPath ?? 'its parent'}${grew}: ${r.dataBytes} bytes of data, ${r.zeroBytes} bytes of zeros; ${OUTCOME_TEXT[outcome]}.\n`);
  }
  return 0;
}
