/** `vhdx convert [-p] [-O raw] SRC DST`: the virtual disk as a sparse raw file. */
import { openFile, NodeFileSource } from '../node.js';
import { copyDevice } from '../device/copy.js';
import { parse, UsageError, type Io } from './common.js';

export const CONVERT_USAGE = 'vhdx convert [-p] [-f vhdx] [-O raw] SRC DST';

export async function convertCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      progress: { type: 'boolean', short: 'p' },
      'source-format': { type: 'string', short: 'f' },
      'output-format': { type: 'string', short: 'O' },
    },
    CONVERT_USAGE,
  );
  if (positionals.length !== 2) throw new UsageError(`expected SRC and DST\nusage: ${CONVERT_USAGE}`);
  const inFmt = String(values['source-format'] ?? 'vhdx');
  const outFmt = String(values['output-format'] ?? 'raw');
  if (inFmt !== 'vhdx') throw new UsageError(`source format ${inFmt} is not supported (only vhdx)`);
  if (outFmt !== 'raw') throw new UsageError(`output format ${outFmt} is not supported yet (only raw)`);
  const [srcPath, dstPath] = positionals as [string, string];
  const img = await openFile(srcPath);
  // The progress bar's package loads only when asked for.
  const bar = values.progress === true ? (await import('./progress.js')).progressBar(true, 'converting') : { update() {}, stop() {} };
  try {
    const dst = await NodeFileSource.open(dstPath, { readOnly: false, create: true, truncate: true });
    try {
      await copyDevice(img, dst, { signal, onProgress: (d, t) => bar.update(d, t) });
      await dst.flush();
    } finally {
      await dst.close();
    }
  } finally {
    bar.stop();
    await img.close();
  }
  void io;
  return 0;
}
