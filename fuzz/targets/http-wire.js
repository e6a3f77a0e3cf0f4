// Node's HTTP/1.1 transport (src/io/http-node.ts) fed raw bytes by a loopback server: the input is
// what the server writes on its connections, answer after answer, one per request received (in
// the order they arrive; the last repeated once the input runs out), with control sequences (an
// 0xff byte and a letter) that cut the bytes into separate writes, end or reset the connection,
// and fill in what depends on the request:
//   ff '|'  write what came before, then wait a turn of the event loop (reads cut at odd places)
//   ff '/'  the same with a 2 ms gap
//   ff '>'  the answer ends: what follows answers the next request
//   ff 'E'  end the connection (FIN) after what came before;  ff 'X'  reset it (RST)
//   ff 'r'  the range asked for ("0-4095"), ff 'n' its length in decimal, ff 'h' in hex,
//   ff 'b'  that many bytes of body (so a range answer fits whatever range was asked for)
// The client: HttpSource.open (short timeouts, one retry, one request at a time) and a few reads
// (small ones through the cache, a large one read straight into the caller's buffer), then the
// transport alone: GET with body(), GET with bodyInto() into a buffer with guard bytes either side,
// and HEAD, on the same transport (its kept-alive connections reused).
// Rules: only VhdxError from HttpSource; the transport rejects with an Error (or VhdxError), never
// throws synchronously, leaves no unhandled rejection or exception; a read returns at most what
// was asked and nothing is written past the caller's buffer; bodyInto's progress adds up to its
// result; and once everything has settled no client socket is left open but idle pooled ones
// (a socket still holding the event loop is a connection nobody will close).
import { createServer } from 'node:net';
import { HttpSource, VhdxError, nodeHttpTransport } from '../../dist/node.js';
import { RuleBroken } from '../rules.js';

const TOTAL = 65536;
const ESC = 0xff;
const GUARD = 64;
const GUARD_BYTE = 0xa5;
/**
 * Ms a direct transport request may take (aborted after), and HttpSource's timeout: short, so an
 * answer that never ends costs little; not widened by ctx.timeScale (a timeout is an outcome,
 * never a broken rule, whenever it strikes).
 */
const DIRECT_MS = 25;

const latin1 = (s) => new Uint8Array(Buffer.from(s, 'latin1'));
const pattern = (n, from) => {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = ((from + i) * 7) & 255;
  return out;
};

/** The input cut into answers, each a list of steps: { bytes } | { gap: ms } | { end } | { reset } | { fill: letter }. */
export function parseScript(bytes) {
  const answers = [];
  let steps = [];
  let run = [];
  const flush = () => {
    if (run.length) steps.push({ bytes: Uint8Array.from(run) });
    run = [];
  };
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    const cmd = c === ESC && i + 1 < bytes.length ? String.fromCharCode(bytes[i + 1]) : '';
    if (!'|/>EXrnhb'.includes(cmd) || cmd === '') {
      run.push(c);
      continue;
    }
    i++;
    flush();
    if (cmd === '|') steps.push({ gap: 0 });
    else if (cmd === '/') steps.push({ gap: 2 });
    else if (cmd === 'E') steps.push({ end: true });
    else if (cmd === 'X') steps.push({ reset: true });
    else if (cmd === '>') {
      answers.push(steps);
      steps = [];
    } else steps.push({ fill: cmd });
    if (answers.length >= 64) return answers;
  }
  flush();
  answers.push(steps);
  return answers;
}

/** The range a request asks for ([from, to]), the whole object when none. */
function rangeOf(head) {
  const m = /\r\nrange: bytes=(\d+)-(\d*)\r\n/i.exec(head);
  if (!m) return [0, TOTAL - 1];
  const from = Number(m[1]);
  const to = m[2] === '' ? TOTAL - 1 : Number(m[2]);
  return [from, Math.max(from, Math.min(to, from + 1024 * 1024 - 1))];
}

/** Write one answer's steps on `sock` for the request whose head is `head`. */
async function answer(sock, steps, head) {
  const [from, to] = rangeOf(head);
  const n = to - from + 1;
  let pending = [];
  const write = () => {
    if (pending.length && !sock.destroyed) sock.write(Buffer.concat(pending));
    pending = [];
  };
  for (const s of steps) {
    if (s.bytes) pending.push(s.bytes);
    else if (s.fill === 'r') pending.push(Buffer.from(`${from}-${to}`));
    else if (s.fill === 'n') pending.push(Buffer.from(String(n)));
    else if (s.fill === 'h') pending.push(Buffer.from(n.toString(16)));
    else if (s.fill === 'b') pending.push(pattern(n, from));
    else if (s.gap !== undefined) {
      write();
      await new Promise((r) => (s.gap ? setTimeout(r, s.gap) : setImmediate(r)));
    } else if (s.end) {
      write();
      sock.end();
      return;
    } else if (s.reset) {
      write();
      sock.resetAndDestroy();
      return;
    }
  }
  write();
}

