// `vhdx serve` as a command: its listening line, usage errors, TCP and Unix sockets, export
// names, -r, raw files, differencing chains, SIGTERM/SIGINT (answer what is in flight, flush,
// close the image cleanly, exit 0), and SIGKILL after a client's FLUSH (every flushed write is
// in the image when it is opened again: the log replays).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openFile } from '../../src/node.js';
import { needTool } from '../helpers/env.js';
import { exec, lockRecords, must, sha256File, shmScratch, vhdx } from '../helpers/tools.js';
import { NbdTestClient, CMD } from './client.js';
import { startServe, unixUri } from './serve.js';

const MiB = 1024 * 1024;
const dir = shmScratch('nbd-cli-');
let n = 0;

async function freshImage(size = '64M', opts = ['-o', 'block_size=1M']) {
  const path = join(dir, `img${n++}.vhdx`);
  const r = await vhdx(['create', '-q', ...opts, path, size]);
  assert.equal(r.code, 0, r.stderr);
  return path;
}

const sockFor = (name: string): string => join(dir, `${name}-${n++}.sock`);

function noise(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

async function clientFor(sock: string, name = ''): Promise<NbdTestClient> {
  const c = await NbdTestClient.connect({ path: sock });
  await c.negotiate({ name });
  return c;
}

async function readImage(path: string, offset: number, length: number): Promise<Buffer> {
  const img = await openFile(path);
  try {
    const b = new Uint8Array(length);
    await img.read(offset, b);
    return Buffer.from(b);
  } finally {
    await img.close();
  }
}

describe('vhdx serve: arguments', () => {
  it('usage errors are one line and exit 1', async () => {
    const img = await freshImage();
    const usage: [string[], RegExp][] = [
      [[], /expected one FILE/],
      [['--socket', 'x.sock', '--port', '1', img], /--socket cannot be combined/],
      [['--port', 'http', img], /invalid port/],
      [['--port', '70000', img], /invalid port/],
      [['-f', 'qcow2', img], /format qcow2 is not supported/],
      [['--parents', 'maybe', img], /--parents must be/],
      [['-e', '0', img], /invalid --shared '0'/],
      [['--idle-timeout=-1', img], /invalid --idle-timeout/],
      [['--io-timeout', '1e3', img], /invalid --io-timeout/],
      [['--handshake-limit', 'soon', img], /invalid --handshake-limit/],
      [['--bogus', img], /Unknown option/],
    ];
    for (const [args, re] of usage) {
      const r = await vhdx(['serve', ...args]);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, /^vhdx: /);
      assert.match(r.stderr, re);
    }
    const missing = await vhdx(['serve', '--socket', sockFor('m'), join(dir, 'nope.vhdx')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^vhdx: .*nope\.vhdx/);
  });

  it('a port in use is an error; nothing is left behind', async () => {
    const img = await freshImage();
    const a = await startServe(['--port', '0', img]);
    const port = /:(\d+)\//.exec(a.uri)![1]!;
    const img2 = await freshImage();
    const r = await vhdx(['serve', '--port', port, img2]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vhdx: .*EADDRINUSE[^\n]*\n$/, 'one line');
    assert.deepEqual(await lockRecords(img2), []);
    assert.equal((await a.stop()).code, 0);
  });

  it('TCP on a chosen address and a free port, with an export name', async () => {
    const img = await freshImage();
    const s = await startServe(['--bind', '127.0.0.1', '--port', '0', '--export-name', 'vm disk', img]);
    assert.match(s.stderr(), /^vhdx: serving .*img\d+\.vhdx \(64 MiB, read-write\) on nbd:\/\/127\.0\.0\.1:\d+\/vm%20disk\n$/);
    if (!needTool('nbdinfo')) {
      const j = JSON.parse(await must('nbdinfo', ['--json', '--list', s.uri.replace(/\/vm%20disk$/, '/')]));
      assert.deepEqual(
        j.exports.map((e: { 'export-name': string }) => e['export-name']),
        ['vm disk'],
      );
      assert.equal((await exec('nbdinfo', ['--size', s.uri])).stdout.trim(), String(64 * MiB));
    }
    assert.equal((await s.stop()).code, 0);
  });
});

describe('vhdx serve: limits', () => {
  it('-e 1: a client past the limit is told why (qemu shows the message) and the server says so; with --idle-timeout an idle client then makes room', { skip: needTool('qemu-img') }, async () => {
    const img = await freshImage();
    const sock = sockFor('full');
    const s = await startServe(['-e', '1', '--idle-timeout', '2', '--socket', sock, img]);
    const holder = await clientFor(sock);
    await holder.readBytes(0, 512);
    const refused = await exec('qemu-img', ['info', '-f', 'raw', s.uri]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /server reported: the server is full \(1 client connected\); try again later/);
    assert.match(s.stderr(), /vhdx: refused a client: the server is full/);
    await new Promise((r) => setTimeout(r, 2500)); // the holder is now idle past the timeout
    assert.equal((await exec('qemu-img', ['info', '-f', 'raw', s.uri])).code, 0);
    assert.ok(await holder.closedWithin(5000));
    assert.match(s.stderr(), /vhdx: disconnected a client idle for \d+ s to make room for a new one/);
    assert.equal((await s.stop()).code, 0);
  });
});

describe('vhdx serve: what it exports', () => {
  it('-r refuses writes with EPERM and leaves the file untouched', { skip: needTool('qemu-io') }, async () => {
    const img = await freshImage();
    const before = sha256File(img);
    const s = await startServe(['-r', '--socket', sockFor('ro'), img]);
    assert.match(s.stderr(), /read-only/);
    const r = await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', s.uri]);
    assert.match(r.stdout + r.stderr, /Operation not permitted|read-only|Permission denied/i);
    assert.equal((await s.stop()).code, 0);
    assert.equal(sha256File(img), before);
    assert.deepEqual(await lockRecords(img), []);
  });

  it('-f raw serves a raw file, read and write', { skip: needTool('qemu-img', 'qemu-io') }, async () => {
    const raw = join(dir, 'plain.raw');
    writeFileSync(raw, noise(8 * MiB, 5));
    const s = await startServe(['-f', 'raw', '--socket', sockFor('raw'), raw]);
    assert.equal((await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, s.uri])).code, 0);
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 1M 64k', '-c', 'write -z 2M 64k', s.uri]);
    assert.equal((await s.stop()).code, 0);
    const b = readFileSync(raw);
    assert.ok(b.subarray(MiB, MiB + 65536).every((x) => x === 0x3c));
    assert.ok(b.subarray(2 * MiB, 2 * MiB + 65536).every((x) => x === 0));
  });

  it('a differencing image is served with its parent chain', { skip: needTool('nbdinfo', 'qemu-io') }, async () => {
    const base = await freshImage('16M');
    assert.equal((await vhdx(['io', '-q', '-c', 'write -P 0x61 1M 1M', base])).code, 0);
    const child = join(dir, `child${n++}.vhdx`);
    const c = await vhdx(['create', '-q', '-b', base, child]);
    assert.equal(c.code, 0, c.stderr);
    const baseSum = sha256File(base);
    const s = await startServe(['--socket', sockFor('diff'), child]);
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x61 1M 1M', '-c', 'read -P 0 0 1M', '-c', 'write -P 0x62 1536k 4k', '-c', 'read -P 0x62 1536k 4k', s.uri]);
    const map = await must('nbdinfo', ['--map', s.uri]);
    assert.match(map, /^\s*1048576\s+1048576\s+0\s+data$/m);
    assert.match(map, /hole,zero/);
    assert.equal((await s.stop()).code, 0);
    assert.equal(sha256File(base), baseSum, 'the parent is not written');
  });
});

