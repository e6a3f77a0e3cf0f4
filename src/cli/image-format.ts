/**
 * `-f FORMAT` and opening an image, shared by every command that names one: each goes through
 * the device layer's opener (src/device/open.ts), which probes the format, refuses what it must
 * (an empty file, a damaged VHDX) and warns when it takes a file as raw.
 */
import { statSync } from 'node:fs';
import { openDevice, type OpenDeviceOptions } from '../device/open-node.js';
import { urlReadOnly, type ImageFormat, type OpenedDevice } from '../device/open.js';
import type { HttpStats } from '../io/http.js';
import { UsageError, type Io } from './common.js';
import { isUrl } from '../device/parents.js';

export type { ImageFormat };

/** Names the formats go by: `vhd` is `vpc` (qemu's name for VHD). */
const ALIASES: Record<string, ImageFormat> = { raw: 'raw', vhdx: 'vhdx', vpc: 'vpc', vhd: 'vpc' };

/** The value of -f (or -O, -F), checked against the formats the command handles (`vhd` taken as `vpc`). */
export function formatOption(value: unknown, what: string, allowed: readonly ImageFormat[] = ['raw', 'vhdx']): ImageFormat | undefined {
  if (value === undefined) return undefined;
  const format = typeof value === 'string' ? ALIASES[value] : undefined;
  if (format === undefined || !allowed.includes(format)) {
    throw new UsageError(`${what} format ${String(value)} is not supported (${allowed.length === 1 ? `only ${allowed[0]}` : `${allowed.slice(0, -1).join(', ')} or ${allowed.at(-1)}`})`);
  }
  return format;
}

/** The formats a command reads: raw, VHDX and VHD. */
export const READ_FORMATS: readonly ImageFormat[] = ['raw', 'vhdx', 'vpc'];

/**
 * Open the image `name` (a path or an http(s) URL) for a command: as `format`, or probed when
 * none was named (the probe's warning printed as qemu prints it).
 */
export async function openImage(name: string, format: ImageFormat | undefined, opts: Omit<OpenDeviceOptions, 'format' | 'onWarning'>, io: Io): Promise<OpenedDevice> {
  return openDevice(name, { ...opts, format: format ?? 'auto', onWarning: (m) => io.err(`vhdx: warning: ${m}\n`) });
}

/** New counters for the requests of an image read over HTTP (see --verbose). */
export function newHttpStats(): HttpStats {
  return { requests: 0, bytesReceived: 0, retries: 0 };
}

/** Bytes the file takes on its file system (as `du`: allocated blocks × 512), or null where the platform does not say. */
export function diskUsage(path: string): number | null {
  const st = statSync(path, { throwIfNoEntry: false });
  return st && typeof st.blocks === 'number' ? st.blocks * 512 : null;
}

/** The --verbose line for an image read over HTTP: requests made and bytes transferred (stderr). */
export function reportHttp(stats: HttpStats | null, verbose: boolean, io: Io): void {
  if (stats === null || !verbose) return;
  io.err(`vhdx: http: ${stats.requests} requests, ${stats.bytesReceived} bytes received${stats.retries > 0 ? `, ${stats.retries} retried` : ''}\n`);
}

/** A file the command writes cannot be a URL: images over HTTP are read-only. */
export function refuseUrl(name: string): void {
  if (isUrl(name)) throw urlReadOnly(name);
}
