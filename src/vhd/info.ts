/** What `vhdx info` says of a VHD: its type, sizes and the size rule applied, geometry, creator, chain. */
import { VHD_EPOCH_UNIX_SECONDS, creatorText } from './footer.js';
import { footerChs, sizesByReader } from './geometry.js';
import type { VhdImage } from './image.js';

export interface VhdInfo {
  format: 'vpc';
  type: 'fixed' | 'dynamic' | 'differencing';
  virtualSize: number;
  fileSize: number;
  /** Bytes per block of a dynamic or differencing disk; null for a fixed one. */
  blockSize: number | null;
  /** Which size was taken (the footer's current size or its CHS geometry), why, and the other one. */
  sizeRule: { from: 'current-size' | 'chs'; why: string; otherSize: number | null };
  currentSize: number;
  originalSize: number;
  geometry: { cylinders: number; heads: number; sectorsPerTrack: number };
  creator: { application: string; version: string; hostOs: string };
  uniqueId: string;
  /** Creation time from the footer (ISO 8601). */
  created: string;
  savedState: boolean;
  /** Which footer copy is in use: the one at the end, or (an interrupted write) the copy at offset 0. */
  footerFrom: 'end' | 'head';
  /** A differencing disk's parent as its header names it. */
  parent: { name: string; uniqueId: string } | null;
  /** The opened parents, nearest first. */
  parents: { depth: number; name: string | null; type: string; uniqueId: string }[];
}

/** Describe an open VHD (from what open read: no I/O). */
export function describeVhd(img: VhdImage): VhdInfo {
  const { layout, footer: f } = img;
  const h = layout.dynamic?.header;
  const v = f.creatorVersion;
  return {
    format: 'vpc',
    type: img.type,
    virtualSize: img.size,
    fileSize: layout.fileSize,
    blockSize: img.blockSize,
    sizeRule: { from: layout.sizeInfo.from, why: layout.sizeInfo.why, otherSize: layout.sizeInfo.otherSize },
    currentSize: sizesByReader(f).currentSize,
    originalSize: sizesByReader(f).originalSize,
    geometry: footerChs(f),
    creator: { application: creatorText(f.creatorApplication), version: `${v >>> 16}.${v & 0xffff}`, hostOs: creatorText(f.creatorHostOs) },
    uniqueId: f.uniqueId,
    created: new Date((VHD_EPOCH_UNIX_SECONDS + f.timestamp) * 1000).toISOString(),
    savedState: f.savedState !== 0,
    footerFrom: layout.footerFrom,
    parent: img.type === 'differencing' && h ? { name: h.parentUnicodeName, uniqueId: h.parentUniqueId } : null,
    parents: img.chain.slice(1).map((p) => ({ depth: p.depth, name: p.name ?? null, type: p.type, uniqueId: p.uniqueId })),
  };
}
