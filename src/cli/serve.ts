/**
 * `vhdx serve [-r] [-f raw|vhdx] [--bind ADDR] [--port N | --socket PATH] [--export-name NAME]
 * [--parents=relative|any|none] FILE`: export a disk (a differencing image with its chain) over
 * NBD until SIGINT or SIGTERM, then answer the requests in flight, flush, close the image and
 * exit 0. One line on stderr says where it listens (scripts wait for it).
 */
import { access, constants } from 'node:fs/promises';
import { openFile, type ParentPaths } from '../node-files.js';
import { NodeFileSource } from '../io/node-file.js';
import { readExact } from '../io/source.js';
import { probe } from '../driver/open.js';
import { RawDevice } from '../device/raw.js';
import type { BlockDevice } from '../device/block-device.js';
import { serveNbd, DEFAULT_PORT } from '../nbd/server.js';
import { ProtocolViolation } from '../nbd/handshake.js';
import { humanSize, parentPaths, parse, UsageError, type Io } from './common.js';

export { SERVE_USAGE } from './usage.js';
import { SERVE_USAGE } from './usage.js';

export async function serveCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      'read-only': { type: 'boolean', short: 'r' },
      format: { type: 'string', short: 'f' },
      bind: { type: 'string', short: 'b' },
      port: { type: 'string', short: 'p' },
      socket: { type: 'string', short: 'k' },
      'export-name': { type: 'string', short: 'x' },
      description: { type: 'string', short: 'D' },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
    },
    SERVE_USAGE,
  );
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${SERVE_USAGE}`);
  const path = positionals[0]!;
  const fmt = values.format as string | undefined;
  if (fmt !== undefined && fmt !== 'raw' && fmt !== 'vhdx') throw new UsageError(`format ${fmt} is not supported (raw or vhdx)`);
  const socketPath = values.socket as string | undefined;
  if (socketPath !== undefined && (values.port !== undefined || values.bind !== undefined)) {
    throw new UsageError('--socket cannot be combined with --port or --bind');
  }
  let port = DEFAULT_PORT;
  if (values.port !== undefined) {
    const text = String(values.port);
    port = /^[0-9]{1,5}$/.test(text) ? Number(text) : NaN;
    if (!(port >= 0 && port <= 65535)) throw new UsageError(`invalid port '${text}': expected 0 to 65535`);
  }
  const name = (values['export-name'] as string | undefined) ?? '';
  if (Buffer.byteLength(name) > 4096 || name.includes('\0')) throw new UsageError('the export name is longer than 4096 bytes');

  // -r, or a file we may not write: read-only export.
  const forceShare = values['force-share'] === true;
  if (forceShare && values['read-only'] !== true) throw new UsageError('-U (--force-share) needs -r: only a read-only export may skip the lock');
  const readOnly = values['read-only'] === true || !(await writable(path));
  const parents = parentPaths(values.parents);
  const device = await openDevice(path, fmt, readOnly, parents, forceShare);
  const debug = process.env.VHDX_DEBUG === '1';
  try {
    const server = await serveNbd(device, {
      ...(socketPath !== undefined ? { path: socketPath } : { port, host: (values.bind as string | undefined) ?? '127.0.0.1' }),
      name,
      ...(values.description !== undefined ? { description: String(values.description) } : {}),
      readOnly,
      onError: (e) => {
        // Hostile or broken clients are routine for a server; say so only when debugging.
        if (e instanceof ProtocolViolation && !debug) return;
        io.err(`vhdx: ${debug && e instanceof Error ? (e.stack ?? e.message) : e instanceof Error ? e.message : String(e)}\n`);
      },
    });
    io.err(`vhdx: serving ${path} (${humanSize(device.size)}, ${readOnly ? 'read-only' : 'read-write'}) on ${server.uri}\n`);
    await new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      else signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await server.close();
  } finally {
    await device.close();
  }
  return 0;
}

async function writable(path: string): Promise<boolean> {
  try {
    await access(path, constants.W_OK);
    return true;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return false;
    return true; // a missing file fails properly at open
  }
}

/** FILE as the format given, or as its first bytes show (the VHDX identifier, else raw). */
async function openDevice(path: string, fmt: string | undefined, readOnly: boolean, parents: ParentPaths, forceShare: boolean): Promise<BlockDevice> {
  let kind = fmt;
  if (kind === undefined) {
    const file = await NodeFileSource.open(path, { forceShare });
    try {
      const head = new Uint8Array(Math.min(8, file.size));
      await readExact(file, 0, head, 'file identifier');
      kind = probe(head) > 0 ? 'vhdx' : 'raw';
    } finally {
      await file.close();
    }
  }
  if (kind === 'vhdx') return openFile(path, { readOnly, parents, forceShare });
  const src = await NodeFileSource.open(path, { readOnly, forceShare });
  return new RawDevice(src);
}
