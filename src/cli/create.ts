/** `vhdx create [-q] [-p] [-o OPTIONS] [-b PARENT] FILE [SIZE]`: a new, empty VHDX file, or a differencing child of PARENT. */
import { createFile } from '../device/create-file.js';
import { planCreate, type CreateOptions } from '../driver/create.js';
import { formatOption } from './image-format.js';
import { naming, parentPaths, parse, parseSize, requireDirectory, UsageError, type Io } from './common.js';

export { CREATE_USAGE, CREATE_OPTIONS_HELP } from './usage.js';
import { CREATE_USAGE, CREATE_OPTIONS_HELP } from './usage.js';

export type CreateOptionValues = Omit<CreateOptions, 'size' | 'parentLocator'>;

/**
 * Parse `-o` values (each a comma-separated list of key=value) into create options. Unknown
 * keys and malformed values are a UsageError; range checks are left to `planCreate`, which runs
 * before any file is made.
 */
export function parseCreateOptions(specs: string[]): CreateOptionValues {
  const out: CreateOptionValues = {};
  for (const spec of specs) {
    for (const item of spec.split(',')) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq <= 0) throw new UsageError(`invalid create option '${item}': expected key=value (see 'vhdx create -o help')`);
      const key = item.slice(0, eq);
      const value = item.slice(eq + 1);
      switch (key) {
        case 'subformat':
          if (value !== 'dynamic' && value !== 'fixed') throw new UsageError(`subformat must be dynamic or fixed, not '${value}'`);
          out.subformat = value;
          break;
        case 'block_size':
          out.blockSize = parseSize(value, 'block_size');
          break;
        case 'log_size':
          out.logSize = parseSize(value, 'log_size');
          break;
        case 'logical_sector_size':
          out.logicalSectorSize = sectorSize(value, key);
          break;
        case 'physical_sector_size':
          out.physicalSectorSize = sectorSize(value, key);
          break;
        default:
          throw new UsageError(
            `unknown create option '${key}' (known: subformat, block_size, log_size, logical_sector_size, physical_sector_size)`,
          );
      }
    }
  }
  return out;
}

function sectorSize(value: string, key: string): 512 | 4096 {
  const n = parseSize(value, key);
  if (n !== 512 && n !== 4096) throw new UsageError(`${key} must be 512 or 4096, not '${value}'`);
  return n;
}

export async function createCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      options: { type: 'string', short: 'o', multiple: true },
      format: { type: 'string', short: 'f' },
      progress: { type: 'boolean', short: 'p' },
      quiet: { type: 'boolean', short: 'q' },
      backing: { type: 'string', short: 'b' },
      'backing-format': { type: 'string', short: 'F' },
      parents: { type: 'string' },
    },
    CREATE_USAGE,
  );
  const specs = (values.options as string[] | undefined) ?? [];
  if (specs.includes('help') || specs.includes('?')) {
    io.out(CREATE_OPTIONS_HELP);
    return 0;
  }
  formatOption(values.format, 'image', ['vhdx']);
  const parent = values.backing as string | undefined;
  formatOption(values['backing-format'], 'backing', ['vhdx']);
  if (parent !== undefined ? positionals.length < 1 || positionals.length > 2 : positionals.length !== 2) {
    throw new UsageError(`expected FILE and SIZE (SIZE may be left out with -b)\nusage: ${CREATE_USAGE}`);
  }
  const [path, sizeText] = positionals as [string, string | undefined];
  const created = parseCreateOptions(specs);
  const size = sizeText === undefined ? undefined : parseSize(sizeText, 'size');
  if (parent === undefined) planCreate({ ...created, size: size! }); // bad options fail before anything is printed or made
  const parents = parentPaths(values.parents);
  requireDirectory(path, 'image');
  const bar = values.progress === true && created.subformat === 'fixed' ? (await import('./progress.js')).progressBar(true, 'allocating') : null;
  try {
    await naming(path, () =>
      createFile(path, {
        ...created,
        ...(size !== undefined ? { size } : {}),
        ...(parent !== undefined ? { parent, parents } : {}),
        signal,
        ...(bar ? { onProgress: (d: number, t: number) => bar.update(d, t) } : {}),
        // Said before the work, as qemu-img does: a fixed image takes a while.
        onPlan: (p) => {
          if (values.quiet === true) return;
          io.out(
            `Formatting '${path}', fmt=vhdx size=${p.virtualSize} subformat=${p.type === 'fixed' ? 'fixed' : 'dynamic'} ` +
              `block_size=${p.blockSize} log_size=${p.log.length} ` +
              `logical_sector_size=${p.logicalSectorSize} physical_sector_size=${p.physicalSectorSize}` +
              `${parent !== undefined ? ` backing_file=${parent}` : ''}\n`,
          );
        },
      }),
    );
  } finally {
    bar?.stop();
  }
  return 0;
}