describe('vhdx serve: stopping', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal}: the requests in flight are answered, the image is closed clean, exit 0`, async () => {
      const img = await freshImage();
      const sock = sockFor('sig');
      const s = await startServe(['--socket', sock, img]);
      const c = await clientFor(sock);
      const jobs = [];
      for (let i = 0; i < 64; i++) jobs.push(c.request(CMD.WRITE, { offset: i * 262144, data: Buffer.alloc(65536, i + 1) }));
      const settled = Promise.allSettled(jobs);
      await jobs[0];
      const { code } = await s.stop(signal);
      assert.equal(code, 0, s.stderr());
      const rs = await settled;
      assert.ok(await c.closedWithin());
      assert.deepEqual(await lockRecords(img), []);
      const info = JSON.parse((await vhdx(['info', '--output=json', img])).stdout);
      assert.equal(info.log.state, 'clean');
      assert.equal((await vhdx(['check', img])).code, 0);
      // Every write that was answered is in the image.
      const done = rs.filter((r) => r.status === 'fulfilled' && r.value.error === 0).length;
      assert.ok(done >= 1);
      for (let i = 0; i < done; i++) {
        const b = await readImage(img, i * 262144, 65536);
        assert.ok(b.every((x) => x === i + 1), `write ${i}`);
      }
    });
  }

  it('SIGKILL after a FLUSH reply: every flushed write is there when the image is opened again', async () => {
    const img = await freshImage('256M');
    const sock = sockFor('kill');
    for (let round = 0; round < 3; round++) {
      const s = await startServe(['--socket', sock, img]);
      const c = await clientFor(sock);
      // Writes into new blocks (each allocation is a BAT change that goes through the log).
      const writes = [];
      for (let i = 0; i < 48; i++) {
        const at = ((i * 37 + round * 11) % 256) * MiB + ((i * 4096 * 7) % MiB);
        writes.push({ at, data: noise(65536, round * 1000 + i + 1) });
      }
      const rs = await Promise.all(writes.map((w) => c.request(CMD.WRITE, { offset: w.at, data: w.data })));
      assert.ok(rs.every((r) => r.error === 0));
      assert.equal((await c.request(CMD.FLUSH)).error, 0);
      // More writes, not flushed, some still in flight when the server dies.
      for (let i = 0; i < 32; i++) c.send(CMD.WRITE, { offset: (200 + i) * MiB, data: Buffer.alloc(65536, 0xee) });
      if (round > 0) await new Promise((r) => setTimeout(r, round * 5));
      const { signal } = await s.stop('SIGKILL');
      assert.equal(signal, 'SIGKILL');
      c.destroy();
      // Read-only open: the log is replayed in memory.
      const im = await openFile(img);
      try {
        for (const w of writes) {
          const b = new Uint8Array(w.data.length);
          await im.read(w.at, b);
          assert.ok(Buffer.from(b).equals(w.data), `round ${round}: flushed write at ${w.at} lost`);
        }
      } finally {
        await im.close();
      }
      const chk = await vhdx(['check', '--output=json', img]);
      assert.ok([0, 3].includes(chk.code), chk.stdout + chk.stderr);
      // The next writable open (the next round's server) takes over the dead server's lock.
    }
    // And a final writable open replays the log into the file.
    const s = await startServe(['--socket', sock, img]);
    assert.equal((await s.stop()).code, 0);
    assert.equal(JSON.parse((await vhdx(['info', '--output=json', img])).stdout).log.state, 'clean');
  });
});

describe('vhdx serve: unix socket file', () => {
  it('a stale socket file from a killed server is replaced; the socket file is removed on exit', async () => {
    const img = await freshImage();
    const sock = sockFor('stale');
    const a = await startServe(['--socket', sock, img]);
    await a.stop('SIGKILL');
    assert.ok(existsSync(sock));
    const b = await startServe(['--socket', sock, img]);
    assert.equal(b.uri, unixUri(sock));
    const c = await clientFor(sock);
    assert.equal((await c.request(CMD.FLUSH)).error, 0);
    await c.disconnect();
    assert.equal((await b.stop()).code, 0);
    assert.ok(!existsSync(sock));
  });
});
