// The NBD server's budgets and timeouts against clients that hold on: clients that never read
// their replies (memory stays within the server's stated bound, counting the replies queued on
// the sockets, and they are cut after the I/O timeout), a client reading slowly but steadily (not
// cut), requests left half sent (cut), idle clients (kept while there is room, let go for a new
// client once the server is full), and a full server (GO refused with a message, and reported).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { createFile, openFile, NbdServer, type NbdServerOptions } from '../../src/node.js';
import { ClientDropped, type ClientDropReason } from '../../src/nbd/handshake.js';
import type { VhdxImage } from '../../src/driver/image.js';
import { shmScratch } from '../helpers/tools.js';
import { NbdTestClient, OPT, REP, INFO, CMD, CF, infoData, type OptionReply } from './client.js';

const MiB = 1024 * 1024;
const dir = shmScratch('nbd-limits-');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let img: VhdxImage;
let n = 0;
/** Everything started, closed in `after` whatever happened (a failed test must not hang the file). */
const servers: NbdServer[] = [];
const clients: NbdTestClient[] = [];

before(async () => {
  const path = join(dir, 'disk.vhdx');
  await createFile(path, { size: 64 * MiB, blockSize: MiB });
  img = await openFile(path, { readOnly: false });
  await img.write(0, Buffer.alloc(MiB, 0x5a));
});

after(async () => {
  for (const c of clients) c.destroy();
  for (const s of servers) await s.close({ flush: false });
  await img.close();
});

/** A server on a fresh Unix socket; `drops` collects the ClientDropped reasons it reports. */
async function start(opts: NbdServerOptions) {
  const drops: ClientDropReason[] = [];
  const others: unknown[] = [];
  const server = new NbdServer({ device: img }, { ...opts, onError: (e: unknown) => (e instanceof ClientDropped ? drops.push(e.reason) : others.push(e)) });
  servers.push(server);
  const path = join(dir, `s${n++}.sock`);
  await server.listen({ path });
  const connect = () => track(NbdTestClient.connect({ path }));
  return { server, drops, others, connect };
}

async function track(connecting: Promise<NbdTestClient>): Promise<NbdTestClient> {
  const c = await connecting;
  clients.push(c);
  return c;
}

/** Waits until `f()` is true, checking every 10 ms. */
async function until(f: () => boolean): Promise<void> {
  while (!f()) await sleep(10);
}

/** Everything charged has been given back once every client is gone. */
async function allReturned(server: NbdServer): Promise<void> {
  await until(() => server.connections === 0);
  assert.equal(server.stats.bytesHeld, 0);
}

/** Greeting, structured replies, then GO: the final option reply. */
async function go(c: NbdTestClient): Promise<OptionReply> {
  await c.start();
  await c.structuredReplies();
  return (await c.option(OPT.GO, infoData('', [INFO.BLOCK_SIZE]))).at(-1)!;
}

/** READs of 32 MiB (one data chunk each) sent by a client that reads none of the replies. */
function flood(c: NbdTestClient, count: number): void {
  c.socket.pause();
  for (let i = 0; i < count; i++) c.send(CMD.READ, { offset: (i % 2) * 32 * MiB, length: 32 * MiB, flags: CF.DF });
}

