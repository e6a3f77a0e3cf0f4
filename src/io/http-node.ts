/**
 * The HTTP source's transport on node:http and node:https (Node only): kept-alive connections,
 * and bodies handed over in the Buffers the socket reads, with no web streams between. Under
 * Node, fetch (undici) spent about 1.5-2 CPU seconds per GiB of body in its streams and the
 * garbage they leave; this one a fraction of that (README, Images over HTTP). Importing this
 * module makes it the default transport of HttpSource (the Node entry and the CLI do).
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { setDefaultTransport, type HttpAnswer, type HttpTransport } from './http.js';

/** Redirects followed before giving up, as fetch does. */
const MAX_REDIRECTS = 20;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Headers that must not follow a redirect to another origin (fetch drops Authorization too). */
const CREDENTIALS = ['authorization', 'cookie', 'proxy-authorization'];

/**
 * A transport on node:http(s) with its own kept-alive connection pools (one per transport, shared
 * by every source using it; idle connections do not keep the process alive).
 */
export function nodeHttpTransport(): HttpTransport {
  const agents = { 'http:': new HttpAgent({ keepAlive: true }), 'https:': new HttpsAgent({ keepAlive: true }) };
  const once = (url: URL, method: 'GET' | 'HEAD', headers: Record<string, string>, signal: AbortSignal): Promise<IncomingMessage> =>
    new Promise((resolve, reject) => {
      const https = url.protocol === 'https:';
      const req = (https ? httpsRequest : httpRequest)(url, { method, headers, signal, agent: https ? agents['https:'] : agents['http:'] });
      // An error after the answer's head reaches its body (the response is destroyed with the
      // socket); this listener only keeps it from being an uncaught 'error' event.
      req.on('error', reject);
      req.on('response', resolve);
      req.end();
    });

  return {
    async request(href, { method, headers, signal }) {
      let url = new URL(href);
      const sent: Record<string, string> = {};
      headers.forEach((v, k) => {
        sent[k] = v;
      });
      for (let redirects = 0; ; redirects++) {
        if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`redirected to a ${url.protocol} URL`);
        const res = await once(url, method, sent, signal);
        const location = res.headers.location;
        if (!REDIRECTS.has(res.statusCode ?? 0) || location === undefined) return answer(res, url.href);
        release(res);
        if (redirects >= MAX_REDIRECTS) throw new Error(`more than ${MAX_REDIRECTS} redirects`);
        const next = new URL(location, url);
        if (next.origin !== url.origin) for (const k of CREDENTIALS) delete sent[k];
        url = next;
      }
    },
  };
}

function answer(res: IncomingMessage, url: string): HttpAnswer {
  return {
    status: res.statusCode ?? 0,
    statusText: res.statusMessage ?? '',
    url,
    headers: {
      get(name) {
        const v = res.headers[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
      },
    },
    body(each) {
      return new Promise<void>((resolve, reject) => {
        const fail = (e: unknown): void => {
          res.destroy();
          reject(e);
        };
        res.on('data', (chunk: Buffer) => {
          try {
            each(chunk);
          } catch (e) {
            fail(e);
          }
        });
        res.once('end', () => resolve());
        res.once('error', fail);
        res.once('close', () => {
          if (!res.complete) fail(new Error('the connection closed before the answer ended'));
        });
      });
    },
    cancel() {
      release(res);
    },
  };
}

/**
 * Let go of an answer whose body is not wanted: one already all in is drained, so its connection
 * serves the next request; one still coming is cut off (a 200 to a range request may be the
 * whole object).
 */
function release(res: IncomingMessage): void {
  if (res.complete) res.resume();
  else res.destroy();
}

setDefaultTransport(nodeHttpTransport());
