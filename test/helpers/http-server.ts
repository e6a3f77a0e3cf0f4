// A local HTTP server with byte ranges for the HTTP source tests, on 127.0.0.1, listening on two
// ports (two origins, for CORS). Objects are served at /o/SWITCHES/NAME, where SWITCHES is `-` or
// a comma list of misbehaviours, each `name` or `name=value`:
//   no-ranges        answer every GET with 200 and the whole object
//   short416         answer 416 (bytes */SIZE) to a range that ends past the object, instead of clamping
//   change=N         after N GETs, the object changes (new bytes, ETag and Last-Modified)
//   ignore-if-match  do not evaluate If-Match / If-Unmodified-Since
//   weak-etag        a weak ETag (W/"..."); no-validators: neither ETag nor Last-Modified
//   hide-headers     send no Content-Range and no ETag (what a browser sees from a CORS answer that
//                    does not expose them)
//   no-expose        CORS answers list nothing in Access-Control-Expose-Headers
//   no-head          HEAD is refused with 403 (a presigned GET URL)
//   reset=N          the first N GETs send part of the body, then the connection is destroyed
//   stall=N          the first N GETs get no answer at all (until the client gives up)
//   stall-body=N     the first N GETs get their headers and part of the body, then nothing
//   status=S:N       the first N GETs are answered with status S (with Retry-After: 0)
//   retry-after=V    the Retry-After value sent with `status`
//   sig=V            the request must carry ?sig=V (a SAS token), else 403
//   auth=V           the request must carry Authorization: Bearer V, else 401
//   skip=K           reset, stall, stall-body and status spare the first K GETs (count from K+1)
//   redirect=PORT    answer 302 to the same path and query on 127.0.0.1:PORT
//   redirect-parent=PORT  the same, for every object but those named *child.vhdx
// Static files of the repository are served at /s/PATH (the built library, the tests' modules,
// the web page; a test module x.js that exists as x.ts only is served compiled, as the tests'
// own hooks load it: test/setup/ts-hooks.js); /blank is an empty page. GET /count/o/... gives
// the request counts of an object path as JSON (GET, HEAD, OPTIONS, ifMatch: requests carrying
// If-Match, maxInFlight: the most requests of the path answered at once).
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createHash } from 'node:crypto';
import { access, open, readFile, stat } from 'node:fs/promises';
import { transform } from 'esbuild';
import { extname, join, normalize } from 'node:path';
import { repoRoot } from './env.js';

const TYPES: Record<string, string> = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html', '.css': 'text/css', '.json': 'application/json', '.map': 'application/json' };

/** A path's misbehaviours: name -> true, or the value given with `=`. */
type Switches = Record<string, string | true | undefined>;

function parseSwitches(seg: string): Switches {
  const out: Switches = {};
  if (seg === '-' || seg === '') return out;
  for (const part of seg.split(',')) {
    const i = part.indexOf('=');
    out[i < 0 ? part : part.slice(0, i)] = i < 0 ? true : decodeURIComponent(part.slice(i + 1));
  }
  return out;
}

/** Bytes of a version of an object: version 0 as given, later ones with every byte flipped. */
function versionBytes(bytes: Uint8Array, version: number): Uint8Array {
  if (version === 0) return bytes;
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = bytes[i]! ^ version;
  return out;
}

/** What the server serves under a name: bytes in memory, or a file read-only from disk. */
export type ServedObject = { bytes: Uint8Array } | { path: string };

/** Request counts of an object path. */
export interface RequestCounts {
  GET: number;
  HEAD: number;
  OPTIONS: number;
  ifMatch: number;
  inFlight?: number;
  maxInFlight?: number;
  /** Requests of other methods. */
  [method: string]: number | undefined;
}

/** A static file's body: the file, or for a missing x.js an x.ts beside it, compiled to JavaScript. */
async function staticFile(file: string): Promise<Uint8Array | string> {
  const ts = file.replace(/\.js$/, '.ts');
  if (ts === file || (await access(file).then(() => true, () => false))) return readFile(file);
  const out = await transform(await readFile(ts, 'utf8'), { loader: 'ts', format: 'esm', target: 'es2022', sourcefile: ts });
  return out.code;
}

/** A running server (startRangeServer). */
export interface RangeServer {
  origin: string;
  origin2: string;
  ports: number[];
  objects: Map<string, ServedObject>;
  counts(path: string): RequestCounts;
  /** Connections accepted so far, both ports. */
  connections(): number;
  close(): Promise<void>;
}

