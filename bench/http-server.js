// A range-serving HTTP server for the HTTP benchmarks (bench/http.js), run as its own process so
// that the clients measured (vhdx, curl) never share its event loop: `node bench/http-server.js
// DIR` serves the files of DIR at /NAME on 127.0.0.1, on a free port it prints as one line of
// JSON ({"port":N}). python3 -m http.server serves no ranges, and the tests' server
// (test/helpers/http-server.ts) holds each answer in memory, which a whole 64 GiB download cannot.
//
// Single ranges (206, Content-Range), 416 past the end, 200 for a GET without Range, HEAD, a
// strong ETag and Last-Modified with If-Match checked: what object storage answers. Bodies are
// streamed from the file. It counts what it answers: GET /_stats gives {"requests":N,"bytes":N}
// (requests other than /_stats, body bytes sent), and /_reset sets both to 0.
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) throw new Error('usage: node bench/http-server.js DIR');
let requests = 0;
let bytes = 0;

const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  if (path === '/_stats' || path === '/_reset') {
    if (path === '/_reset') requests = bytes = 0;
    res.writeHead(200, { 'Content-Type': 'application/json' });
    return void res.end(JSON.stringify({ requests, bytes }));
  }
  requests++;
  const name = path.slice(1);
  if (req.method !== 'GET' && req.method !== 'HEAD') return void res.writeHead(405).end();
  if (name === '' || name.includes('/') || name.startsWith('.')) return void res.writeHead(404).end();
  let st;
  try {
    st = statSync(join(dir, name));
  } catch {
    return void res.writeHead(404).end();
  }
  const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
  const headers = { 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream', ETag: etag, 'Last-Modified': st.mtime.toUTCString() };
  const ifMatch = req.headers['if-match'];
  if (ifMatch !== undefined && ifMatch !== etag) return void res.writeHead(412, headers).end();
  const m = req.headers.range === undefined ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range);
  let start = 0;
  let end = st.size - 1;
  let status = 200;
  if (m) {
    start = Number(m[1]);
    if (start >= st.size) return void res.writeHead(416, { ...headers, 'Content-Range': `bytes */${st.size}` }).end();
    if (m[2] !== '') end = Math.min(end, Number(m[2]));
    status = 206;
    headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
  }
  res.writeHead(status, { ...headers, 'Content-Length': String(end - start + 1) });
  if (req.method === 'HEAD' || end < start) return void res.end();
  const body = createReadStream(join(dir, name), { start, end, highWaterMark: 1 << 20 });
  body.on('data', (chunk) => (bytes += chunk.length));
  body.on('error', () => res.destroy());
  body.pipe(res);
});
server.keepAliveTimeout = 30_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
