/** `vhdx info [--output=human|json] FILE` */
import { openFile } from '../node-files.js';
import { describe, type ImageInfo } from '../driver/info.js';
import { humanSize, outputFormat, parentPaths, parse, UsageError, type Io } from './common.js';
import { isVhdxError } from '../errors.js';
import type { VhdxImage } from '../driver/image.js';

export { INFO_USAGE } from './usage.js';
import { INFO_USAGE } from './usage.js';

export async function infoCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { output: { type: 'string' }, allocation: { type: 'string' }, parents: { type: 'string' }, 'force-share': { type: 'boolean', short: 'U' } }, INFO_USAGE);
  const format = outputFormat(values.output);
  const allocation = values.allocation ?? 'auto';
  if (allocation !== 'auto' && allocation !== 'always' && allocation !== 'never') {
    throw new UsageError(`--allocation must be auto, always or never, not ${String(allocation)}`);
  }
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${INFO_USAGE}`);
  const path = positionals[0]!;
  const parents = parentPaths(values.parents);
  const forceShare = values['force-share'] === true;
  let img: VhdxImage;
  let chainError: string | null = null;
  try {
    img = await openFile(path, { parents, forceShare });
  } catch (e) {
    // A differencing image whose chain cannot be opened is still described, with the reason.
    if (parents === 'none' || !isVhdxError(e)) throw e;
    img = await openFile(path, { parents: 'none', forceShare }).catch(() => {
      throw e;
    });
    chainError = e.message;
  }
  try {
    const info: ImageInfo & { chainError?: string } = await describe(img, { allocation });
    if (chainError !== null) info.chainError = chainError;
    if (format === 'json') io.out(JSON.stringify(info, null, 2) + '\n');
    else io.out(humanInfo(path, info));
  } finally {
    await img.close();
  }
  return 0;
}

function humanInfo(path: string, i: ImageInfo & { chainError?: string }): string {
  const lines = [
    `image: ${path}`,
    `file format: vhdx`,
    `type: ${i.type}`,
    `virtual size: ${humanSize(i.virtualSize)} (${i.virtualSize} bytes)`,
    `file size: ${humanSize(i.fileSize)} (${i.fileSize} bytes)`,
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
  return lines.join('\n') + '\n';
}