/** Serve a connection: read request heads one at a time, answer each with the next answer of the script. */
function serve(ctx, sock) {
  sock.unref();
  sock.setNoDelay(true);
  ctx.sockets.add(sock);
  sock.on('close', () => ctx.sockets.delete(sock));
  sock.on('error', () => {});
  let buf = '';
  let busy = false;
  const next = async () => {
    if (busy || sock.destroyed) return;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    busy = true;
    const head = buf.slice(0, end + 2);
    buf = buf.slice(end + 4);
    const answers = ctx.answers;
    const steps = answers[Math.min(ctx.k++, answers.length - 1)] ?? [];
    await answer(sock, steps, head);
    busy = false;
    void next();
  };
  sock.on('data', (d) => {
    buf += d.toString('latin1');
    void next();
  });
}

/** A buffer of `n` bytes with GUARD bytes either side: { all, into, intact() }. */
function guarded(n) {
  const all = new Uint8Array(n + 2 * GUARD).fill(GUARD_BYTE);
  const into = all.subarray(GUARD, GUARD + n);
  const intact = () => all.subarray(0, GUARD).every((b) => b === GUARD_BYTE) && all.subarray(GUARD + n).every((b) => b === GUARD_BYTE);
  return { into, intact };
}

/** A transport call: a synchronous throw breaks a rule; a rejection must be an Error. */
async function call(what, f) {
  let p;
  try {
    p = f();
  } catch (e) {
    throw new RuleBroken('wire-sync-throw', `${what} threw synchronously: ${e?.stack ?? e}`);
  }
  try {
    return { value: await p };
  } catch (e) {
    if (!(e instanceof Error)) throw new RuleBroken('wire-bad-rejection', `${what} rejected with ${typeof e} ${String(e)}`);
    return { error: e };
  }
}

const ok = (s) => `${s.ok}/${s.failed}`;

/** Wait for every client socket to be closed or idle (unref'd, in the pool): false when some stay. */
async function settled(ms) {
  const t0 = performance.now();
  for (;;) {
    const open = process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'TLSWrap').length;
    if (open === 0) return true;
    if (performance.now() - t0 > ms) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
}

