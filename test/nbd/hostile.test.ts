// Hostile and broken clients: garbage, bad magic, bad flags, oversized and too many options, a
// stalled handshake, out-of-range and oversized requests, a huge WRITE header followed by a
// disconnect, a flood of requests whose replies are never read, too many connections and too
// many handshakes. After each, the server is still up and a well-behaved client (already
// connected, or new) is served. (Budgets and timeouts: limits.test.ts.)
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createFile, openFile, NbdServer } from '../../src/node.js';
import { ClientDropped } from '../../src/nbd/handshake.js';
import type { VhdxImage } from '../../src/driver/image.js';
import { shmScratch } from '../helpers/tools.js';
import { NbdTestClient, OPT, REP, CMD, CF, ERR, IHAVEOPT, infoData, type Reply } from './client.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const dir = shmScratch('nbd-hostile-');
const sock = join(dir, 'h.sock');
let server: NbdServer;
let img: VhdxImage;
/** A client connected before the hostile ones, used after each of them. */
let bystander: NbdTestClient;
/** Clients the server refused or dropped, as it reported them. */
const reported: ClientDropped[] = [];

before(async () => {
  const path = join(dir, 'disk.vhdx');
  await createFile(path, { size: SIZE, blockSize: MiB });
  img = await openFile(path, { readOnly: false });
  await img.write(0, Buffer.alloc(MiB, 0x5a));
  server = new NbdServer({ device: img }, {
    handshakeTimeoutMs: 500,
    maxConnections: 16,
    maxOptions: 20,
    maxOptionLength: 8192,
    onError: (e: unknown) => e instanceof ClientDropped && reported.push(e),
  });
  await server.listen({ path: sock });
  bystander = await NbdTestClient.connect({ path: sock });
  await bystander.negotiate();
});

after(async () => {
  await bystander.disconnect();
  await server.close();
  await img.close();
});

const connect = () => NbdTestClient.connect({ path: sock });

/** The bystander and a new client can both still read and write. */
async function stillServing() {
  const r = await bystander.readBytes(0, 4096);
  assert.ok(r.bytes.equals(Buffer.alloc(4096, 0x5a)));
  const c = await connect();
  await c.negotiate();
  assert.equal((await c.request(CMD.WRITE, { offset: 8 * MiB, data: Buffer.alloc(4096, 1) })).error, 0);
  assert.ok((await c.readBytes(8 * MiB, 4096)).bytes.equals(Buffer.alloc(4096, 1)));
  await c.disconnect();
}

/** A client that has negotiated, with its reply loop running. */
async function inTransmission() {
  const c = await connect();
  await c.negotiate();
  return c;
}

