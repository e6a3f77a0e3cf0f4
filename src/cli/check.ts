/**
 * `vhdx check [--output=human|json] [-r leaks|all] FILE`, modelled on `qemu-img check`.
 * Exit status: 0 clean, 1 the check could not complete, 2 corruption, 3 leaked clusters only,
 * 63 the image cannot be checked (not a VHDX, or a feature this check does not handle). After a
 * repair the status describes the image as repaired.
 */
import { NodeFileSource } from '../io/node-file.js';
import { azureProblems, type AzureProblem } from '../vhd/azure.js';
import { checkImage, repairImage, type CheckResult, type Finding, type RepairMode, type RepairResult } from '../driver/check.js';
import { checkVhd, repairVhd, type VhdCheckResult, type VhdRepairResult } from '../vhd/check.js';
import { formatOffset } from '../errors.js';
import type { HttpStats } from '../io/http.js';
import { fragmentationPercentage } from '../format/bat.js';
import { openImageSource } from '../device/open-node.js';
import { detectFormat } from '../device/open.js';
import { isUrl } from '../device/parents.js';
import { naming, outputFormat, parentPaths, parse, UsageError, type Io } from './common.js';
import { formatOption, newHttpStats, READ_FORMATS, reportHttp } from './image-format.js';

/** A check of either format: VHDX's result, or VHD's in the same shape. */
type AnyCheck = CheckResult | VhdCheckResult;
type AnyRepair = RepairResult | VhdRepairResult;

export { CHECK_USAGE } from './usage.js';
import { CHECK_USAGE } from './usage.js';

export const CHECK_EXIT = { clean: 0, incomplete: 1, corruption: 2, leaks: 3, unsupported: 63 } as const;

