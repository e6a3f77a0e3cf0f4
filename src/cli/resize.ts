/** `vhdx resize [--shrink] [--to-minimum] [--force] [--no-gpt-fix] [-p] FILE [+|-]SIZE`: change the virtual size in place. */
import { openFile } from '../device/open-node.js';
import { resize } from '../ops/resize.js';
import { formatOption } from './image-format.js';
import { humanSize, naming, parentPaths, parse, parseSize, UsageError, type Io } from './common.js';

export { RESIZE_USAGE } from './usage.js';
import { RESIZE_USAGE } from './usage.js';

/** A size argument: absolute, or relative to `current` with a leading + or -. */
export function targetSize(text: string, current: number): number {
  const sign = text.startsWith('+') ? 1 : text.startsWith('-') ? -1 : 0;
  const n = parseSize(sign === 0 ? text : text.slice(1), 'size');
  const size = current + sign * n;
  if (sign === 0) return n;
  if (size <= 0) throw new UsageError(`size ${text} leaves ${size} bytes of a ${current}-byte disk`);
  return size;
}

export async function resizeCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  // As qemu-img: the size is the last argument and may start with '-', which is not an option.
  const last = args[args.length - 1];
  const sizeArg = last !== undefined && /^[+-]?[0-9.]/.test(last) ? last : undefined;
  const { values, positionals } = parse(
    sizeArg === undefined ? args : args.slice(0, -1),
    {
      shrink: { type: 'boolean' },
      'to-minimum': { type: 'boolean' },
      force: { type: 'boolean' },
      'no-gpt-fix': { type: 'boolean' },
      progress: { type: 'boolean', short: 'p' },
      quiet: { type: 'boolean', short: 'q' },
      format: { type: 'string', short: 'f' },
      parents: { type: 'string' },
    },
    RESIZE_USAGE,
  );
  formatOption(values.format, 'image', ['vhdx']);
  const toMinimum = values['to-minimum'] === true;
  if (positionals.length !== 1 || (sizeArg === undefined) !== toMinimum) {
    throw new UsageError(`expected FILE and SIZE (or FILE alone with --to-minimum)\nusage: ${RESIZE_USAGE}`);
  }
  const file = positionals[0]!;
  const bar = values.progress === true ? (await import('./progress.js')).progressBar(true, 'resizing') : null;
  try {
    const r = await naming(file, async () => {
      const image = await openFile(file, { readOnly: false, parents: parentPaths(values.parents) });
      try {
        const size = sizeArg === undefined ? image.size : targetSize(sizeArg, image.size);
        const done = await resize(image, size, {
          shrink: values.shrink === true,
          toMinimum,
          force: values.force === true,
          gptFix: values['no-gpt-fix'] !== true,
          signal,
          ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}),
        });
        await done.image.close();
        return done;
      } catch (e) {
        await image.close().catch(() => undefined);
        throw e;
      }
    });
    if (values.quiet !== true) {
      const gpt = r.gpt ? `; GPT backup moved to LBA ${r.gpt.toLba}` : '';
      io.out(r.oldSize === r.newSize ? `Image already ${humanSize(r.newSize)} (${r.newSize} bytes).\n` : `Image resized from ${humanSize(r.oldSize)} to ${humanSize(r.newSize)} (${r.newSize} bytes)${gpt}.\n`);
    }
  } finally {
    bar?.stop();
  }
  return 0;
}
