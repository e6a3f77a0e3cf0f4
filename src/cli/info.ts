/** `vhdx info [-f vhdx|raw] [--output=human|json] [--backing-chain] FILE` */
import { describe, type ImageInfo } from '../driver/info.js';
import { humanSize, namedError, naming, outputFormat, parentPaths, parse, UsageError, type Io } from './common.js';
import { diskUsage, formatOption, newHttpStats, openImage, READ_FORMATS, reportHttp } from './image-format.js';
import { isVhdxError } from '../errors.js';
import { VhdImage } from '../vhd/image.js';
import { describeVhd, type VhdInfo } from '../vhd/info.js';
import { RawDevice } from '../device/raw.js';
import type { OpenedDevice } from '../device/open.js';
import { isUrl } from '../device/parents.js';
import type { BlockDevice } from '../device/block-device.js';
import { describeContents, type ContentsInfo } from '../inspect/contents.js';

export { INFO_USAGE } from './usage.js';
import { INFO_USAGE } from './usage.js';

/** With --allocation=auto, allocated blocks are read for zeros when they hold at most this much. */
export const AUTO_ZERO_SCAN_BYTES = 512 * 1024 * 1024;

/**
 * What `info` prints for one image: describe()'s fields, with the file's name and its disk usage,
 * and what is inside the disk (partitions, filesystems, reclaimable space).
 */
type FileInfo = { filename: string } & ImageInfo & { actualSize: number | null; chainError?: string } & (ContentsInfo | { contentsError: string });