export async function checkCommand(args: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      format: { type: 'string', short: 'f' },
      output: { type: 'string' },
      repair: { type: 'string', short: 'r' },
      progress: { type: 'boolean', short: 'p' },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
      verbose: { type: 'boolean', short: 'v' },
      azure: { type: 'boolean' },
    },
    CHECK_USAGE,
  );
  if (values.azure === true) return azureCheck(values, positionals, io);
  const fmt = formatOption(values.format, 'image', READ_FORMATS);
  const format = outputFormat(values.output);
  const repair = values.repair;
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') {
    throw new UsageError(`-r must be leaks or all, not ${String(repair)}\nusage: ${CHECK_USAGE}`);
  }
  const forceShare = values['force-share'] === true;
  if (forceShare && repair !== undefined) throw new UsageError('-U (--force-share) is for a check without -r: a repair writes the image');
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${CHECK_USAGE}`);
  const path = positionals[0]!;
  if (fmt === 'raw') {
    // As qemu-img: a raw image has no structure to check.
    io.err(`vhdx: ${path}: raw images cannot be checked (a raw file has no metadata)\n`);
    return CHECK_EXIT.unsupported;
  }
  // A differencing image's parent is opened as the readers open it (--parents=none: the image alone).
  const stats = isUrl(path) ? newHttpStats() : null;
  const { source: src, vhdxParents, vhdParents } = await openImageSource(path, {
    readOnly: repair === undefined,
    forceShare,
    parents: parentPaths(values.parents),
    ...(stats ? { http: { stats } } : {}),
  });
  let result: AnyCheck;
  let repaired: AnyRepair | null = null;
  // The progress bar's package loads only when asked for.
  const bar = values.progress === true ? (await import('./progress.js')).progressBar(true, 'checking', 'entries') : null;
  try {
    const opts = {
      ...(signal ? { signal } : {}),
      ...(bar ? { onProgress: (done: number, total: number) => bar.update(done, total) } : {}),
    };
    // A VHD is checked as one (named by -f, or found by the probe); anything else as a VHDX,
    // whose check says what it is not.
    const mode = repair as RepairMode | undefined;
    if (fmt === 'vpc' || (fmt === undefined && (await detectFormat(src)) === 'vpc')) {
      const vopts = { ...opts, ...(vhdParents ? { parent: vhdParents } : {}) };
      repaired = mode ? await repairVhd(src, { ...vopts, mode }) : null;
      result = repaired?.after ?? (await checkVhd(src, vopts));
    } else {
      const xopts = { ...opts, ...(vhdxParents ? { parent: vhdxParents } : {}) };
      repaired = mode ? await repairImage(src, { ...xopts, mode }) : null;
      result = repaired?.after ?? (await checkImage(src, xopts));
    }
  } finally {
    bar?.stop();
    await src.close();
  }

  if (format === 'json') io.out(JSON.stringify(checkJson(path, result, repaired, stats), null, 2) + '\n');
  else {
    if (repaired) io.out(humanRepair(repaired));
    if (result.supported) io.out(humanCheck(result));
    if (!result.supported) io.err(`vhdx: ${path}: this image cannot be checked: ${result.error?.message ?? 'not supported'}\n`);
    else if (!result.canComplete) io.err(`vhdx: ${path}: the check could not complete: ${result.error?.message ?? 'read error'}\n`);
  }
  reportHttp(stats, values.verbose === true, io);
  return exitStatus(result);
}

/**
 * `check --azure FILE`: every rule of Azure's for an uploaded VHD that FILE breaks (azure.ts), and
 * warnings (readers that would see another size). Exit 0 when Azure accepts the file, 2 when it
 * breaks any rule. Reads the footer only; the file is taken as a VHD whatever it is (a VHDX or a
 * raw file breaks the footer rule).
 */
async function azureCheck(values: Record<string, unknown>, positionals: string[], io: Io): Promise<number> {
  if (values.repair !== undefined) throw new UsageError('--azure only checks: -r cannot repair a file into an Azure disk (vhdx convert -O vpc -o azure=on makes one)');
  if (values.parents !== undefined) throw new UsageError('--azure checks one fixed VHD: --parents does not apply');
  formatOption(values.format, 'image', ['vpc']);
  const format = outputFormat(values.output);
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${CHECK_USAGE}`);
  const path = positionals[0]!;
  const src = await naming(path, () => NodeFileSource.open(path, { forceShare: values['force-share'] === true }));
  let problems: AzureProblem[];
  try {
    problems = await azureProblems(src);
  } finally {
    await src.close();
  }
  const errors = problems.filter((p) => p.severity === 'error').length;
  const code = errors > 0 ? CHECK_EXIT.corruption : CHECK_EXIT.clean;
  if (format === 'json') {
    io.out(JSON.stringify({ filename: path, azure: { accepted: errors === 0, problems }, exitCode: code }, null, 2) + '\n');
  } else {
    const lines = problems.map((p) => `${p.severity === 'error' ? 'ERROR' : 'Warning'}: [${p.rule}] ${p.message}`);
    if (lines.length > 0) lines.push('');
    lines.push(errors === 0 ? 'Azure accepts this VHD as a disk.' : `${errors} Azure rule${errors === 1 ? ' is' : 's are'} broken: Azure refuses this file (vhdx convert -O vpc -o azure=on makes one it accepts).`);
    io.out(lines.join('\n') + '\n');
  }
  return code;
}

export function exitStatus(r: AnyCheck): number {
  if (!r.supported) return CHECK_EXIT.unsupported;
  if (!r.canComplete) return CHECK_EXIT.incomplete;
  if (r.corruptions > 0) return CHECK_EXIT.corruption;
  if (r.leaks > 0) return CHECK_EXIT.leaks;
  return CHECK_EXIT.clean;
}

const LABELS: Record<Finding['severity'], string> = { corruption: 'ERROR', leak: 'Leaked', warning: 'Warning', info: 'Info' };

function where(f: { structure?: string | undefined; offset?: number | undefined }): string {
  if (f.structure !== undefined) return ` (${f.structure}${f.offset !== undefined ? ` at file offset ${formatOffset(f.offset)}` : ''})`;
  return f.offset !== undefined ? ` (at file offset ${formatOffset(f.offset)})` : '';
}

