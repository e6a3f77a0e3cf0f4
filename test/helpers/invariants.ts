// A small structural checker for images the writer produced, written independently of
// src/driver/check.ts: headers, region tables, layout validation, and every BAT entry. The
// library's own checkImage runs too, and any corruption or check error it reports is a finding
// (leaks only with `noLeaks`: a crash may leave placed-but-unreferenced blocks in the file).
// Differencing disks may also hold sector bitmap blocks and PARTIALLY_PRESENT payload blocks.
// Returns a list of findings (strings); empty means the image is sound.
import { HEADER } from '../../src/format/header.js';
import { REGION_TABLE_HEADER } from '../../src/format/region-table.js';
import { openLayout, type Layout } from '../../src/driver/open.js';
import { BitmapState, PayloadState } from '../../src/format/bat.js';
import { readBytes, type RandomAccessSource } from '../../src/io/source.js';
import { checkImage } from '../../src/driver/check.js';
import { isVhdxError } from '../../src/errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const NIL = '00000000-0000-0000-0000-000000000000';

/**
 * Check `src` (any RandomAccessSource). Options:
 * - clean: the LogGuid must be zero (after a writable close).
 * - noLeaks: checkImage must find no leaked space (an image the writer closed without a crash
 *   names all its space and ends at its last object).
 */
export async function checkInvariants(src: RandomAccessSource, { clean = true, noLeaks = false }: { clean?: boolean; noLeaks?: boolean } = {}): Promise<string[]> {
  const findings: string[] = [];
  const head = await readBytes(src, 0, MiB, 'header section');
  // Headers: at least one valid; the two differ by sequence number (or are identical).
  const hs = [64 * KiB, 128 * KiB].map((at) => {
    try {
      return HEADER.decode(head.subarray(at, at + 4096));
    } catch {
      return null;
    }
  });
  const [a, b] = hs;
  let current = a ?? b;
  if (!current) return ['no valid header'];
  if (a && b) {
    if (a.sequenceNumber === b.sequenceNumber) {
      const same = head.subarray(64 * KiB, 68 * KiB).every((x, i) => x === head[128 * KiB + i]);
      if (!same) findings.push('both headers have the same sequence number but differ');
    }
    current = a.sequenceNumber > b.sequenceNumber ? a : b;
  }
  if (clean && current.logGuid !== NIL) findings.push(`LogGuid is set (${current.logGuid}) on a closed image`);
  // Region tables: both valid and identical (the writer never changes them).
  for (const at of [192 * KiB, 256 * KiB]) {
    if (!REGION_TABLE_HEADER.checksumOk(head.subarray(at, at + 64 * KiB))) findings.push(`region table at ${at} is invalid`);
  }
  if (!head.subarray(192 * KiB, 256 * KiB).every((x, i) => x === head[256 * KiB + i])) findings.push('region tables differ');

  let layout: Layout;
  try {
    layout = await openLayout(src);
  } catch (e) {
    findings.push(`openLayout: ${isVhdxError(e) ? e.reason : ''} ${e instanceof Error ? e.message : String(e)}`);
    return findings;
  }
  const fileSize = layout.source.size;
  const bs = layout.blockSize;
  const C = layout.geometry.chunkRatio;
  const objects = [
    { what: 'log', from: layout.log.logOffset, to: layout.log.logOffset + layout.log.logLength },
    ...layout.regions.map((r) => ({ what: `region ${r.guid}`, from: r.fileOffset, to: r.fileOffset + r.length })),
  ];
  const blocks: { i: number; from: number; to: number }[] = [];
  const bat = await readBytes(layout.source, layout.batRegion.fileOffset, layout.batEntries * 8, 'BAT');
  const dv = new DataView(bat.buffer, bat.byteOffset, bat.byteLength);
  for (let i = 0; i < layout.batEntries; i++) {
    const lo = dv.getUint32(i * 8, true);
    const hi = dv.getUint32(i * 8 + 4, true);
    if (lo === 0 && hi === 0) continue;
    const state = lo & 7;
    const offset = (hi * 4096 + (lo >>> 20)) * MiB;
    if ((lo & 0x000ffff8) !== 0) findings.push(`BAT ${i}: reserved bits set`);
    if ((i + 1) % (C + 1) === 0) {
      // Differencing disks: a present sector bitmap block is a 1 MiB object like any other.
      if (layout.hasParent && state === BitmapState.PRESENT) {
        if (offset < MiB) findings.push(`BAT ${i}: sector bitmap block at ${offset} inside the header section`);
        if (offset + MiB > fileSize) findings.push(`BAT ${i}: sector bitmap block at ${offset} past the end of the file (${fileSize})`);
        blocks.push({ i, from: offset, to: offset + MiB });
      } else findings.push(`BAT ${i}: sector bitmap entry is not zero (state ${state})`);
      continue;
    }
    const blockIndex = i - Math.floor(i / (C + 1));
    if (blockIndex >= layout.geometry.payloadBlocks) {
      findings.push(`BAT ${i}: entry past the last payload block is not zero`);
      continue;
    }
    if (layout.leaveBlocksAllocated && state !== PayloadState.FULLY_PRESENT) {
      findings.push(`BAT ${i}: fixed disk block in state ${state}`);
    }
    if (state === PayloadState.FULLY_PRESENT || (layout.hasParent && state === PayloadState.PARTIALLY_PRESENT)) {
      if (offset < MiB) findings.push(`BAT ${i}: block at ${offset} inside the header section`);
      if (offset + bs > fileSize) findings.push(`BAT ${i}: block at ${offset} (+${bs}) past the end of the file (${fileSize})`);
      blocks.push({ i, from: offset, to: offset + bs });
    } else if (state === PayloadState.UNMAPPED && offset !== 0) {
      // A discarded block keeps its place (the writer reuses it): an object like any block.
      if (offset < MiB) findings.push(`BAT ${i}: UNMAPPED block's place at ${offset} inside the header section`);
      if (offset + bs > fileSize) findings.push(`BAT ${i}: UNMAPPED block's place at ${offset} (+${bs}) past the end of the file (${fileSize})`);
      blocks.push({ i, from: offset, to: offset + bs });
    } else if (state === PayloadState.ZERO || state === PayloadState.UNMAPPED || state === PayloadState.NOT_PRESENT) {
      if (offset !== 0) findings.push(`BAT ${i}: state ${state} with a file offset ${offset}`);
    } else {
      findings.push(`BAT ${i}: unexpected state ${state}`);
    }
  }
  blocks.sort((a, b) => a.from - b.from);
  for (let k = 1; k < blocks.length; k++) {
    const a = blocks[k - 1]!;
    const b = blocks[k]!;
    if (b.from < a.to) findings.push(`BAT ${a.i} and ${b.i} overlap (${a.from} and ${b.from})`);
  }
  for (const b of blocks) {
    for (const o of objects) {
      if (b.from < o.to && o.from < b.to) findings.push(`BAT ${b.i}: block at ${b.from} overlaps the ${o.what}`);
    }
  }
  const lib = await checkImage(src);
  if (!lib.supported || !lib.canComplete) findings.push(`checkImage could not complete: ${lib.error?.reason} ${lib.error?.message}`);
  for (const f of lib.findings) {
    if (f.severity === 'corruption' || (clean && f.reason.startsWith('LOG')) || (noLeaks && f.severity === 'leak')) findings.push(`checkImage: ${f.reason} ${f.message}`);
  }
  return findings;
}