describe('hostile clients', () => {
  it('garbage instead of client flags: the greeting, then a close', async () => {
    const c = await connect();
    c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.equal((await c.greeting()).magic, 0x4e42444d41474943n);
    assert.ok(await c.closedWithin());
    await stillServing();
  });

  it('random bytes at every stage', async () => {
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0);
    for (let i = 0; i < 20; i++) {
      const c = await connect();
      if (i % 2) await c.start();
      const junk = Buffer.alloc(1 + (rand() % 5000));
      for (let j = 0; j < junk.length; j++) junk[j] = rand() & 0xff;
      c.write(junk);
      c.socket.end();
      await c.closedWithin(3000);
      c.destroy();
    }
    await stillServing();
  });

  it('a bad option magic closes the connection', async () => {
    const c = await connect();
    await c.start();
    c.sendOption(OPT.LIST, Buffer.alloc(0), { magic: IHAVEOPT ^ 1n });
    assert.ok(await c.closedWithin());
    await stillServing();
  });

  it('an option longer than the limit closes the connection without reading it', async () => {
    const c = await connect();
    await c.start();
    c.sendOption(OPT.GO, Buffer.alloc(0), { length: 0xffffffff });
    assert.ok(await c.closedWithin());
    await stillServing();
  });

  it('too many options close the connection', async () => {
    const c = await connect();
    await c.start();
    let closed = false;
    for (let i = 0; i < 30 && !closed; i++) {
      c.sendOption(1000 + i);
      try {
        await c.optionReply();
      } catch {
        closed = true;
      }
    }
    assert.ok(closed);
    await stillServing();
  });

  it('a client that stalls in the handshake is dropped after the timeout', async () => {
    const c = await connect();
    await c.start();
    c.sendOption(OPT.INFO, Buffer.alloc(10), { length: 20 }); // 10 bytes short, forever
    assert.ok(await c.closedWithin(3000));
    await stillServing();
  });

  it('a flood of options sent without reading replies is not read beyond its limits', async () => {
    const c = await connect();
    await c.start();
    const one = Buffer.alloc(16 + 8000);
    one.writeBigUInt64BE(IHAVEOPT, 0);
    one.writeUInt32BE(OPT.LIST, 8);
    one.writeUInt32BE(8000, 12);
    c.write(Buffer.concat(Array.from({ length: 200 }, () => one)));
    assert.ok(await c.closedWithin(3000));
    await stillServing();
  });

  it('a bad request magic closes the connection; other requests in flight do not crash anything', async () => {
    const c = await inTransmission();
    const inflight = c.request(CMD.READ, { offset: 0, length: MiB });
    c.send(CMD.READ, { offset: 0, length: 512, magic: 0x12345678 });
    await inflight.catch(() => undefined);
    assert.ok(await c.closedWithin());
    await stillServing();
  });

  it('unknown commands and flags, out-of-range and oversized requests get errors and the connection goes on', async () => {
    const c = await inTransmission();
    const rs = await Promise.all([
      c.request(77, { offset: 0, length: 0 }),
      c.request(CMD.READ, { offset: 0, length: 4096, flags: 0x40 }),
      c.request(CMD.READ, { offset: 2n ** 64n - 4096n, length: 8192 }),
      c.request(CMD.READ, { offset: 0, length: 0xffffffff }),
      c.request(CMD.BLOCK_STATUS, { offset: 0, length: 0xffffffff }),
      c.request(CMD.BLOCK_STATUS, { offset: SIZE - 1, length: 0xffffffff, flags: CF.REQ_ONE }),
      c.request(CMD.WRITE_ZEROES, { offset: 2n ** 63n, length: 0xffffffff }),
      c.request(CMD.TRIM, { offset: 0, length: 0xffffffff }),
      c.request(CMD.CACHE, { offset: 1, length: 0xffffffff }),
      c.request(CMD.WRITE, { offset: SIZE, data: Buffer.alloc(1) }),
    ]);
    assert.deepEqual(
      rs.map((r) => r.error),
      [ERR.EINVAL, ERR.EINVAL, ERR.EINVAL, ERR.EINVAL, ERR.EINVAL, ERR.EINVAL, ERR.ENOSPC, ERR.EINVAL, ERR.EINVAL, ERR.ENOSPC],
    );
    // BLOCK_STATUS for the whole disk from offset 0 with the largest length works (no per-byte work).
    const whole = await c.blockStatus(0, SIZE);
    assert.equal(
      whole.extents!.reduce((a, e) => a + e.length, 0),
      SIZE,
    );
    assert.ok((await c.readBytes(0, 4096)).bytes.equals(Buffer.alloc(4096, 0x5a)));
    await c.disconnect();
    await stillServing();
  });

  it('a WRITE header announcing 4 GiB, then a disconnect', async () => {
    const c = await inTransmission();
    c.send(CMD.WRITE, { offset: 0, length: 0xffffffff });
    c.write(Buffer.alloc(MiB, 1));
    assert.ok(await c.closedWithin(), 'past the drain limit: disconnected');
    await stillServing();
  });

  it('an oversized WRITE (within the drain limit) whose sender disconnects halfway', async () => {
    const c = await inTransmission();
    c.send(CMD.WRITE, { offset: 0, length: 100 * MiB });
    c.write(Buffer.alloc(10 * MiB, 1));
    await new Promise((r) => setTimeout(r, 50));
    c.destroy();
    await stillServing();
    // A valid 32 MiB write whose sender leaves halfway: nothing is written, nothing leaks.
    const d = await inTransmission();
    d.send(CMD.WRITE, { offset: 16 * MiB, length: 32 * MiB });
    d.write(Buffer.alloc(16 * MiB, 9));
    await new Promise((r) => setTimeout(r, 50));
    d.destroy();
    await stillServing();
    assert.ok((await bystander.readBytes(16 * MiB, 4096)).bytes.equals(Buffer.alloc(4096)));
  });

  it('a client that sends thousands of requests and never reads the replies is paused, not buffered without bound', async () => {
    const c = await inTransmission();
    const N = 20000;
    const batch: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(CMD.READ, 6);
      h.writeBigUInt64BE(BigInt(i + 1), 8);
      h.writeBigUInt64BE(BigInt((i % 16) * 65536), 16);
      h.writeUInt32BE(65536, 24);
      batch.push(h);
    }
    // Pause our side so that the replies (1.3 GB) are not read while the server is flooded.
    c.socket.pause();
    for (let i = 0; i < N; i += 100) c.socket.write(Buffer.concat(batch.slice(i, i + 100)));
    // Without backpressure the server would read all of them within about half a second.
    await new Promise((r) => setTimeout(r, 1000));
    // The server stopped reading: most of the 560 KB of requests still wait on our side.
    assert.ok(c.socket.writableLength > 100_000, `unsent ${c.socket.writableLength}`);
    const rss = process.memoryUsage().rss;
    // Others are served meanwhile.
    await stillServing();
    assert.ok(rss < 300 * MiB, `rss ${rss}`);
    c.destroy();
    await stillServing();
  });

  it('the same flood, read slowly, gets every reply in full', async () => {
    const c = await inTransmission();
    const N = 3000;
    const jobs: Promise<Reply>[] = [];
    c.socket.pause();
    for (let i = 0; i < N; i++) jobs.push(c.request(CMD.READ, { offset: (i % 64) * 4096, length: 4096 }));
    await new Promise((r) => setTimeout(r, 100));
    c.socket.resume();
    const rs = await Promise.all(jobs);
    assert.ok(rs.every((r) => r.error === 0 && r.chunks.length === 1));
    await c.disconnect();
  });

  it('a client past the connection limit is refused with a message at GO, not dropped in silence; the ones inside it are served', async () => {
    // The bystander holds one place; fill the other 15.
    const inside: NbdTestClient[] = [];
    for (let i = 0; i < 15; i++) inside.push(await inTransmission());
    const late = await connect();
    await late.start();
    await late.structuredReplies();
    const refused = (await late.option(OPT.GO, infoData('', [])))[0]!;
    assert.equal(refused.type, REP.ERR_POLICY);
    assert.match(refused.data.toString(), /the server is full \(16 clients connected\)/);
    assert.ok(reported.some((e) => e.reason === 'SERVER_FULL'));
    for (const c of inside) assert.ok((await c.readBytes(0, 512)).bytes.equals(Buffer.alloc(512, 0x5a)));
    await Promise.all(inside.map((c) => c.disconnect()));
    // A place is free again: the same connection gets in.
    assert.equal((await late.option(OPT.GO, infoData('', []))).at(-1)!.type, REP.ACK);
    await late.disconnect();
    await stillServing();
  });

  it('connections past the handshake limit are closed at once and reported', async () => {
    const before = reported.filter((e) => e.reason === 'TOO_MANY_HANDSHAKES').length;
    const extra: NbdTestClient[] = [];
    for (let i = 0; i < 40; i++) extra.push(await connect());
    const closed = await Promise.all(extra.map((c) => c.closedWithin(300)));
    // 32 may wait in the handshake (until its 500 ms deadline); the rest are closed at once.
    assert.ok(closed.filter(Boolean).length >= 40 - 32, `${closed.filter(Boolean).length} closed`);
    assert.ok(reported.filter((e) => e.reason === 'TOO_MANY_HANDSHAKES').length - before >= 40 - 32);
    for (const c of extra) c.destroy();
    await new Promise((r) => setTimeout(r, 50));
    await stillServing();
  });

  it('a client that sends requests and disconnects without reading replies', async () => {
    for (let k = 0; k < 5; k++) {
      const c = await inTransmission();
      for (let i = 0; i < 100; i++) {
        c.send(i % 2 ? CMD.READ : CMD.WRITE, i % 2 ? { offset: i * 4096, length: 65536 } : { offset: 32 * MiB + i * 4096, data: Buffer.alloc(4096, i) });
      }
      c.destroy();
    }
    await new Promise((r) => setTimeout(r, 100));
    await stillServing();
  });

  it('the option exchange checks INFO lengths before trusting them', async () => {
    const c = await connect();
    await c.start();
    const bad = infoData('', [1, 2, 3]);
    bad.writeUInt16BE(0xffff, 4); // info count far past the data
    assert.equal((await c.option(OPT.GO, bad))[0]!.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.GO, infoData('', []))).at(-1)!.type, REP.ACK);
    c.startReplyLoop();
    assert.ok((await c.readBytes(0, 512)).bytes.equals(Buffer.alloc(512, 0x5a)));
    await c.disconnect();
  });
});