export async function infoCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      format: { type: 'string', short: 'f' },
      output: { type: 'string' },
      'backing-chain': { type: 'boolean' },
      allocation: { type: 'string' },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
      verbose: { type: 'boolean', short: 'v' },
    },
    INFO_USAGE,
  );
  const format = outputFormat(values.output);
  const allocation = values.allocation ?? 'auto';
  if (allocation !== 'auto' && allocation !== 'always' && allocation !== 'never') {
    throw new UsageError(`--allocation must be auto, always or never, not ${String(allocation)}`);
  }
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${INFO_USAGE}`);
  const path = positionals[0]!;
  const fmt = formatOption(values.format, 'image', READ_FORMATS);
  const parents = parentPaths(values.parents);
  const forceShare = values['force-share'] === true;
  const backingChain = values['backing-chain'] === true;
  const stats = isUrl(path) ? newHttpStats() : null;
  const open = (p: typeof parents): Promise<OpenedDevice> => openImage(path, fmt, { parents: p, forceShare, ...(stats ? { http: { stats } } : {}) }, io);
  let img: OpenedDevice;
  let chainError: string | null = null;
  try {
    img = await open(parents);
  } catch (e) {
    // A differencing image whose chain cannot be opened is still described, with the reason.
    if (parents === 'none' || !isVhdxError(e)) throw namedError(path, e);
    img = await open('none').catch(() => {
      throw namedError(path, e);
    });
    chainError = e.message;
  }
  await naming(path, async () => {
    const out = (infos: object[]): void => {
      if (format === 'json') {
        const withHttp = stats ? infos.map((i) => ({ ...i, http: { ...stats } })) : infos;
        io.out(JSON.stringify(backingChain ? withHttp : withHttp[0], null, 2) + '\n');
      }
    };
    if (img instanceof RawDevice) {
      const raw = rawInfo(path, img);
      out([raw]);
      if (format !== 'json') io.out(humanRawInfo(raw));
      return;
    }
    if (img instanceof VhdImage) {
      const levels = backingChain ? img.chain : [img];
      const infos = levels.map((level, depth) => vhdInfo(depth === 0 ? path : (level.name ?? path), level, depth === 0 ? chainError : null));
      out(infos);
      if (format !== 'json') io.out(infos.map(humanVhdInfo).join('\n'));
      return;
    }
    // With --backing-chain, every image of the chain in turn, as `qemu-img info --backing-chain`.
    const levels = backingChain ? img.chain : [img];
    const infos: FileInfo[] = [];
    for (const [depth, level] of levels.entries()) {
      const described = await describe(level, { allocation });
      const info = withFile(depth === 0 ? path : (level.name ?? path), described, await contentsOf(level, described, allocation));
      if (depth === 0 && chainError !== null) info.chainError = chainError;
      infos.push(info);
    }
    out(infos);
    if (format !== 'json') io.out(infos.map(humanInfo).join('\n'));
  }).finally(() => img.close());
  reportHttp(stats, values.verbose === true, io);
  return 0;
}

/** `info` for a VHDX: `filename` first, `actualSize` (bytes on the host, as du) after `fileSize`. */
function withFile(filename: string, info: ImageInfo, contents: ContentsInfo | { contentsError: string }): FileInfo {
  const out: Record<string, unknown> = { filename };
  for (const [k, v] of Object.entries(info)) {
    out[k] = v;
    if (k === 'fileSize') out.actualSize = actualSize(filename);
  }
  return Object.assign(out, contents) as unknown as FileInfo;
}

/**
 * What is inside the disk: partitions, filesystems, usage, and what a compact could reclaim.
 * The reclaimable space walks the image's allocation, so it is computed only when describe()
 * scanned the BAT (a small BAT with --allocation=auto, or =always): a 64 TiB disk with 1 MiB
 * blocks has a 512 MiB BAT, which `info` does not read unless asked. Blocks are read for zeros
 * when few enough, or with =always. Filesystem usage comes from the free counters where a
 * filesystem keeps them (the ext group descriptors), without its allocation maps; with =always,
 * from the maps, which also makes the reclaimable figure exact (with the counters it may be
 * less, never more). A disk that cannot be read (a differencing image without its parent)
 * says why instead.
 */
async function contentsOf(img: BlockDevice, info: ImageInfo, allocation: string): Promise<ContentsInfo | { contentsError: string }> {
  const scanned = info.allocation;
  try {
    return await describeContents(img, {
      ...(scanned !== null ? { blockSize: info.blockSize } : {}),
      scanZeros: allocation === 'always' || (allocation === 'auto' && scanned !== null && (scanned.bytesByState.fullyPresent ?? 0) <= AUTO_ZERO_SCAN_BYTES),
      // Reading every allocation map (all the ext block bitmaps) only when asked to read it all.
      usage: allocation === 'always' ? 'maps' : 'counters',
    });
  } catch (e) {
    if (!isVhdxError(e)) throw e;
    return { contentsError: e.message };
  }
}

interface RawInfo {
  filename: string;
  format: 'raw';
  virtualSize: number;
  fileSize: number;
  actualSize: number | null;
}

/** `info -f raw`: the file is the disk, as `qemu-img info` describes a raw file. */
function rawInfo(path: string, dev: RawDevice): RawInfo {
  return { filename: path, format: 'raw', virtualSize: dev.size, fileSize: dev.size, actualSize: actualSize(path) };
}

/** Bytes a file takes on the host; unknown for an image read over HTTP. */
function actualSize(name: string): number | null {
  return isUrl(name) ? null : diskUsage(name);
}

type VhdFileInfo = { filename: string } & VhdInfo & { actualSize: number | null; chainError?: string };

function vhdInfo(filename: string, img: VhdImage, chainError: string | null): VhdFileInfo {
  const { fileSize, ...rest } = describeVhd(img);
  const { format, type, virtualSize, ...more } = rest;
  return { filename, format, type, virtualSize, fileSize, actualSize: actualSize(filename), ...more, ...(chainError !== null ? { chainError } : {}) };
}

function humanVhdInfo(i: VhdFileInfo): string {
  const g = i.geometry;
  const lines = [
    `image: ${i.filename}`,
    'file format: vpc',
    `type: ${i.type}`,
    `virtual size: ${humanSize(i.virtualSize)} (${i.virtualSize} bytes)`,
    `file size: ${humanSize(i.fileSize)} (${i.fileSize} bytes)`,
    diskSizeLine(i.actualSize),
    ...(i.blockSize !== null ? [`block size: ${humanSize(i.blockSize)}`] : []),
    `size rule: ${i.sizeRule.from}: ${i.sizeRule.why}${i.sizeRule.otherSize !== null ? ` (the other rule gives ${i.sizeRule.otherSize} bytes)` : ''}`,
    `current size: ${i.currentSize} bytes, original size: ${i.originalSize} bytes`,
    `geometry: ${g.cylinders} cylinders, ${g.heads} heads, ${g.sectorsPerTrack} sectors per track`,
    `creator: ${JSON.stringify(i.creator.application)} version ${i.creator.version} on ${JSON.stringify(i.creator.hostOs)}`,
    `unique id: ${i.uniqueId}`,
    `created: ${i.created}`,
    ...(i.savedState ? ['saved state: yes'] : []),
    ...(i.footerFrom === 'head' ? ["footer: the copy at offset 0 (the footer at the end is missing or damaged; 'vhdx check -r all' repairs it)"] : []),
  ];
  if (i.parent) {
    lines.push(`parent: ${i.parent.name}, unique id ${i.parent.uniqueId}`);
    for (const p of i.parents) lines.push(`backing file (depth ${p.depth}): ${p.name ?? '(unnamed)'}, ${p.type}, unique id ${p.uniqueId}`);
    if (i.chainError !== undefined) lines.push(`backing chain: not opened: ${i.chainError}`);
  }
  return lines.join('\n') + '\n';
}

function diskSizeLine(actual: number | null): string {
  return `disk size: ${actual === null ? 'unavailable' : humanSize(actual)}`;
}

function humanRawInfo(i: RawInfo): string {
  return [`image: ${i.filename}`, 'file format: raw', `virtual size: ${humanSize(i.virtualSize)} (${i.virtualSize} bytes)`, diskSizeLine(i.actualSize)].join('\n') + '\n';
}

function humanInfo(i: FileInfo): string {
  const lines = [
    `image: ${i.filename}`,
    `file format: vhdx`,
    `type: ${i.type}`,
    `virtual size: ${humanSize(i.virtualSize)} (${i.virtualSize} bytes)`,
    `file size: ${humanSize(i.fileSize)} (${i.fileSize} bytes)`,
    diskSizeLine(i.actualSize),
    `block size: ${humanSize(i.blockSize)}`,
    `sector size: ${i.logicalSectorSize} logical, ${i.physicalSectorSize} physical`,
    `disk id: ${i.diskId}`,
    `creator: ${i.creator || '(none)'}`,
    `header: slot ${i.header.slot}, sequence number ${i.header.sequenceNumber}`,
    `  file write guid: ${i.header.fileWriteGuid}`,
    `  data write guid: ${i.header.dataWriteGuid}`,
    `log: ${i.log.state}${i.log.state === 'dirty' ? `, ${i.log.entries} entries in the active sequence${i.log.replayedInMemory ? ' (replayed in memory; the file is unchanged)' : ''}` : ''}, ${humanSize(i.log.length)} at offset ${i.log.offset}`,
    `region table: copy ${i.regionTable.copyUsed} used${i.regionTable.copiesValid.every(Boolean) ? '' : ` (valid copies: ${i.regionTable.copiesValid.map((v, k) => (v ? k + 1 : null)).filter((x) => x !== null).join(', ')})`}`,
    ...i.regionTable.regions.map((r) => `  ${r.name.padEnd(9)} ${r.guid}  offset ${r.fileOffset}, length ${r.length}${r.required ? ', required' : ''}`),
    'metadata items:',
    ...i.metadata.map(
      (m) => `  ${m.name.padEnd(19)} offset ${m.offset}, length ${m.length}${m.isRequired ? ', required' : ''}${m.isUser ? ', user' : ''}${m.isVirtualDisk ? ', virtual disk' : ''}`,
    ),
  ];
  if (i.parentLocator) {
    lines.push(`parent locator: type ${i.parentLocator.locatorType}`);
    for (const e of i.parentLocator.entries) lines.push(`  ${e.key}: ${e.value}`);
    for (const p of i.parents) {
      lines.push(`backing file (depth ${p.depth}): ${p.name ?? '(unnamed)'}, ${p.type}, data write guid ${p.dataWriteGuid} (matches ${p.linkedBy})`);
    }
    if (i.chainError !== undefined) lines.push(`backing chain: not opened: ${i.chainError}`);
  }
  if (i.allocation) {
    lines.push('allocation:');
    for (const [state, bytes] of Object.entries(i.allocation.bytesByState)) lines.push(`  ${state.padEnd(16)} ${humanSize(bytes)} (${bytes} bytes)`);
    lines.push(`fragmentation: ${i.fragmentationPercentage}%`);
  } else {
    lines.push(`allocation: not scanned (the BAT is ${humanSize(i.regionTable.regions.find((r) => r.name === 'bat')?.length ?? 0)}; --allocation=always reads it all)`);
  }
  lines.push(...humanContents(i));
  return lines.join('\n') + '\n';
}

function humanContents(i: FileInfo): string[] {
  if ('contentsError' in i) return [`partitions: not read: ${i.contentsError}`];
  const t = i.partitionTable;
  const lines = [`partition table: ${i.partitionScheme}${t.diskId ? `, disk id ${t.diskId}` : ''}, ${t.sectorSize}-byte sectors`];
  for (const f of t.findings) lines.push(`  ${f.severity} (${f.reason}): ${f.message}`);
  for (const p of i.partitions) {
    const what = [p.kind === 'disk' ? 'whole disk' : `${p.index} ${p.kind}`, `offset ${p.start}`, humanSize(p.length)];
    if (p.typeName ?? p.type) what.push(p.typeName ?? p.type ?? '');
    if (p.name) what.push(JSON.stringify(p.name));
    if (p.attributes.length > 0) what.push(`[${p.attributes.join(', ')}]`);
    lines.push(`  ${what.join(', ')}`);
    const f = p.filesystem;
    if (f) {
      const fs = [f.type, f.label ? `label ${JSON.stringify(f.label)}` : '', f.uuid ? `uuid ${f.uuid}` : '', f.state].filter((x) => x !== '');
      lines.push(`    filesystem: ${fs.join(', ')}`);
      if (f.usedBytes !== null && f.freeBytes !== null) {
        lines.push(`    used ${humanSize(f.usedBytes)}, free ${humanSize(f.freeBytes)}${f.trusted ? '' : ` (all counted as used: ${f.untrustedReason})`}`);
      }
    } else if (p.kind !== 'extended') lines.push('    filesystem: none recognised');
  }
  const r = i.reclaimable;
  if (r && i.reclaimableBytes !== null) {
    const zeros = r.zeroBytes === null ? 'blocks not read for zeros (--allocation=always reads them)' : `${humanSize(r.zeroBytes)} in blocks of zeros`;
    lines.push(`reclaimable: ${humanSize(i.reclaimableBytes)} (${humanSize(r.unusedBytes)} in blocks no filesystem uses; ${zeros})`);
  } else if (i.allocation === null) lines.push('reclaimable: not computed (the allocation was not scanned; --allocation=always scans it)');
  return lines;
}

