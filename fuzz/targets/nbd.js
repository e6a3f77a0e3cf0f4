// The NBD server, fed byte streams as a client would send them (handshake, options,
// transmission requests) on a loopback Unix socket. Rules: the server never crashes (an error
// other than a dropped client or a protocol violation reaches its onError, or escapes), answers at most a bounded number
// of bytes, closes the connection within a bounded time after the client's stream ends, and a
// normal client connected beside it all along still reads the right bytes.
import { createConnection } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemorySource, VhdxImage, createImage, NbdServer, ClientDropped, ProtocolViolation } from '../../dist/node.js';
import { RuleBroken } from '../rules.js';
import { NbdTestClient, IHAVEOPT, OPT, CMD, CF, REQUEST_MAGIC, infoData, contextData } from '../../test/nbd/client.js';

const MiB = 1024 * 1024;
/**
 * The most a correct server answers to a client stream of `length` bytes: every 28 bytes may be
 * a READ of the whole 8 MiB export (more is refused), answered with its data and a reply header,
 * and every 16 bytes an option whose reply is at most a few KiB; past that, an answer is
 * unbounded. (The campaign once held answers to 9 MiB, the server's per-connection output budget;
 * but that budget bounds bytes queued, not bytes sent to a client that reads them: two 8 MiB
 * READs in a 288-byte stream broke that rule, kept in fuzz/crashes/nbd/.)
 */
function maxAnswer(length) {
  return Math.ceil(length / 28) * (8 * MiB + 64) + Math.ceil(length / 16) * 4096 + 4096;
}
const CLOSE_MS = 2000;

const u16 = (n) => Buffer.from([n >> 8, n & 0xff]);
const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; };
const option = (opt, data = Buffer.alloc(0)) => Buffer.concat([u64(IHAVEOPT), u32(opt), u32(data.length), data]);
let cookie = 1;
const request = (cmd, { flags = 0, offset = 0, length = 0, data = null } = {}) =>
  Buffer.concat([u32(REQUEST_MAGIC), u16(flags), u16(cmd), u64(cookie++), u64(offset), u32(data ? data.length : length), ...(data ? [data] : [])]);

/** The client's side of a good session: flags, options, GO, then requests. */
function session(export_, requests, opts = [OPT.STRUCTURED_REPLY, OPT.SET_META_CONTEXT]) {
  const parts = [u32(3)];
  for (const o of opts) {
    if (o === OPT.SET_META_CONTEXT) parts.push(option(o, contextData(export_, ['base:allocation'])));
    else parts.push(option(o));
  }
  parts.push(option(OPT.GO, infoData(export_, [3])));
  return Buffer.concat([...parts, ...requests, request(CMD.DISC)]);
}

async function makeDevice(size, fill) {
  const src = new MemorySource();
  await createImage(src, { size, blockSize: MiB });
  const img = await VhdxImage.open(src, { readOnly: false });
  await img.write(0, new Uint8Array(MiB).fill(fill));
  return img;
}

