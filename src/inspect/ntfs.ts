/**
 * NTFS: recognition from the boot sector, label and state from $Volume (MFT record 3), the
 * journal's state from $LogFile's restart pages (record 2), hibernation from hiberfil.sys in
 * the root directory, and the used map from $Bitmap (record 6), read in windows.
 *
 * State follows what ntfs-3g refuses to mount read-write: $Volume's dirty flag; a $LogFile
 * whose current restart area still has clients and lacks the clean flag (an unclean shutdown,
 * or Windows' Fast Startup); a hiberfil.sys whose first page says "hibr" (any case), or that is
 * shorter than a page. Each makes the free space untrusted.
 */
import { viewOf } from '../codec/struct.js';
import type { BlockDevice, ProgressOptions } from '../device/block-device.js';
import type { FilesystemDriver, FilesystemInfo, FilesystemState, Region, Run } from './filesystem.js';
import {
  AT_INDEX_ALLOCATION,
  AT_INDEX_ROOT,
  AT_VOLUME_INFORMATION,
  AT_VOLUME_NAME,
  MFT_RECORD_IN_USE,
  Mft,
  applyFixups,
  attributes,
  parseNtfsBootSector,
  type Attribute,
  type NtfsGeometry,
} from './ntfs-mft.js';
import { bitRuns, noFreeSpace, readInRegion, usedFromFree, type FreeStep, type Span } from './used-map.js';

const RECORD_LOGFILE = 2;
const RECORD_VOLUME = 3;
const RECORD_ROOT = 5;
const RECORD_BITMAP = 6;

const VOLUME_IS_DIRTY = 0x0001;
const RESTART_VOLUME_IS_CLEAN = 0x0002;
const LOGFILE_NO_CLIENT = 0xffff;
/** Index blocks of the root directory searched for hiberfil.sys. */
const MAX_INDEX_BLOCKS = 4096;
const HIBERFILE_PAGE = 4096;
const INDEX_ENTRY_END = 0x2;
/** Bytes of $Bitmap read at a time (at most 256 Ki free spans to hold, however the bits alternate). */
const BITMAP_WINDOW = 64 * 1024;

interface Verdict {
  state: FilesystemState;
  untrusted: string | null;
}

function formatSerial(n: bigint): string {
  return n.toString(16).toUpperCase().padStart(16, '0');
}

async function readBoot(dev: BlockDevice, region: Region): Promise<NtfsGeometry | null> {
  const b = await readInRegion(dev, region, 0, 512);
  return b ? parseNtfsBootSector(b) : null;
}

/** Label and dirty flag from $Volume; null when the record is unreadable. */
async function volumeInfo(mft: Mft): Promise<{ label: string | null; dirty: boolean } | null> {
  const rec = await mft.record(RECORD_VOLUME);
  if (!rec) return null;
  let label: string | null = null;
  let flags: number | null = null;
  for (const a of attributes(rec, mft.geo.clusters)) {
    if (a.type === AT_VOLUME_NAME && a.value && a.value.length > 0) label = new TextDecoder('utf-16le').decode(a.value);
    if (a.type === AT_VOLUME_INFORMATION && a.value && a.value.length >= 12) flags = viewOf(a.value).getUint16(0x0a, true);
  }
  return flags === null ? null : { label, dirty: (flags & VOLUME_IS_DIRTY) !== 0 };
}

/**
 * Whether $LogFile says the volume was shut down cleanly: true when it is empty (all 0xFF, as
 * mkntfs and ntfsfix leave it) or when the newer of the two restart areas has no client in use
 * or carries the clean flag. Null when it cannot be read.
 */
