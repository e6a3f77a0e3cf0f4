/** `vhdx commit [-p] [-d] [--parents=relative|any] CHILD`: merge a differencing image into its parent. */
import { commitFile } from '../node-files.js';
import { parentPaths, parse, UsageError, type Io } from './common.js';

export { COMMIT_USAGE } from './usage.js';
import { COMMIT_USAGE } from './usage.js';

export async function commitCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      progress: { type: 'boolean', short: 'p' },
      delete: { type: 'boolean', short: 'd' },
      quiet: { type: 'boolean', short: 'q' },
      format: { type: 'string', short: 'f' },
      parents: { type: 'string' },
    },
    COMMIT_USAGE,
  );
  if (values.format !== undefined && values.format !== 'vhdx') throw new UsageError(`format ${String(values.format)} is not supported (only vhdx)`);
  if (positionals.length !== 1) throw new UsageError(`expected one CHILD\nusage: ${COMMIT_USAGE}`);
  const parents = parentPaths(values.parents);
  if (parents === 'none') throw new UsageError('commit needs the parent: --parents=none cannot be used');
  const bar = values.progress === true ? (await import('./progress.js')).progressBar(true, 'committing') : null;
  let r;
  try {
    r = await commitFile(positionals[0]!, {
      parents,
      remove: values.delete === true,
      signal,
      ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}),
    });
  } finally {
    bar?.stop();
  }
  if (values.quiet !== true) {
    io.out(
      `Image committed into ${r.parentPath ?? 'its parent'}: ${r.dataBytes} bytes of data, ${r.zeroBytes} bytes of zeros; ` +
        `${values.delete === true ? 'the child was removed' : 'the child is empty'}.\n`,
    );
  }
  return 0;
}