export default {
  stream: true,
  timeMs: 6000,
  maxBytes: 256 * 1024,
  async setup() {
    const dir = mkdtempSync(join(tmpdir(), 'fuzz-nbd-'));
    const fuzzDev = await makeDevice(8 * MiB, 0x11);
    const keepDev = await makeDevice(4 * MiB, 0x5a);
    const errors = [];
    const server = new NbdServer([{ device: fuzzDev, name: '' }, { device: keepDev, name: 'keep', readOnly: true }], {
      handshakeTimeoutMs: 1000,
      ioTimeoutMs: 1000,
      maxConnections: 4,
      onError: (e) => {
        // A dropped client and a client breaking the protocol are what the server reports by design.
        if (!(e instanceof ClientDropped) && !(e instanceof ProtocolViolation)) errors.push(e);
      },
    });
    const path = join(dir, 's.sock');
    await server.listen({ path });
    const bystander = await NbdTestClient.connect({ path });
    await bystander.negotiate({ name: 'keep' });
    return { dir, path, server, errors, bystander, fuzzDev, keepDev };
  },
  async teardown(ctx) {
    await ctx.bystander.disconnect().catch(() => {});
    await ctx.server.close();
    await ctx.fuzzDev.close();
    await ctx.keepDev.close();
    rmSync(ctx.dir, { recursive: true, force: true });
  },
  async seeds() {
    const w = Buffer.alloc(4096, 0x42);
    return [
      { name: 'reads and writes', bytes: session('', [request(CMD.READ, { offset: 0, length: 4096 }), request(CMD.WRITE, { offset: 4096, data: w }), request(CMD.FLUSH)]) },
      { name: 'block status, trim, zeroes', bytes: session('', [request(CMD.BLOCK_STATUS, { offset: 0, length: 8 * MiB }), request(CMD.TRIM, { offset: MiB, length: MiB }), request(CMD.WRITE_ZEROES, { flags: CF.FAST_ZERO, offset: 2 * MiB, length: 65536 }), request(CMD.CACHE, { offset: 0, length: 4096 })]) },
      { name: 'no structured replies', bytes: session('', [request(CMD.READ, { offset: 8 * MiB - 512, length: 512, flags: CF.DF })], []) },
      { name: 'list, info, export name', bytes: Buffer.concat([u32(1), option(OPT.LIST), option(OPT.INFO, infoData('keep', [0, 1, 2, 3])), option(OPT.LIST_META_CONTEXT, contextData('', ['base:'])), option(OPT.EXPORT_NAME, Buffer.from('')), request(CMD.READ, { length: 512 })]) },
      { name: 'abort', bytes: Buffer.concat([u32(3), option(OPT.STARTTLS), option(OPT.ABORT)]) },
    ].map((s) => ({ name: s.name, bytes: new Uint8Array(s.bytes) }));
  },
  /** Insert a well-formed request or option somewhere in the stream. */
  mutate(b, rng) {
    const pieces = [
      () => request(rng.int(10), { flags: rng.pick([0, 1, 2, 4, 8, 0x10, 0xffff]), offset: rng.pick([0, 4096, 8 * MiB - 1, 8 * MiB, 2 ** 53, 2 ** 63]), length: rng.pick([0, 1, 512, 4096, 32 * MiB, 0xffffffff]) }),
      () => option(rng.int(13), rng.chance(0.5) ? infoData(rng.pick(['', 'keep', 'x']), [rng.int(5)]) : Buffer.alloc(rng.int(64))),
      () => request(CMD.WRITE, { offset: rng.int(8 * MiB), data: Buffer.alloc(rng.pick([1, 512, 4096]), 0x33) }),
    ];
    const piece = rng.pick(pieces)();
    const at = rng.int(b.length + 1);
    const out = new Uint8Array(b.length + piece.length);
    out.set(b.subarray(0, at));
    out.set(piece, at);
    out.set(b.subarray(at), at + piece.length);
    return { bytes: out, what: `insert ${piece.length}-byte message at ${at}` };
  },
  async run(bytes, ctx) {
    const answer = await new Promise((resolve, reject) => {
      let got = 0;
      const s = createConnection(ctx.path);
      const closeMs = CLOSE_MS * (ctx.timeScale ?? 1);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new RuleBroken('nbd-no-close', `the connection is still open ${closeMs} ms after the client's stream ended (${got} bytes answered)`));
      }, closeMs);
      s.on('connect', () => s.end(bytes));
      s.on('data', (d) => {
        got += d.length;
        if (got > maxAnswer(bytes.length)) {
          clearTimeout(timer);
          s.destroy();
          reject(new RuleBroken('nbd-answer-unbounded', `more than ${maxAnswer(bytes.length)} bytes answered to a ${bytes.length}-byte stream`));
        }
      });
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(timer);
        resolve(got);
      });
    });
    if (ctx.errors.length) {
      const e = ctx.errors.splice(0);
      throw new RuleBroken('nbd-server-error', `the server reported ${e.map((x) => `${x?.name}: ${x?.message}`).join('; ')}`);
    }
    const r = await ctx.bystander.readBytes(4096, 4096).catch((e) => {
      throw new RuleBroken('nbd-bystander-broken', `the client beside could not read: ${e.message}`);
    });
    if (!Buffer.from(r.bytes).equals(Buffer.alloc(4096, 0x5a))) throw new RuleBroken('nbd-bystander-broken', 'the client beside read wrong bytes');
    return answer > 0 ? 'answered' : 'silent';
  },
};
