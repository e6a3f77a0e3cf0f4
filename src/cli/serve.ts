/**
 * `vhdx serve [-r] [-f raw|vhdx] [--bind ADDR] [--port N | --socket PATH] [--export-name NAME]
 * [-e N] [--handshake-limit S] [--idle-timeout S] [--io-timeout S] [--parents=relative|any|none]
 * FILE`: export a disk (a differencing image with its chain) over NBD until SIGINT or SIGTERM,
 * then answer the requests in flight, flush, close the image and exit 0. One line on stderr says
 * where it listens (scripts wait for it).
 *
 * The limit names follow qemu-nbd where it has one (`-e/--shared`, `--handshake-limit`); qemu-nbd
 * and nbdkit have no idle or I/O timeout, so those are named for what they time.
 */
import { access, constants } from 'node:fs/promises';
import { isUrl } from '../device/parents.js';
import { serveNbd, DEFAULT_PORT, type NbdLimits } from '../nbd/server.js';
import { ClientDropped, ProtocolViolation } from '../nbd/handshake.js';
import { humanSize, naming, parentPaths, parse, requireDirectory, UsageError, type Io } from './common.js';
import { formatOption, newHttpStats, openImage, READ_FORMATS, reportHttp } from './image-format.js';

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
      shared: { type: 'string', short: 'e' },
      'handshake-limit': { type: 'string' },
      'idle-timeout': { type: 'string' },
      'io-timeout': { type: 'string' },
      parents: { type: 'string' },
      'force-share': { type: 'boolean', short: 'U' },
      verbose: { type: 'boolean', short: 'v' },
    },
    SERVE_USAGE,
  );
  if (positionals.length !== 1) throw new UsageError(`expected one FILE\nusage: ${SERVE_USAGE}`);
  const path = positionals[0]!;
  const fmt = formatOption(values.format, 'image', READ_FORMATS);
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
  if (socketPath !== undefined) requireDirectory(socketPath, 'socket');
  const name = (values['export-name'] as string | undefined) ?? '';
  if (Buffer.byteLength(name) > 4096 || name.includes('\0')) throw new UsageError('the export name is longer than 4096 bytes');
  const limits: NbdLimits = {};
  if (values.shared !== undefined) {
    const text = String(values.shared);
    limits.maxConnections = /^[0-9]{1,4}$/.test(text) ? Number(text) : NaN;
    if (!(limits.maxConnections >= 1 && limits.maxConnections <= 1024)) throw new UsageError(`invalid --shared '${text}': expected 1 to 1024 clients`);
  }
  if (values['handshake-limit'] !== undefined) limits.handshakeTimeoutMs = seconds(values['handshake-limit'], '--handshake-limit');
  if (values['idle-timeout'] !== undefined) limits.idleTimeoutMs = seconds(values['idle-timeout'], '--idle-timeout');
  if (values['io-timeout'] !== undefined) limits.ioTimeoutMs = seconds(values['io-timeout'], '--io-timeout');

  // -r, or a file we may not write: read-only export.
  const forceShare = values['force-share'] === true;
  if (forceShare && values['read-only'] !== true) throw new UsageError('-U (--force-share) needs -r: only a read-only export may skip the lock');
  const readOnly = values['read-only'] === true || (!isUrl(path) && !(await writable(path)));
  const parents = parentPaths(values.parents);
  const stats = isUrl(path) ? newHttpStats() : null;
  const device = await naming(path, () => openImage(path, fmt, { readOnly, parents, forceShare, ...(stats ? { http: { stats } } : {}) }, io));
  const debug = process.env.VHDX_DEBUG === '1';
  // Clients refused or dropped by a limit: one line each, at most one a second (a flood of
  // connections must not become a flood of lines); the next line counts the ones held back.
  let lastDrop = -Infinity;
  let heldBack = 0;
  try {
    const server = await serveNbd(device, {
      ...(socketPath !== undefined ? { path: socketPath } : { port, host: (values.bind as string | undefined) ?? '127.0.0.1' }),
      name,
      ...(values.description !== undefined ? { description: String(values.description) } : {}),
      readOnly,
      ...limits,
      onError: (e) => {
        // Hostile or broken clients are routine for a server; say so only when debugging.
        if (e instanceof ProtocolViolation && !debug) return;
        if (e instanceof ClientDropped && !debug) {
          const now = performance.now();
          if (now - lastDrop < 1000) {
            heldBack++;
            return;
          }
          lastDrop = now;
          io.err(`vhdx: ${e.message}${heldBack > 0 ? ` (${heldBack} more such messages held back)` : ''}\n`);
          heldBack = 0;
          return;
        }
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
  reportHttp(stats, values.verbose === true, io);
  return 0;
}

/** A timeout in seconds (fractions allowed; 0: none) as whole ms. */
function seconds(value: unknown, flag: string): number {
  const text = String(value);
  const ms = /^[0-9]{1,7}(\.[0-9]{1,3})?$/.test(text) ? Math.round(Number(text) * 1000) : NaN;
  if (!(ms >= 0 && ms <= 0x7fffffff)) throw new UsageError(`invalid ${flag} '${text}': expected seconds from 0 (no limit) to 2147483`);
  return ms;
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