/**
 * Start the server. `objects` maps a name (may contain /) to { bytes } or { path }: a file
 * served read-only from disk.
 */
export async function startRangeServer(): Promise<RangeServer> {
  const objects = new Map<string, ServedObject>();
  const counts = new Map<string, RequestCounts>();
  const sockets = new Set<Socket>();
  let accepted = 0;
  const count = (key: string, what: string): RequestCounts => {
    const c = counts.get(key) ?? { GET: 0, HEAD: 0, OPTIONS: 0, ifMatch: 0 };
    c[what] = (c[what] ?? 0) + 1;
    counts.set(key, c);
    return c;
  };

  async function objectBytes(name: string, version: number): Promise<{ size: number; read(a: number, b: number): Uint8Array | Promise<Uint8Array> } | null> {
    const o = objects.get(name);
    if (!o) return null;
    if ('bytes' in o) {
      const bytes = o.bytes;
      return { size: bytes.length, read: (a, b) => versionBytes(bytes.subarray(a, b), version) };
    }
    const path = o.path;
    const size = (await stat(path)).size;
    return {
      size,
      read: async (a, b) => {
        const fh = await open(path, 'r');
        try {
          const buf = new Uint8Array(b - a);
          const { bytesRead } = await fh.read(buf, 0, buf.length, a);
          return versionBytes(buf.subarray(0, bytesRead), version);
        } finally {
          await fh.close();
        }
      },
    };
  }

  async function handle(req: IncomingMessage, res: ServerResponse, ownPort: number | undefined): Promise<void> {
    const u = new URL(req.url ?? '/', `http://127.0.0.1:${ownPort}`);
    const origin = req.headers.origin;
    const cors = (sw: Switches): void => {
      if (!origin) return;
      res.setHeader('Access-Control-Allow-Origin', '*');
      if (!sw['no-expose']) res.setHeader('Access-Control-Expose-Headers', 'Content-Range, ETag, Retry-After, Accept-Ranges');
    };
    if (u.pathname.startsWith('/count/')) {
      res.setHeader('Access-Control-Allow-Origin', '*');
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify(counts.get(u.pathname.slice('/count'.length)) ?? { GET: 0, HEAD: 0, OPTIONS: 0, ifMatch: 0 }));
      return;
    }
    if (u.pathname === '/blank') {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      return void res.end('<!doctype html><title>blank</title>');
    }
    if (u.pathname.startsWith('/s/')) {
      const rel = normalize(decodeURIComponent(u.pathname.slice(3)));
      if (rel.startsWith('..')) return void res.writeHead(403).end();
      try {
        const body = await staticFile(join(repoRoot, rel));
        res.writeHead(200, { 'Content-Type': TYPES[extname(rel)] ?? 'application/octet-stream', 'Cache-Control': 'no-store' });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
      return;
    }
    const m = /^\/o\/([^/]*)\/(.+)$/.exec(u.pathname);
    if (!m) return void res.writeHead(404).end();
    const switches = m[1]!;
    const objectPath = m[2]!;
    const sw = parseSwitches(switches);
    const name = decodeURIComponent(objectPath);
    const key = u.pathname;
    if (req.method === 'OPTIONS') {
      count(key, 'OPTIONS');
      res.writeHead(204, {
        'Access-Control-Allow-Origin': '*',
        'Access-Control-Allow-Methods': 'GET, HEAD',
        'Access-Control-Allow-Headers': 'Range, If-Match, If-Unmodified-Since, Authorization',
        'Access-Control-Max-Age': '600',
      });
      return void res.end();
    }
    const c = count(key, req.method ?? 'GET');
    // Requests of this path being answered at once, and the most seen.
    c.inFlight = (c.inFlight ?? 0) + 1;
    c.maxInFlight = Math.max(c.maxInFlight ?? 0, c.inFlight);
    res.on('close', () => void (c.inFlight = (c.inFlight ?? 1) - 1));
    cors(sw);
    const redirect = sw.redirect ?? (name.endsWith('child.vhdx') ? undefined : sw['redirect-parent']);
    if (redirect) {
      const rest = switches.split(',').filter((p) => !p.startsWith('redirect')).join(',') || '-';
      res.writeHead(302, { Location: `http://127.0.0.1:${redirect}/o/${rest}/${objectPath}${u.search}` });
      return void res.end();
    }
    if (sw.sig !== undefined && u.searchParams.get('sig') !== sw.sig) return void res.writeHead(403).end();
    if (sw.auth !== undefined && req.headers.authorization !== `Bearer ${sw.auth}`) return void res.writeHead(401).end();
    if (req.method === 'HEAD' && sw['no-head']) return void res.writeHead(403).end();
    // The misbehaving GETs are counted from the (skip + 1)th.
    const gets = c.GET - Number(sw.skip ?? 0);
    if (req.method === 'GET' && sw.status) {
      const [status = 500, n = 0] = String(sw.status).split(':').map(Number);
      if (gets >= 1 && gets <= n) return void res.writeHead(status, { 'Retry-After': String(sw['retry-after'] ?? '0') }).end();
    }
    if (req.method === 'GET' && sw.stall && gets >= 1 && gets <= Number(sw.stall)) return; // never answered
    const version = sw.change !== undefined && c.GET > Number(sw.change) ? 1 : 0;
    const obj = await objectBytes(name, version);
    if (!obj) return void res.writeHead(404).end();
    const etagValue = `"${createHash('sha256').update(name).digest('hex').slice(0, 16)}-${version}"`;
    const lastModified = new Date(Date.UTC(2024, 0, 1, 0, 0, version)).toUTCString();
    const headers: OutgoingHttpHeaders = { 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
    if (!sw['no-validators']) {
      if (!sw['hide-headers']) headers.ETag = sw['weak-etag'] ? `W/${etagValue}` : etagValue;
      headers['Last-Modified'] = lastModified;
    }
    if (!sw['ignore-if-match'] && !sw['no-validators']) {
      const im = req.headers['if-match'];
      if (im !== undefined) count(key, 'ifMatch');
      if (im !== undefined && im !== etagValue) return void res.writeHead(412, headers).end();
      const ius = req.headers['if-unmodified-since'];
      if (ius !== undefined && Date.parse(ius) < Date.parse(lastModified)) return void res.writeHead(412, headers).end();
    }
    if (req.method === 'HEAD') {
      res.writeHead(200, { ...headers, 'Content-Length': String(obj.size) });
      return void res.end();
    }
    const range = req.headers.range;
    const rm = range !== undefined && !sw['no-ranges'] ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
    let status = 200;
    let a = 0;
    let b = obj.size;
    if (rm) {
      a = Number(rm[1]);
      const last = rm[2] === '' ? obj.size - 1 : Number(rm[2]);
      if (a >= obj.size || (sw.short416 && last >= obj.size)) {
        if (!sw['hide-headers']) headers['Content-Range'] = `bytes */${obj.size}`;
        return void res.writeHead(416, headers).end();
      }
      b = Math.min(obj.size, last + 1);
      status = 206;
      if (!sw['hide-headers']) headers['Content-Range'] = `bytes ${a}-${b - 1}/${obj.size}`;
    }
    const body = await obj.read(a, b);
    res.writeHead(status, { ...headers, 'Content-Length': String(body.length) });
    const cut = gets >= 1 && ((sw.reset && gets <= Number(sw.reset)) || (sw['stall-body'] && gets <= Number(sw['stall-body'])));
    if (cut && body.length > 1) {
      res.write(body.subarray(0, body.length >> 1));
      if (sw.reset) setTimeout(() => req.socket.destroy(), 10);
      return; // stall-body: the rest never comes
    }
    res.end(body);
  }

  const servers: Server[] = [];
  const ports: number[] = [];
  for (let i = 0; i < 2; i++) {
    const server = createServer((req, res) => {
      handle(req, res, ports[i]).catch((e) => {
        if (!res.headersSent) res.writeHead(500);
        res.end(String(e));
      });
    });
    server.on('connection', (s) => {
      sockets.add(s);
      accepted++;
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    ports.push((server.address() as AddressInfo).port); // listening on TCP: an AddressInfo
    servers.push(server);
  }
  return {
    origin: `http://127.0.0.1:${ports[0]}`,
    origin2: `http://127.0.0.1:${ports[1]}`,
    ports,
    objects,
    /** Request counts of an object path (/o/...). */
    counts: (path: string): RequestCounts => counts.get(path) ?? { GET: 0, HEAD: 0, OPTIONS: 0, ifMatch: 0 },
    connections: () => accepted,
    async close(): Promise<void> {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
    },
  };
}
