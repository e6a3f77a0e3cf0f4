// The HTTP range source (HttpSource) against a server that answers anything: the input is the
// list of answers, given to HttpSource through its `fetch` option, one per request in order (the
// last one repeated). Its text form: answers separated by a line "---"; each is a status line
// (a number, or ERR for a network error), header lines "Name: value", an empty line, the body.
// Rules: only typed errors reach the caller, within a bounded time; the size is a byte count and
// a read returns at most what was asked.
import { HttpSource } from '../../dist/index.js';
import { RuleBroken } from '../rules.js';

const enc = new TextEncoder();
const dec = new TextDecoder('latin1');

/** The answers an input describes. */
export function parseAnswers(bytes) {
  const text = dec.decode(bytes);
  return text.split('\n---\n').slice(0, 32).map((part) => {
    const blank = part.indexOf('\n\n');
    const head = (blank < 0 ? part : part.slice(0, blank)).split('\n');
    const body = blank < 0 ? new Uint8Array(0) : enc.encode(part.slice(blank + 2));
    const statusText = head[0]?.trim() ?? '';
    const headers = [];
    for (const line of head.slice(1)) {
      const i = line.indexOf(':');
      if (i > 0) headers.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
    }
    return { error: statusText === 'ERR', status: Number.parseInt(statusText, 10), headers, body };
  });
}

/** A fetch that answers request k with answer k, as a real fetch would give it. */
function fakeFetch(answers) {
  let k = 0;
  return async (_url, init) => {
    const a = answers[Math.min(k++, answers.length - 1)];
    if (init?.signal?.aborted) throw new DOMException('aborted', 'AbortError');
    if (!a || a.error) throw new TypeError('fetch failed');
    // What a Response can carry: a status from 200 to 599, header values without control characters.
    const status = Number.isInteger(a.status) && a.status >= 200 && a.status <= 599 ? a.status : 200 + (Math.abs(a.status | 0) % 400);
    const headers = new Headers();
    for (const [n, v] of a.headers) {
      try {
        headers.append(n, v);
      } catch {
        // Not something a server can send through fetch.
      }
    }
    const nullBody = status === 204 || status === 205 || status === 304 || init?.method === 'HEAD';
    return new Response(nullBody ? null : a.body, { status, headers });
  };
}

const answer = (status, headers, body = '') => `${status}\n${headers.map(([n, v]) => `${n}: ${v}`).join('\n')}\n\n${body}`;

export default {
  stream: true,
  timeMs: 5000,
  maxBytes: 64 * 1024,
  setup: async () => ({}),
  async seeds() {
    const body = 'x'.repeat(4096);
    const good = (from, to, size) => answer(206, [['Content-Range', `bytes ${from}-${to}/${size}`], ['Content-Length', String(to - from + 1)], ['ETag', '"abc"']], 'y'.repeat(to - from + 1));
    const list = [
      [good(0, 4095, 8192), good(4096, 8191, 8192)].join('\n---\n'),
      [answer(200, [['Content-Length', '4096'], ['Last-Modified', 'Wed, 21 Oct 2015 07:28:00 GMT']], body)].join('\n---\n'),
      [answer(206, [['Content-Range', 'bytes 0-99/*']], 'z'.repeat(100)), answer(200, [['Content-Length', '100']], '')].join('\n---\n'),
      [answer(503, [['Retry-After', '0']]), 'ERR', good(0, 1023, 1024)].join('\n---\n'),
      [answer(416, [['Content-Range', 'bytes */512']]), good(0, 511, 512)].join('\n---\n'),
    ];
    return list.map((t, i) => ({ name: `answers ${i}`, bytes: enc.encode(t) }));
  },
  /** Replace a header value or a status with one of the troublesome forms. */
  mutate(b, rng) {
    const text = dec.decode(b);
    const forms = ['bytes 0-4095/8192', 'bytes 0-0/1', 'bytes 5-4/10', 'bytes 0-4095/*', 'bytes */8192', 'bytes 0-99999999999999999999/100', 'bytes -1-5/10', 'items 0-1/2', 'bytes 0-4095/4096, bytes 0-1/2', '', 'bytes 0-9007199254740993/9007199254740994'];
    const lengths = ['0', '1', '4095', '4097', '-1', '99999999999', 'abc', ''];
    const statuses = ['200', '206', '204', '301', '304', '400', '404', '408', '412', '416', '429', '500', '503', 'ERR', '0', '999'];
    let out;
    switch (rng.int(4)) {
      case 0: out = text.replace(/Content-Range: [^\n]*/, `Content-Range: ${rng.pick(forms)}`); break;
      case 1: out = text.replace(/Content-Length: [^\n]*/, `Content-Length: ${rng.pick(lengths)}`); break;
      case 2: out = text.replace(/^[^\n]*/, rng.pick(statuses)); break;
      default: out = text.replace(/\n\n/, `\n${rng.pick(['ETag: W/"w"', 'ETag: "other"', 'Retry-After: 99999', 'Retry-After: -5', 'Content-Encoding: gzip', 'Last-Modified: never'])}\n\n`);
    }
    return { bytes: enc.encode(out), what: 'header or status replaced' };
  },
  async run(bytes) {
    const src = await HttpSource.open('http://fuzz.invalid/disk.vhdx', { fetch: fakeFetch(parseAnswers(bytes)), retries: 2, retryDelay: 1, maxRetryDelay: 5, timeout: 500, blockSize: 4096, firstRequestBytes: 4096 });
    try {
      const size = src.size;
      if (!Number.isSafeInteger(size) || size < 0) throw new RuleBroken('http-bad-size', `size ${size}`);
      const reads = [[0, 100], [Math.max(0, size - 100), 100], [4000, 200], [0, 70000]];
      for (const [at, n] of reads) {
        const len = Math.min(n, Math.max(0, size - at));
        if (len === 0) continue;
        const buf = new Uint8Array(len);
        const got = await src.read(at, buf);
        if (!(got >= 0 && got <= len)) throw new RuleBroken('http-bad-read-count', `read of ${len} at ${at} returned ${got}`);
      }
    } finally {
      await src.close();
    }
    return `size ${src.size > 0 ? 'known' : 'zero'}`;
  },
};
