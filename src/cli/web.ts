/**
 * `vhdx web [--bind ADDR] [--port N] [--open]`: serve the web page that `npm run build` makes
 * (dist/web) on 127.0.0.1 until SIGINT or SIGTERM. A static file server and nothing more: GET and
 * HEAD of the page's own files, no listing, no path outside the folder. The page itself reads
 * images in the browser (dropped files, or URLs fetched by the browser): nothing goes through
 * this server but the page.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VhdxError } from '../errors.js';
import { parse, UsageError, type Io } from './common.js';

export { WEB_USAGE } from './usage.js';
import { WEB_USAGE } from './usage.js';

/** The port `vhdx web` listens on unless told (0 asks for any free one). */
export const DEFAULT_WEB_PORT = 8080;

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * The built page's folder: dist/web beside the running code. The CLI bundle is dist/vhdx-cli.cjs
 * and this module unbundled is dist/cli/web.js, so it is looked for one folder up at most (the
 * nearest first, so the unbuilt sources in web/ are never served).
 */
export function webRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up < 2; up++, dir = dirname(dir)) {
    if (existsSync(join(dir, 'web', 'index.html')) && existsSync(join(dir, 'web', 'app.js'))) return join(dir, 'web');
  }
  throw new VhdxError('ENOENT', 'NO_DIRECTORY', 'the web page is not built (no dist/web/index.html beside the CLI): run npm run build');
}

export interface WebServer {
  /** The page's address, as http://HOST:PORT/. */
  url: string;
  server: Server;
  close(): Promise<void>;
}

/** Serve the files of `root` (index.html at /) on `host`:`port`. */
export async function startWebServer(root: string, host: string, port: number): Promise<WebServer> {
  const base = resolve(root);
  const server = createServer((req, res) => {
    answer(base, req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => {
      server.off('error', fail);
      ok();
    });
  });
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('the web server has no TCP address');
  const shownHost = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${shownHost}:${addr.port}/`,
    server,
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  };
}

async function answer(base: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const plain = (status: number, text: string, extra: Record<string, string> = {}): void => {
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff', ...extra });
    res.end(req.method === 'HEAD' ? undefined : `${text}\n`);
  };
  if (req.method !== 'GET' && req.method !== 'HEAD') return plain(405, 'only GET and HEAD', { Allow: 'GET, HEAD' });
  const file = filePath(base, req.url ?? '/');
  if (file === null) return plain(403, 'forbidden');
  let size: number;
  try {
    const st = await stat(file);
    if (!st.isFile()) return plain(404, 'not found');
    size = st.size;
  } catch {
    return plain(404, 'not found');
  }
  const headers = {
    'Content-Type': TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream',
    'Content-Length': String(size),
    'X-Content-Type-Options': 'nosniff',
    'Cache-Control': 'no-cache',
  };
  if (req.method === 'HEAD') {
    res.writeHead(200, headers);
    return void res.end();
  }
  const body = await readFile(file);
  res.writeHead(200, { ...headers, 'Content-Length': String(body.length) });
  res.end(body);
}

/**
 * The file a request path names under `base`, or null when it is not one of the folder's own
 * files: an undecodable path, a NUL, a `..` element (encoded or not) or a backslash is refused
 * rather than normalised, and the result must lie inside `base`.
 */
export function filePath(base: string, url: string): string | null {
  const pathname = url.split(/[?#]/, 1)[0]!;
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    return null;
  }
  if (!decoded.startsWith('/') || decoded.includes('\0') || decoded.includes('\\')) return null;
  const parts = decoded.split('/').slice(1);
  if (parts.some((p) => p === '..' || p === '.')) return null;
  const rel = decoded === '/' ? 'index.html' : parts.join('/');
  const full = resolve(base, rel);
  return full.startsWith(base + sep) ? full : null;
}

/** Open `url` in the desktop's browser; a failure is a warning, the server keeps running. */
function openBrowser(url: string, io: Io): void {
  const [cmd, args] =
    process.platform === 'darwin' ? ['open', [url]] : process.platform === 'win32' ? ['cmd', ['/c', 'start', '""', url]] : ['xdg-open', [url]];
  const warn = (why: string): void => io.err(`vhdx: warning: could not open a browser (${cmd}: ${why}); open ${url} yourself\n`);
  try {
    const child = spawn(cmd as string, args as string[], { stdio: 'ignore', detached: true });
    child.on('error', (e) => warn(e.message));
    child.unref();
  } catch (e) {
    warn((e as Error).message);
  }
}

export async function webCommand(args: string[], io: Io, signal: AbortSignal): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      bind: { type: 'string', short: 'b' },
      port: { type: 'string', short: 'p' },
      open: { type: 'boolean' },
    },
    WEB_USAGE,
  );
  if (positionals.length !== 0) throw new UsageError(`vhdx web takes no operands\nusage: ${WEB_USAGE}`);
  let port = DEFAULT_WEB_PORT;
  if (values.port !== undefined) {
    const text = String(values.port);
    port = /^[0-9]{1,5}$/.test(text) ? Number(text) : NaN;
    if (!(port >= 0 && port <= 65535)) throw new UsageError(`invalid port '${text}': expected 0 to 65535`);
  }
  const host = (values.bind as string | undefined) ?? '127.0.0.1';
  const web = await startWebServer(webRoot(), host, port);
  try {
    io.out(`vhdx: serving the web page on ${web.url} (Ctrl-C to stop)\n`);
    if (values.open === true) openBrowser(web.url, io);
    await new Promise<void>((ok) => {
      if (signal.aborted) ok();
      else signal.addEventListener('abort', () => ok(), { once: true });
    });
  } finally {
    await web.close();
  }
  return 0;
}
