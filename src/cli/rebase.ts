/** `vhdx rebase -u -b NEWPARENT CHILD`: point a differencing image at its parent's new place. */
import { rebaseFile } from '../device/commit-file.js';
import { formatOption, refuseUrl } from './image-format.js';
import { naming, parentPaths, parse, UsageError, type Io } from './common.js';

export { REBASE_USAGE } from './usage.js';
import { REBASE_USAGE } from './usage.js';

export async function rebaseCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      unsafe: { type: 'boolean', short: 'u' },
      backing: { type: 'string', short: 'b' },
      'backing-format': { type: 'string', short: 'F' },
      format: { type: 'string', short: 'f' },
      parents: { type: 'string' },
    },
    REBASE_USAGE,
  );
  formatOption(values.format, 'image', ['vhdx']);
  formatOption(values['backing-format'], 'backing', ['vhdx']);
  if (values.unsafe !== true) {
    throw new UsageError(
      'only -u is supported: it rewrites the parent paths of a child whose parent moved (the new parent must be the same disk); ' +
        'to change the content a child is based on, convert the chain instead',
    );
  }
  if (values.backing === undefined) throw new UsageError(`-b NEWPARENT is required\nusage: ${REBASE_USAGE}`);
  if (positionals.length !== 1) throw new UsageError(`expected one CHILD\nusage: ${REBASE_USAGE}`);
  const child = positionals[0]!;
  refuseUrl(child);
  await naming(child, () => rebaseFile(child, values.backing as string, { parents: parentPaths(values.parents) }));
  void io;
  return 0;
}