function humanCheck(r: AnyCheck): string {
  const lines: string[] = [];
  for (const f of r.findings) {
    const fix = f.repairableBy ? `; 'vhdx check -r ${f.repairableBy}' repairs it` : '';
    lines.push(`${LABELS[f.severity]}: ${f.message}${where(f)}${fix}`);
  }
  if (r.omittedFindings > 0) lines.push(`... and ${r.omittedFindings} more findings, not listed`);
  if (lines.length > 0) lines.push('');
  if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) lines.push('No errors were found on the image.');
  else {
    if (r.corruptions > 0) {
      lines.push(`${r.corruptions} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
    }
    if (r.leaks > 0) {
      if (r.corruptions > 0) lines.push('');
      lines.push(`${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
    }
    if (r.checkErrors > 0) {
      if (r.corruptions > 0 || r.leaks > 0) lines.push('');
      lines.push(`${r.checkErrors} internal errors have occurred during the check.`);
    }
  }
  if (r.totalBlocks > 0 && r.allocatedBlocks > 0) {
    const pct = (n: number, d: number): string => ((100 * n) / d).toFixed(2);
    lines.push(
      `${r.allocatedBlocks}/${r.totalBlocks} = ${pct(r.allocatedBlocks, r.totalBlocks)}% allocated, ${fragmentationPercentage(r.fragmentedBlocks, r.allocatedBlocks).toFixed(2)}% fragmented, 0.00% compressed clusters`,
    );
  }
  if (r.imageEndOffset !== null) lines.push(`Image end offset: ${r.imageEndOffset}`);
  return lines.join('\n') + '\n';
}

function humanRepair(p: AnyRepair): string {
  const lines: string[] = [];
  if (p.actions.length > 0) {
    lines.push('The following inconsistencies were found and repaired:', '', `    ${p.leaksFixed} leaked clusters`, `    ${p.corruptionsFixed} corruptions`);
    if ('logEntriesReplayed' in p && p.logEntriesReplayed > 0) lines.push(`    ${p.logEntriesReplayed} log entries replayed into the file`);
    lines.push('');
    for (const a of p.actions) lines.push(`  ${a.message}`);
    lines.push('', 'Double checking the fixed image now...');
  } else if (p.refusal !== null) {
    lines.push(`The image was not repaired: ${p.refusal}.`);
    for (const f of p.refused) lines.push(`  cannot repair: ${f.message}${where(f)}`);
    lines.push('');
  }
  return lines.length > 0 ? lines.join('\n') + '\n' : '';
}

/** The JSON form: the check's fields with stable camelCase keys, absent values as null. */
export function checkJson(path: string, r: AnyCheck, repaired: AnyRepair | null, http: HttpStats | null = null): Record<string, unknown> {
  const finding = (f: Finding): Record<string, unknown> => ({
    severity: f.severity,
    reason: f.reason,
    message: f.message,
    structure: f.structure ?? null,
    offset: f.offset ?? null,
    repairableBy: f.repairableBy,
  });
  const out: Record<string, unknown> = {
    filename: path,
    format: r.format,
    type: r.type,
    supported: r.supported,
    canComplete: r.canComplete,
    error: r.error ? { reason: r.error.reason, message: r.error.message, structure: r.error.structure ?? null, offset: r.error.offset ?? null } : null,
    corruptions: r.corruptions,
    leaks: r.leaks,
    leakedBytes: r.leakedBytes,
    warnings: r.warnings,
    checkErrors: r.checkErrors,
    fileSize: r.fileSize,
    imageEndOffset: r.imageEndOffset,
    totalBlocks: r.totalBlocks,
    allocatedBlocks: r.allocatedBlocks,
    fragmentedBlocks: r.fragmentedBlocks,
    fragmentationPercentage: fragmentationPercentage(r.fragmentedBlocks, r.allocatedBlocks),
    bitmapBlocks: 'bitmapBlocks' in r ? r.bitmapBlocks : null,
    log: 'log' in r ? r.log : null,
    findings: r.findings.map(finding),
    omittedFindings: r.omittedFindings,
    exitCode: exitStatus(r),
  };
  if (repaired) {
    out.repair = {
      mode: repaired.mode,
      leaksFixed: repaired.leaksFixed,
      corruptionsFixed: repaired.corruptionsFixed,
      logEntriesReplayed: 'logEntriesReplayed' in repaired ? repaired.logEntriesReplayed : 0,
      actions: repaired.actions.map((a) => ({ action: a.action, message: a.message, structure: 'structure' in a ? (a.structure ?? null) : null, offset: a.offset ?? null })),
      refusal: repaired.refusal,
      refused: repaired.refused.map(finding),
      before: { corruptions: repaired.before.corruptions, leaks: repaired.before.leaks, leakedBytes: repaired.before.leakedBytes, warnings: repaired.before.warnings },
    };
  }
  if ('size' in r) out.size = r.size;
  if (http) out.http = { ...http };
  return out;
}