async function logFileClean(mft: Mft): Promise<boolean | null> {
  const rec = await mft.record(RECORD_LOGFILE);
  const data = rec ? await mft.data(RECORD_LOGFILE, rec) : null;
  if (!data?.runs) return null;
  const size = Math.min(data.attr.dataSize, data.attr.initializedSize);
  let empty = true;
  let best: { lsn: bigint; clean: boolean } | null = null;
  let found = 0;
  // Restart pages sit at the start of a page of unknown size: look at 0, 512, 1024, 2048, ...
  for (let pos = 0; pos + 512 <= size && found < 2; pos = pos === 0 ? 512 : pos * 2) {
    const page = await mft.read(data.runs, pos, 512, false);
    if (!page) return null;
    const magic = String.fromCharCode(page[0]!, page[1]!, page[2]!, page[3]!);
    if (magic === '\xff\xff\xff\xff') {
      if (!empty) break;
      continue;
    }
    empty = false;
    if (magic === 'RCRD') break;
    if (magic !== 'RSTR' && magic !== 'CHKD') continue;
    const v = viewOf(page);
    const ra = v.getUint16(0x18, true);
    if (ra < 0x1e || ra + 0x10 > 510) continue;
    found++;
    const lsn = magic === 'RSTR' ? v.getBigInt64(ra, true) : v.getBigInt64(8, true);
    const clean = v.getUint16(ra + 0x0c, true) === LOGFILE_NO_CLIENT || (v.getUint16(ra + 0x0e, true) & RESTART_VOLUME_IS_CLEAN) !== 0;
    if (!best || lsn > best.lsn) best = { lsn, clean };
  }
  if (empty) return true;
  return best ? best.clean : false;
}

/** The MFT record number and sequence of hiberfil.sys in the root directory, if there. */
async function findHiberfile(mft: Mft): Promise<{ record: number; sequence: number } | 'too-large' | 'unreadable' | null> {
  const rec = await mft.record(RECORD_ROOT);
  if (!rec) return 'unreadable';
  const attrs = [...attributes(rec, mft.geo.clusters)];
  const root = attrs.find((a) => a.type === AT_INDEX_ROOT && a.name === '$I30');
  if (!root?.value || root.value.length < 0x20) return 'unreadable';
  const found = scanIndexEntries(root.value, 0x10);
  if (found) return found;
  const alloc = attrs.find((a) => a.type === AT_INDEX_ALLOCATION && a.name === '$I30');
  if (!alloc) return null;
  if (!alloc.runs) return 'unreadable';
  const blockSize = viewOf(root.value).getUint32(8, true);
  if (blockSize < 512 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) return 'unreadable';
  const blocks = Math.floor(alloc.dataSize / blockSize);
  if (blocks > MAX_INDEX_BLOCKS) return 'too-large';
  for (let i = 0; i < blocks; i++) {
    const block = await mft.read(alloc.runs, i * blockSize, blockSize, false);
    if (!block || !applyFixups(block, 'INDX')) continue; // unused or damaged blocks hold no live entries
    const hit = scanIndexEntries(block, 0x18);
    if (hit) return hit;
  }
  return null;
}

/** Look through the entries after the index header at `headerAt` for the name hiberfil.sys. */
function scanIndexEntries(b: Uint8Array, headerAt: number): { record: number; sequence: number } | null {
  const v = viewOf(b);
  if (headerAt + 16 > b.length) return null;
  const first = headerAt + v.getUint32(headerAt, true);
  const end = Math.min(b.length, headerAt + v.getUint32(headerAt + 4, true));
  for (let at = first; at + 0x10 <= end; ) {
    const len = v.getUint16(at + 8, true);
    const keyLen = v.getUint16(at + 0x0a, true);
    const flags = v.getUint16(at + 0x0c, true);
    if (flags & INDEX_ENTRY_END || len < 0x10 || at + len > end) return null;
    if (keyLen >= 0x42 && 0x10 + keyLen <= len) {
      const nameLen = b[at + 0x10 + 0x40]!;
      if (nameLen === 12 && 0x42 + nameLen * 2 <= keyLen) {
        const name = new TextDecoder('utf-16le').decode(b.subarray(at + 0x52, at + 0x52 + 24));
        if (name.toLowerCase() === 'hiberfil.sys') {
          return { record: v.getUint32(at, true) + v.getUint16(at + 4, true) * 0x100000000, sequence: v.getUint16(at + 6, true) };
        }
      }
    }
    at += len;
  }
  return null;
}