describe('NBD budgets and timeouts', () => {
  it('sixteen clients that never read their 32 MiB READs hold no more than the server bound, replies queued on the sockets included', { timeout: 120_000 }, async () => {
    const CAP = 128 * MiB; // smaller than the default 512 MiB to keep the test light; same rule
    const server = new NbdServer({ device: img, readOnly: true }, { maxBytesInFlight: CAP, ioTimeoutMs: 0 });
    servers.push(server);
    // Our own listener, so that we can see how much each server-side socket holds unsent.
    const sockets = new Set<Socket>();
    const listener = createServer({ allowHalfOpen: true }, (s) => {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
      server.handle(s);
    });
    const path = join(dir, `s${n++}.sock`);
    await new Promise<void>((r) => listener.listen(path, r));
    const bound = server.stats.bytesBound;
    assert.equal(bound, CAP + 32 * MiB + 256);

    const hogs: NbdTestClient[] = [];
    for (let i = 0; i < 16; i++) {
      const c = await track(NbdTestClient.connect({ path }));
      await c.negotiate();
      flood(c, 8);
      hogs.push(c);
    }
    // Until nothing can move any more: the budget is spent and all it holds is replies on sockets.
    for (;;) {
      let queued = 0;
      for (const s of sockets) queued += s.writableLength;
      assert.ok(queued <= bound, `${queued} bytes of replies queued on the sockets, over the bound ${bound}`);
      const { bytesHeld } = server.stats;
      assert.ok(bytesHeld <= bound, `the server counts ${bytesHeld} bytes, over ${bound}`);
      if (bytesHeld >= CAP && bytesHeld === queued) break;
      await sleep(10);
    }
    assert.ok(server.stats.peakBytesHeld <= bound);
    for (const c of hogs) c.destroy();
    await allReturned(server);
    await server.close();
    await new Promise((r) => listener.close(r));
  });

  it('clients that stop reading their replies are cut after the I/O timeout; a client refused while they held every place gets in', async () => {
    const { server, drops, connect } = await start({ maxConnections: 2, ioTimeoutMs: 300, maxBytesInFlight: 64 * MiB });
    const hogs: NbdTestClient[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await connect();
      await c.negotiate();
      flood(c, 4);
      hogs.push(c);
    }
    const late = await connect();
    const refused = await go(late);
    assert.equal(refused.type, REP.ERR_POLICY);
    assert.match(refused.data.toString(), /the server is full \(2 clients connected\); try again later/);
    assert.ok(drops.includes('SERVER_FULL'));
    // The second waits for the budget the first holds (it is not at fault), then holds it in turn.
    await until(() => drops.filter((d) => d === 'UNREAD_REPLIES').length === 2);
    for (const c of hogs) {
      c.socket.resume(); // a paused socket would never see the close
      assert.ok(await c.closedWithin(10_000), 'a client that reads nothing is cut');
    }
    // The same connection asks again, and now there is room.
    assert.equal((await late.option(OPT.GO, infoData('', [INFO.BLOCK_SIZE]))).at(-1)!.type, REP.ACK);
    late.startReplyLoop();
    assert.ok((await late.readBytes(0, 4096)).bytes.equals(Buffer.alloc(4096, 0x5a)));
    await late.disconnect();
    await allReturned(server);
    await server.close();
  });

  it('a client that reads its replies slowly but steadily is not cut, even when one reply takes longer than the timeout', async () => {
    const { server, drops, connect } = await start({ ioTimeoutMs: 600 });
    const c = await connect();
    await c.negotiate();
    c.socket.pause();
    const reply = c.request(CMD.READ, { offset: 0, length: 16 * MiB, flags: CF.DF });
    // About 1 MiB every 100 ms: 16 MiB take well over the 600 ms timeout.
    let got = 0;
    let done = false;
    const onData = (d: Buffer) => {
      got += d.length;
      if (got >= MiB) c.socket.pause();
    };
    c.socket.on('data', onData);
    void reply.then(() => (done = true));
    while (!done) {
      await sleep(100);
      got = 0;
      c.socket.resume();
    }
    c.socket.off('data', onData);
    const r = await reply;
    assert.equal(r.error, 0);
    assert.equal(r.chunks[0]!.payload.length, 8 + 16 * MiB);
    assert.deepEqual(drops, []);
    await c.disconnect();
    await allReturned(server);
    await server.close();
  });

  it('a request left half sent, or a header cut short, is dropped after the I/O timeout; an idle client is not', async () => {
    const { server, drops, connect } = await start({ ioTimeoutMs: 300 });
    const idle = await connect();
    await idle.negotiate();
    const half = await connect();
    await half.negotiate();
    half.send(CMD.WRITE, { offset: 0, length: MiB });
    half.write(Buffer.alloc(100_000, 1));
    const cut = await connect();
    await cut.negotiate();
    cut.write(Buffer.alloc(10, 0x25));
    assert.ok(await half.closedWithin(10_000));
    assert.ok(await cut.closedWithin(10_000));
    assert.deepEqual(drops, ['STALLED_REQUEST', 'STALLED_REQUEST']);
    // Idle for over twice the timeout, and still served.
    await sleep(700);
    assert.ok((await idle.readBytes(0, 4096)).bytes.equals(Buffer.alloc(4096, 0x5a)));
    const check = new Uint8Array(4096);
    await img.read(0, check);
    assert.ok(Buffer.from(check).equals(Buffer.alloc(4096, 0x5a)), 'the half-sent write changed nothing');
    await idle.disconnect();
    await allReturned(server);
    await server.close();
  });

  it('idle clients keep their places while there is room; once the server is full, the one idle longest makes room for a new client', async () => {
    const { server, drops, connect } = await start({ maxConnections: 2, idleTimeoutMs: 300 });
    const first = await connect();
    await first.negotiate();
    await first.readBytes(0, 512);
    const second = await connect();
    await second.negotiate();
    await second.readBytes(0, 512);
    await sleep(600); // both idle past the idle timeout, and nobody asks: both stay
    assert.equal(server.stats.clients, 2);
    assert.deepEqual(drops, []);
    const third = await connect();
    await third.negotiate(); // the server is full: `first`, idle longest, goes
    assert.ok(await first.closedWithin(5000));
    assert.deepEqual(drops, ['IDLE']);
    assert.ok((await second.readBytes(0, 4096)).bytes.equals(Buffer.alloc(4096, 0x5a)));
    assert.ok((await third.readBytes(0, 4096)).bytes.equals(Buffer.alloc(4096, 0x5a)));
    await second.disconnect();
    await third.disconnect();
    await allReturned(server);
    await server.close();
  });
});