export default {
  stream: true,
  timeMs: 4000,
  maxBytes: 160 * 1024,
  async setup() {
    const ctx = { answers: [[]], k: 0, sockets: new Set(), escaped: [] };
    ctx.server = createServer((s) => serve(ctx, s));
    await new Promise((r) => ctx.server.listen(0, '127.0.0.1', r));
    ctx.server.unref();
    ctx.origin = `http://127.0.0.1:${ctx.server.address().port}`;
    ctx.onRejection = (e) => ctx.escaped.push(`unhandled rejection: ${e?.stack ?? e}`);
    ctx.onException = (e) => ctx.escaped.push(`uncaught exception: ${e?.stack ?? e}`);
    process.on('unhandledRejection', ctx.onRejection);
    process.on('uncaughtException', ctx.onException);
    return ctx;
  },
  async teardown(ctx) {
    for (const s of ctx.sockets) s.destroy();
    await new Promise((r) => ctx.server.close(r));
    process.off('unhandledRejection', ctx.onRejection);
    process.off('uncaughtException', ctx.onException);
  },
  async seeds() {
    const E = '\xff';
    const range = `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${E}r/${TOTAL}\r\nContent-Length: ${E}n\r\nETag: "e1"\r\n\r\n${E}b`;
    const chunked = `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${E}r/${TOTAL}\r\nTransfer-Encoding: chunked\r\nETag: "e1"\r\n\r\n${E}h;name="v a";x\r\n${E}b\r\n0\r\nX-Trailer: 1\r\n\r\n`;
    const many = (a, k = 6) => Array(k).fill(a).join(`${E}>`);
    const list = {
      'range answers, Content-Length': many(range),
      'chunked with extensions and a trailer, cut': many(chunked.replace('\r\n\r\n', `\r\n${E}|\r\n`).replace(';name', `${E}/;name`)),
      '100 and 103 before the answer': many(`HTTP/1.1 100 Continue\r\n\r\n${E}|HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n${range}`),
      'HTTP/1.0 kept alive, then not': many(`${range.replace('HTTP/1.1', 'HTTP/1.0').replace('\r\n\r\n', '\r\nConnection: keep-alive\r\n\r\n')}${E}>${range.replace('HTTP/1.1', 'HTTP/1.0')}`, 3),
      'close-delimited': many(`HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${E}r/${TOTAL}\r\n\r\n${E}b${E}E`),
      'two answers in one write': `${range}${range}${E}>${many(range)}`,
      'redirect 302 to the same server': many(`HTTP/1.1 302 Found\r\nLocation: /moved?x=1\r\nContent-Length: 5\r\n\r\nmoved${E}>${range}`, 4),
      // Longer than the 5000 bytes bodyInto is given, its body cut in two writes: the second is read straight into the caller's buffer.
      'longer than asked, read into the buffer': many(`HTTP/1.1 206 Partial Content\r\nContent-Length: 6000\r\n\r\n${E}/${'x'.repeat(100)}${E}/${'y'.repeat(5900)}`, 2),
      'reset mid-body, then good': `${range.slice(0, -2)}0123${E}X${E}>${many(range)}`,
    };
    return Object.entries(list).map(([name, text]) => ({ name, bytes: latin1(text) }));
  },
  /** Insert a split, a connection end or a troublesome header, chunk line or answer somewhere. */
  mutate(b, rng) {
    const E = '\xff';
    const heads = [
      'Content-Length: 5, 5', 'Content-Length: 5, 6', 'Content-Length: 99999999999999999', 'Content-Length: 9007199254740993', 'Content-Length: -1',
      'Content-Length: +5', 'Content-Length: 0x10', 'Content-Length:', 'Content-Length: 1e3', `Content-Length: ${E}n\r\nContent-Length: 1`,
      'Transfer-Encoding: chunked', 'Transfer-Encoding: gzip, chunked', 'Transfer-Encoding: chunked, gzip', 'Transfer-Encoding: identity', 'Transfer-Encoding: Chunked',
      'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked', 'Transfer-Encoding:', 'Connection: close', 'Connection: keep-alive', 'Connection: Keep-Alive, Upgrade',
      'X-Folded: a\r\n  b\r\n\tc', ' folded first', 'Bad Header: x', 'NoColon', `X-Big: ${'a'.repeat(rng.pick([60000, 65400, 65480, 65520]))}`, 'Location: /again', 'Location: http://[::1', 'Location: ftp://x/',
    ];
    const chunks = ['ffffffffffff', 'fffffffffffff', '0x10', '1;ext="a;b"', '-1', ' 5', '10000000', '0', '00000000000000000001', 'g', `${'1'.repeat(5000)}`, `5;${'e'.repeat(5000)}`];
    const answers = [
      'HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 101 Switching Protocols\r\n\r\n', 'HTTP/1.1 204 No Content\r\n\r\n', 'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n',
      'HTTP/1.0 200 OK\r\n\r\nbody', 'HTTP/1.1 302 Found\r\nLocation: /next\r\n\r\n', 'HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */65536\r\nContent-Length: 0\r\n\r\n',
      'HTTP/1.1 503 Busy\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n', 'HTTP/2 200\r\n\r\n', 'HTTP/1.1 2000 OK\r\n\r\n', 'HTTP/1.1 200\r\n\r\n',
    ];
    const text = Buffer.from(b).toString('latin1');
    const heads0 = [...text.matchAll(/\r?\n/g)].map((m) => m.index);
    const anyAt = () => rng.int(text.length + 1);
    const lineAt = () => (heads0.length ? rng.pick(heads0) : anyAt());
    let at;
    let piece;
    let what;
    switch (rng.int(7)) {
      case 0: at = anyAt(); piece = rng.pick([`${E}|`, `${E}/`, `${E}|`]); what = 'split'; break;
      case 1: at = anyAt(); piece = rng.pick([`${E}E`, `${E}X`, `${E}>`]); what = 'end, reset or next answer'; break;
      case 2: at = lineAt(); piece = `\r\n${rng.pick(heads)}`; what = 'header'; break;
      case 3: at = lineAt(); piece = `\r\n${rng.pick(chunks)}\r\n`; what = 'chunk line'; break;
      case 4: at = rng.chance(0.5) ? 0 : anyAt(); piece = rng.pick(answers); what = 'answer'; break;
      case 5: {
        // Bare LF: one CRLF (or all of them) made LF.
        const out = rng.chance(0.2) ? text.replaceAll('\r\n', '\n') : text.replace(/\r\n/, '\n');
        return { bytes: latin1(out), what: 'bare LF' };
      }
      default: {
        // Drop a header line (the framing one, often).
        const out = text.replace(rng.pick([/\r\nContent-Length:[^\r\n]*/, /\r\nTransfer-Encoding:[^\r\n]*/, /\r\nContent-Range:[^\r\n]*/, /\r\n\r\n/]), '\r\n');
        return { bytes: latin1(out), what: 'line dropped' };
      }
    }
    return { bytes: latin1(text.slice(0, at) + piece + text.slice(at)), what: `${what} at ${at}` };
  },
  async run(bytes, ctx) {
    ctx.answers = parseScript(bytes);
    ctx.k = 0;
    const scale = ctx.timeScale ?? 1;
    const transport = nodeHttpTransport();
    const url = `${ctx.origin}/disk.vhdx`;
    const stats = { ok: 0, failed: 0 };
    let outcome = '';
    try {
      // HttpSource: only VhdxError may come out (execute() tells the rest apart).
      let src = null;
      try {
        src = await HttpSource.open(url, { transport, retries: 1, retryDelay: 1, maxRetryDelay: 5, timeout: DIRECT_MS, blockSize: 4096, firstRequestBytes: 4096, maxInFlight: 1, readAhead: 0 });
        const size = src.size;
        if (!Number.isSafeInteger(size) || size < 0) throw new RuleBroken('wire-bad-size', `size ${size}`);
        for (const [at, n] of [[0, 100], [Math.max(0, size - 100), 100], [4096, 20000], [100, 5000]]) {
          const len = Math.min(n, Math.max(0, size - at));
          if (len === 0) continue;
          const g = guarded(len);
          try {
            const got = await src.read(at, g.into);
            if (!(got >= 0 && got <= len)) throw new RuleBroken('wire-bad-read-count', `read of ${len} at ${at} returned ${got}`);
            stats.ok++;
          } catch (e) {
            if (!(e instanceof VhdxError)) throw e;
            stats.failed++;
          }
          if (!g.intact()) throw new RuleBroken('wire-wrote-past-buffer', `a read of ${len} at ${at} wrote outside its buffer`);
        }
        outcome = 'source opened';
      } catch (e) {
        if (!(e instanceof VhdxError)) throw e;
        outcome = `source ${e.reason}`;
      } finally {
        await src?.close();
      }

      // The transport alone, on the same (kept-alive) connections.
      for (const [method, mode] of [['GET', 'body'], ['GET', 'into'], ['HEAD', 'body'], ['GET', 'into']]) {
        const headers = new Headers({ range: mode === 'into' ? 'bytes=0-4999' : 'bytes=0-299' });
        const signal = AbortSignal.timeout(DIRECT_MS);
        const r = await call(`request ${method}`, () => transport.request(url, { method, headers, signal }));
        if (r.error) {
          stats.failed++;
          continue;
        }
        const a = r.value;
        if (mode === 'body') {
          let total = 0;
          const b = await call('body()', () => a.body((c) => {
            if (!(c instanceof Uint8Array)) throw new RuleBroken('wire-bad-chunk', `body() gave a ${typeof c}`);
            total += c.length;
          }));
          if (b.error instanceof RuleBroken) throw b.error;
          stats[b.error ? 'failed' : 'ok']++;
          continue;
        }
        const g = guarded(5000);
        let progress = 0;
        const b = await call('bodyInto()', () => a.bodyInto(g.into, (n) => (progress += n)));
        if (!g.intact()) throw new RuleBroken('wire-wrote-past-buffer', `bodyInto wrote outside its ${g.into.length}-byte buffer`);
        if (b.error) {
          stats.failed++;
          continue;
        }
        if (!(Number.isSafeInteger(b.value) && b.value >= 0 && b.value <= g.into.length)) throw new RuleBroken('wire-bad-read-count', `bodyInto into ${g.into.length} bytes resolved ${b.value}`);
        if (progress !== b.value) throw new RuleBroken('wire-bad-progress', `bodyInto resolved ${b.value} but reported ${progress} bytes of progress`);
        stats.ok++;
      }

      // Every client socket closed or parked idle (unref'd), once the server's last writes are in.
      if (!(await settled(300 * scale))) {
        throw new RuleBroken('wire-socket-left-open', `a client connection still holds the event loop after every request settled: ${process.getActiveResourcesInfo().join(', ')}`);
      }
      await new Promise((r) => setImmediate(r));
      if (ctx.escaped.length) throw new RuleBroken('wire-escaped', ctx.escaped.splice(0).join('\n'));
    } finally {
      // The server closes what is left (parked connections included): the next input starts afresh.
      for (const s of ctx.sockets) s.destroy();
    }
    return `${outcome}, direct ${ok(stats)}`.replace(/\d+/g, (d) => (d === '0' ? '0' : 'N'));
  },
};