/** Whether Windows is hibernated on this volume, as ntfs-3g judges; a reason string when it cannot tell. */
async function hibernated(mft: Mft): Promise<boolean | string> {
  const where = await findHiberfile(mft);
  if (where === null) return false;
  if (where === 'too-large') return 'the root directory is too large to look for hiberfil.sys';
  if (where === 'unreadable') return 'the root directory is unreadable, so hibernation cannot be ruled out';
  const rec = await mft.record(where.record);
  const v = rec ? viewOf(rec) : null;
  if (!rec || !v || !(v.getUint16(0x16, true) & MFT_RECORD_IN_USE) || v.getUint16(0x10, true) !== where.sequence) return false; // a stale entry
  const data = await mft.data(where.record, rec);
  if (!data) return 'hiberfil.sys has no readable data';
  const attr: Attribute = data.attr;
  if (attr.dataSize < HIBERFILE_PAGE) return true;
  let head: Uint8Array | null;
  if (attr.value) head = attr.value;
  else head = data.runs ? await mft.read(data.runs, 0, 4, true) : null;
  if (!head) return 'hiberfil.sys is unreadable';
  return String.fromCharCode(...head.subarray(0, 4)).toLowerCase() === 'hibr';
}

async function judge(mft: Mft | null, geo: NtfsGeometry, region: Region): Promise<Verdict & { label: string | null }> {
  if (!mft) return { state: 'unknown', untrusted: 'the MFT is unreadable', label: null };
  const vol = await volumeInfo(mft);
  if (!vol) return { state: 'unknown', untrusted: '$Volume is unreadable', label: null };
  const label = vol.label === '' ? null : vol.label;
  const hib = await hibernated(mft);
  if (hib === true) return { state: 'hibernated', untrusted: 'Windows is hibernated on this volume (hiberfil.sys)', label };
  if (typeof hib === 'string') return { state: 'unknown', untrusted: hib, label };
  const log = await logFileClean(mft);
  if (log === null) return { state: 'unknown', untrusted: '$LogFile is unreadable', label };
  if (!log) return { state: 'needs-recovery', untrusted: '$LogFile holds changes not yet applied (unclean shutdown or Windows Fast Startup)', label };
  if (vol.dirty) return { state: 'dirty', untrusted: 'the volume is marked dirty (chkdsk needed)', label };
  if (geo.size > region.length) return { state: 'clean', untrusted: 'the filesystem is larger than its partition', label };
  return { state: 'clean', untrusted: null, label };
}

async function detect(dev: BlockDevice, region: Region): Promise<FilesystemInfo | null> {
  const geo = await readBoot(dev, region);
  if (!geo) return null;
  const mft = await Mft.open(dev, region, geo);
  const { state, untrusted, label } = await judge(mft, geo, region);
  return { type: 'ntfs', label, uuid: formatSerial(geo.serial), size: geo.size, state, untrusted };
}

async function* walkFree(mft: Mft): AsyncGenerator<FreeStep> {
  const geo = mft.geo;
  const rec = await mft.record(RECORD_BITMAP);
  const data = rec ? await mft.data(RECORD_BITMAP, rec) : null;
  if (!data?.runs) return;
  // Bits past the initialised size would read as zeros, which is not a proof of freedom.
  const bytes = Math.min(Math.ceil(geo.clusters / 8), data.attr.dataSize, data.attr.initializedSize);
  for (let at = 0; at < bytes; at += BITMAP_WINDOW) {
    const n = Math.min(BITMAP_WINDOW, bytes - at);
    const bits = await mft.read(data.runs, at, n, false);
    if (!bits) return;
    const free: Span[] = [];
    const first = at * 8;
    bitRuns(bits, 0, Math.min(n * 8, geo.clusters - first), 0, (a, b) => {
      free.push({ start: (first + a) * geo.clusterSize, end: (first + b) * geo.clusterSize });
    });
    yield { free, done: Math.min((at + n) * 8, geo.clusters) * geo.clusterSize };
  }
}

async function* usedRuns(dev: BlockDevice, region: Region, info: FilesystemInfo, opts: ProgressOptions = {}): AsyncGenerator<Run> {
  const geo = info.untrusted === null ? await readBoot(dev, region) : null;
  const mft = geo ? await Mft.open(dev, region, geo) : null;
  yield* usedFromFree(region, mft ? walkFree(mft) : noFreeSpace(), opts, 'NTFS used map');
}

export const ntfsDriver: FilesystemDriver = {
  types: ['ntfs'],
  detect,
  usedRuns,
};
