/**
 * `vhdx create [-q] [-p] [-f vhdx|vpc] [-o OPTIONS] [-b PARENT] FILE [SIZE]`: a new, empty VHDX file, or a
 * differencing child of PARENT; with -f vpc (or vhd) a new VHD file, fixed or dynamic.
 */
import { createFile, withNewFile } from '../device/create-file.js';
import { planCreate, type CreateOptions } from '../driver/create.js';
import type { CacheMode } from '../io/node-file.js';
import { azureCreateOptions } from '../vhd/azure.js';
import { createVhd, planVhd, type CreateVhdOptions, type VhdPlan } from '../vhd/create.js';
import { VhdImage } from '../vhd/image.js';
import { formatOption } from './image-format.js';
import { naming, parentPaths, parse, parseSize, requireDirectory, UsageError, type Io } from './common.js';

export { CREATE_USAGE, CREATE_OPTIONS_HELP, VPC_OPTIONS_HELP } from './usage.js';
import { CREATE_USAGE, CREATE_OPTIONS_HELP, VPC_OPTIONS_HELP } from './usage.js';

export type CreateOptionValues = Omit<CreateOptions, 'size' | 'parentLocator'>;

/**
 * Parse `-o` values (each a comma-separated list of key=value) into create options. Unknown
 * keys and malformed values are a UsageError; range checks are left to `planCreate`, which runs
 * before any file is made.
 */
export function parseCreateOptions(specs: string[]): CreateOptionValues {
  const out: CreateOptionValues = {};
  for (const [key, value] of keyValues(specs)) {
    switch (key) {
      case 'subformat':
        out.subformat = subformat(value);
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
  return out;
}

/** The key=value pairs of `-o` values, each a comma-separated list; a malformed item is a UsageError. */
function* keyValues(specs: string[]): Generator<[string, string]> {
  for (const spec of specs) {
    for (const item of spec.split(',')) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq <= 0) throw new UsageError(`invalid create option '${item}': expected key=value (see 'vhdx create -o help')`);
      yield [item.slice(0, eq), item.slice(eq + 1)];
    }
  }
}

/** `-o` values for a VHD (create -f vpc, convert -O vpc). */
export interface VhdOptionValues {
  subformat?: 'fixed' | 'dynamic';
  blockSize?: number;
  /** convert only: an Azure-ready fixed VHD; 'round' pads the size up to a whole MiB. */
  azure?: 'on' | 'round';
}

/**
 * Parse `-o` values for a VHD (`azure` only where `allowAzure`, i.e. for convert, which knows the
 * size from its source). Unknown keys, bad values and contradictions are a UsageError; sizes are
 * left to `planVhd`.
 */
export function parseVhdOptions(specs: string[], allowAzure: boolean): VhdOptionValues {
  const out: VhdOptionValues = {};
  for (const [key, value] of keyValues(specs)) {
    switch (key) {
      case 'subformat':
        out.subformat = subformat(value);
        break;
      case 'block_size':
        out.blockSize = parseSize(value, 'block_size');
        break;
      case 'azure':
        if (!allowAzure) throw new UsageError("azure is a convert option (vhdx convert -O vpc -o azure=on SRC DST): the size comes from the source");
        if (value === 'off') delete out.azure;
        else if (value === 'on' || value === 'round') out.azure = value;
        else throw new UsageError(`azure must be on, round or off, not '${value}'`);
        break;
      default:
        throw new UsageError(`unknown vpc option '${key}' (known: subformat, block_size${allowAzure ? ', azure' : ''})`);
    }
  }
  if (out.azure !== undefined) {
    if (out.subformat === 'dynamic') throw new UsageError('azure takes a fixed VHD only: leave out subformat=dynamic');
    if (out.blockSize !== undefined) throw new UsageError('azure makes a fixed VHD, which has no blocks: leave out block_size');
  }
  return out;
}

/** createVhd's options for a disk of `size` bytes made as `o` says (azure: fixed, the size checked or rounded to a whole MiB, Hyper-V's creator). */
export function vhdCreateOptions(o: VhdOptionValues, size: number): CreateVhdOptions {
  if (o.azure !== undefined) return azureCreateOptions(size, o.azure === 'round');
  return { size, ...(o.subformat ? { subformat: o.subformat } : {}), ...(o.blockSize !== undefined ? { blockSize: o.blockSize } : {}) };
}

/**
 * Make a VHD file at `path` and return it open for writing (one file handle and lock). The
 * options are checked (`planVhd`, then `onPlan`) before the file is touched; the file is made
 * exclusively (EEXIST / FILE_EXISTS) unless `overwrite`, and removed if anything fails after.
 */
export async function createVhdFile(
  path: string,
  opts: CreateVhdOptions & { overwrite?: boolean; cache?: CacheMode; onPlan?: (p: VhdPlan) => void },
): Promise<VhdImage> {
  const { overwrite = false, cache, onPlan, ...create } = opts;
  const plan = planVhd(create);
  onPlan?.(plan);
  return withNewFile(path, { overwrite, cache }, async (src) => {
    // The plan's id and time, so that the file is what onPlan was shown.
    await createVhd(src, { ...create, uniqueId: plan.uniqueId, time: plan.time });
    return VhdImage.open(src, { readOnly: false, name: path });
  });
}

function subformat(value: string): 'dynamic' | 'fixed' {
  if (value !== 'dynamic' && value !== 'fixed') throw new UsageError(`subformat must be dynamic or fixed, not '${value}'`);
  return value;
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
  const format = formatOption(values.format, 'image', ['vhdx', 'vpc']) ?? 'vhdx';
  if (specs.includes('help') || specs.includes('?')) {
    io.out(format === 'vpc' ? VPC_OPTIONS_HELP : CREATE_OPTIONS_HELP);
    return 0;
  }
  if (format === 'vpc') return createVhdCommand(positionals, values, specs, io);
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

/** `create -f vpc`: a fixed or dynamic VHD of SIZE bytes (no -b: differencing VHDs are made by the library only). */
async function createVhdCommand(positionals: string[], values: Record<string, unknown>, specs: string[], io: Io): Promise<number> {
  if (values.backing !== undefined || values['backing-format'] !== undefined) {
    throw new UsageError('-b is for -f vhdx: vhdx create does not make differencing VHDs');
  }
  if (positionals.length !== 2) throw new UsageError(`expected FILE and SIZE\nusage: ${CREATE_USAGE}`);
  const [path, sizeText] = positionals as [string, string];
  const opts = vhdCreateOptions(parseVhdOptions(specs, false), parseSize(sizeText, 'size'));
  requireDirectory(path, 'image');
  const img = await naming(path, () =>
    createVhdFile(path, {
      ...opts,
      // Said before the file is made, as qemu-img does.
      onPlan: (p) => {
        if (values.quiet === true) return;
        io.out(`Formatting '${path}', fmt=vpc size=${p.size} subformat=${p.type}${p.type === 'fixed' ? '' : ` block_size=${p.blockSize}`}\n`);
      },
    }),
  );
  await img.close();
  return 0;
}
