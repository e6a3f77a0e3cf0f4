// The NBD server byte by byte, through a hand-written client over a Unix socket: the fixed
// newstyle handshake and every option, structured replies (data and hole chunks, block status),
// simple replies, writes, flush, trim, write-zeroes, errors and their values, requests in flight
// out of order, two connections sharing one image, and shutdown with requests in flight.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createFile, openFile, NbdServer } from '../../src/node.js';
import type { VhdxImage } from '../../src/driver/image.js';
import { shmScratch } from '../helpers/tools.js';
import { NbdTestClient, OPT, REP, INFO, CMD, CF, TF, CHUNK, ERR, NBDMAGIC, IHAVEOPT, OPT_REPLY_MAGIC, infoData, contextData, parseInfos, type RequestOptions } from './client.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const dir = shmScratch('nbd-proto-');
const pattern = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

let server: NbdServer;
let img: VhdxImage;
let roImg: VhdxImage;
const sock = join(dir, 's.sock');
const errors: unknown[] = [];
const nameOf = (e: unknown) => (e instanceof Error ? e.name : undefined);

before(async () => {
  // Block 0 data, 1 unallocated, 2 a ZERO block, 3 data, the rest unallocated (1 MiB blocks).
  const path = join(dir, 'disk.vhdx');
  await createFile(path, { size: SIZE, blockSize: MiB });
  img = await openFile(path, { readOnly: false });
  await img.write(0, pattern(MiB, 1));
  await img.writeZeroes(2 * MiB, MiB);
  await img.write(3 * MiB, pattern(MiB, 3));
  await img.flush();
  const roPath = join(dir, 'ro.vhdx');
  await createFile(roPath, { size: 8 * MiB, blockSize: MiB });
  roImg = await openFile(roPath);
  server = new NbdServer(
    [
      { device: img, name: 'disk', description: 'the test disk' },
      { device: roImg, name: 'ro' },
    ],
    { onError: (e: unknown) => errors.push(e) },
  );
  await server.listen({ path: sock });
});

after(async () => {
  await server.close();
  await img.close();
  await roImg.close();
});

const connect = () => NbdTestClient.connect({ path: sock });

/** A client in transmission with the disk export (structured replies and base:allocation by default). */
async function ready(opts: Parameters<NbdTestClient['negotiate']>[0] = {}) {
  const c = await connect();
  const info = await c.negotiate({ name: 'disk', ...opts });
  return { c, info };
}

describe('handshake', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', async () => {
    const c = await connect();
    const g = await c.greeting();
    assert.equal(g.magic, NBDMAGIC);
    assert.equal(g.optMagic, IHAVEOPT);
    assert.equal(g.flags, 3);
    c.destroy();
  });

  it('closes on unknown client flags', async () => {
    const c = await connect();
    await c.start(0x4);
    assert.ok(await c.closedWithin());
  });

  it('LIST names every export with its description; data on LIST is ERR_INVALID', async () => {
    const c = await connect();
    await c.start();
    const rs = await c.option(OPT.LIST);
    assert.equal(rs.length, 3);
    for (const r of rs) {
      assert.equal(r.magic, OPT_REPLY_MAGIC);
      assert.equal(r.opt, OPT.LIST);
    }
    const servers = rs.filter((r) => r.type === REP.SERVER).map((r) => {
      const n = r.data.readUInt32BE(0);
      return [r.data.subarray(4, 4 + n).toString(), r.data.subarray(4 + n).toString()];
    });
    assert.deepEqual(servers, [
      ['disk', 'the test disk'],
      ['ro', ''],
    ]);
    assert.equal(rs[2]!.type, REP.ACK);
    const bad = (await c.option(OPT.LIST, Buffer.from('x')))[0]!;
    assert.equal(bad.type, REP.ERR_INVALID);
    // ABORT: ACK, then the server closes.
    const ack = (await c.option(OPT.ABORT))[0]!;
    assert.equal(ack.type, REP.ACK);
    assert.equal(ack.data.length, 0);
    assert.ok(await c.closedWithin());
  });

  it('INFO sends EXPORT always, NAME, DESCRIPTION and BLOCK_SIZE when asked; flags follow the export', async () => {
    const c = await connect();
    await c.start();
    let rs = await c.option(OPT.INFO, infoData('disk', [INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE, 999]));
    assert.equal(rs.at(-1)!.type, REP.ACK);
    let i = parseInfos(rs);
    assert.equal(i.exportLength, 12);
    assert.equal(i.size, SIZE);
    assert.equal(i.name, 'disk');
    assert.equal(i.description, 'the test disk');
    assert.deepEqual(i.blockSize, [1, 4096, 32 * MiB, 14]);
    const want = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO | TF.CAN_MULTI_CONN | TF.SEND_CACHE;
    assert.equal(i.flags, want, `flags 0x${i.flags?.toString(16)}`);
    // No infos asked: EXPORT only. The empty name reaches the first export.
    rs = await c.option(OPT.INFO, infoData('', []));
    assert.deepEqual(
      rs.map((r) => r.type),
      [REP.INFO, REP.ACK],
    );
    assert.equal(parseInfos(rs).size, SIZE);
    // The read-only export: READ_ONLY, no write-side flags.
    i = parseInfos(await c.option(OPT.INFO, infoData('ro', [])));
    assert.equal(i.flags, TF.HAS_FLAGS | TF.READ_ONLY | TF.SEND_FLUSH | TF.CAN_MULTI_CONN | TF.SEND_CACHE);
    // After STRUCTURED_REPLY, DF too.
    await c.structuredReplies();
    i = parseInfos(await c.option(OPT.INFO, infoData('disk', [])));
    assert.equal(i.flags, want | TF.SEND_DF);
    c.destroy();
  });

  it('INFO/GO errors: unknown export ERR_UNKNOWN, malformed data ERR_INVALID, and the handshake goes on', async () => {
    const c = await connect();
    await c.start();
    assert.equal((await c.option(OPT.INFO, infoData('nope', [])))[0]!.type, REP.ERR_UNKNOWN);
    assert.equal((await c.option(OPT.GO, infoData('nope', [])))[0]!.type, REP.ERR_UNKNOWN);
    const good = infoData('disk', [INFO.NAME]);
    assert.equal((await c.option(OPT.INFO, good.subarray(0, good.length - 1)))[0]!.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.INFO, Buffer.concat([good, Buffer.alloc(2)])))[0]!.type, REP.ERR_INVALID);
    const overrun = Buffer.from(good);
    overrun.writeUInt32BE(0xfffffff0, 0);
    assert.equal((await c.option(OPT.GO, overrun))[0]!.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.INFO, Buffer.alloc(3)))[0]!.type, REP.ERR_INVALID);
    const nul = infoData('di\0sk', []);
    assert.equal((await c.option(OPT.INFO, nul))[0]!.type, REP.ERR_INVALID);
    const rs = await c.option(OPT.GO, infoData('disk', []));
    assert.equal(rs.at(-1)!.type, REP.ACK);
    c.destroy();
  });

  it('unknown options, PEEK_EXPORT, STARTTLS and EXTENDED_HEADERS get ERR_UNSUP, their data skipped', async () => {
    const c = await connect();
    await c.start();
    for (const opt of [99, OPT.PEEK_EXPORT, OPT.STARTTLS, OPT.EXTENDED_HEADERS, 0x7fffffff]) {
      const r = (await c.option(opt, Buffer.alloc(100, 0x41)))[0]!;
      assert.equal(r.type, REP.ERR_UNSUP, `option ${opt}`);
      assert.equal(r.opt, opt);
    }
    assert.equal((await c.option(OPT.INFO, infoData('disk', []))).at(-1)!.type, REP.ACK);
    c.destroy();
  });

  it('STRUCTURED_REPLY: ACK once; again, or with data, ERR_INVALID', async () => {
    const c = await connect();
    await c.start();
    assert.equal((await c.option(OPT.STRUCTURED_REPLY, Buffer.from('x')))[0]!.type, REP.ERR_INVALID);
    const ack = (await c.option(OPT.STRUCTURED_REPLY))[0]!;
    assert.equal(ack.type, REP.ACK);
    assert.equal(ack.data.length, 0);
    assert.equal((await c.option(OPT.STRUCTURED_REPLY))[0]!.type, REP.ERR_INVALID);
    c.destroy();
  });

  it('LIST_META_CONTEXT lists base:allocation for no query and for "base:", nothing for other namespaces', async () => {
    const c = await connect();
    await c.start();
    for (const queries of [[], ['base:'], ['base:allocation']]) {
      const rs = await c.metaContext(OPT.LIST_META_CONTEXT, 'disk', queries);
      assert.deepEqual(
        rs.map((r) => r.type),
        [REP.META_CONTEXT, REP.ACK],
        JSON.stringify(queries),
      );
      assert.equal(rs[0]!.data.readUInt32BE(0), 0);
      assert.equal(rs[0]!.data.subarray(4).toString(), 'base:allocation');
    }
    const none = await c.metaContext(OPT.LIST_META_CONTEXT, 'disk', ['qemu:dirty-bitmap:x', 'qemu:']);
    assert.deepEqual(
      none.map((r) => r.type),
      [REP.ACK],
    );
    c.destroy();
  });

  it('SET_META_CONTEXT needs structured replies, selects only an exact base:allocation, rejects malformed data', async () => {
    const c = await connect();
    await c.start();
    assert.equal((await c.metaContext(OPT.SET_META_CONTEXT, 'disk', ['base:allocation']))[0]!.type, REP.ERR_INVALID);
    await c.structuredReplies();
    let rs = await c.metaContext(OPT.SET_META_CONTEXT, 'disk', ['foo:bar', 'base:allocation', 'base:']);
    assert.deepEqual(
      rs.map((r) => r.type),
      [REP.META_CONTEXT, REP.ACK],
    );
    assert.notEqual(rs[0]!.data.readUInt32BE(0), undefined);
    assert.equal(rs[0]!.data.subarray(4).toString(), 'base:allocation');
    rs = await c.metaContext(OPT.SET_META_CONTEXT, 'disk', ['base:']);
    assert.deepEqual(
      rs.map((r) => r.type),
      [REP.ACK],
    );
    assert.equal((await c.metaContext(OPT.SET_META_CONTEXT, 'nope', ['base:allocation']))[0]!.type, REP.ERR_UNKNOWN);
    const good = contextData('disk', ['base:allocation']);
    const overrun = Buffer.from(good);
    overrun.writeUInt32BE(1000, 4 + 4 + 4); // query length past the end
    assert.equal((await c.option(OPT.SET_META_CONTEXT, overrun))[0]!.type, REP.ERR_INVALID);
    const count = Buffer.from(good);
    count.writeUInt32BE(0xffffffff, 4 + 4); // a query count the data cannot hold
    assert.equal((await c.option(OPT.LIST_META_CONTEXT, count))[0]!.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.LIST_META_CONTEXT, Buffer.concat([good, Buffer.from('zz')])))[0]!.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.LIST_META_CONTEXT, contextData('disk', ['base:\0allocation'])))[0]!.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.LIST_META_CONTEXT, Buffer.alloc(4)))[0]!.type, REP.ERR_INVALID);
    c.destroy();
  });

  it('EXPORT_NAME: 134-byte reply without NO_ZEROES, 10 with; an unknown name closes', async () => {
    const replies: [number, number][] = [
      [1, 134],
      [3, 10],
    ];
    for (const [flags, len] of replies) {
      const c = await connect();
      await c.start(flags);
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('disk'));
      const r = await c.read(len);
      assert.equal(Number(r.readBigUInt64BE(0)), SIZE);
      assert.equal(r.readUInt16BE(8) & (TF.HAS_FLAGS | TF.SEND_FLUSH), TF.HAS_FLAGS | TF.SEND_FLUSH);
      if (len === 134) assert.ok(r.subarray(10).every((b) => b === 0));
      // Transmission works (simple replies: structured ones were never asked for).
      c.startReplyLoop();
      const { bytes } = await c.readBytes(0, 4096);
      assert.deepEqual(bytes, pattern(MiB, 1).subarray(0, 4096));
      await c.disconnect();
    }
    const c = await connect();
    await c.start();
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    assert.ok(await c.closedWithin());
  });

  it('a client without FIXED_NEWSTYLE may only send EXPORT_NAME', async () => {
    const c = await connect();
    await c.start(0);
    c.sendOption(OPT.LIST);
    assert.ok(await c.closedWithin());
  });

  it('a selection made for one export is void after GO to another', async () => {
    const c = await connect();
    await c.start();
    await c.structuredReplies();
    await c.metaContext(OPT.SET_META_CONTEXT, 'disk', ['base:allocation']);
    assert.equal((await c.option(OPT.GO, infoData('ro', []))).at(-1)!.type, REP.ACK);
    c.startReplyLoop();
    assert.equal((await c.blockStatus(0, MiB)).error, ERR.EINVAL);
    await c.disconnect();
  });
});

describe('transmission', () => {
  it('READ answers with data chunks for data and hole chunks for unallocated and zero blocks', async () => {
    const { c } = await ready();
    const { bytes, chunks } = await c.readBytes(MiB / 2, 3 * MiB);
    const want = Buffer.concat([pattern(MiB, 1).subarray(MiB / 2), Buffer.alloc(2 * MiB), pattern(MiB, 3).subarray(0, MiB / 2)]);
    assert.ok(bytes.equals(want));
    assert.deepEqual(
      chunks.map((x) => [x.type, x.flags]),
      [
        [CHUNK.OFFSET_DATA, 0],
        [CHUNK.OFFSET_HOLE, 0],
        [CHUNK.OFFSET_DATA, 1],
      ],
    );
    assert.equal(chunks[1]!.payload.readUInt32BE(8), 2 * MiB); // one hole: unallocated and ZERO merged
    // A read of a hole only: one hole chunk with DONE.
    const h = await c.readBytes(10 * MiB, 64 * 1024);
    assert.deepEqual(
      h.chunks.map((x) => [x.type, x.flags]),
      [[CHUNK.OFFSET_HOLE, 1]],
    );
    // DF: one data chunk, holes as zeros.
    const df = await c.readBytes(MiB / 2, 3 * MiB, CF.DF);
    assert.ok(df.bytes.equals(want));
    assert.deepEqual(
      df.chunks.map((x) => [x.type, x.flags]),
      [[CHUNK.OFFSET_DATA, 1]],
    );
    // Zero length: success, no content.
    const z = await c.request(CMD.READ, { offset: 0, length: 0 });
    assert.equal(z.error, 0);
    assert.deepEqual(
      z.chunks.map((x) => x.type),
      [CHUNK.NONE],
    );
    await c.disconnect();
  });

  it('simple replies when structured replies were not negotiated', async () => {
    const { c, info } = await ready({ structured: false });
    assert.equal(info.flags & TF.SEND_DF, 0);
    const { bytes } = await c.readBytes(MiB - 100, 200);
    assert.ok(bytes.equals(Buffer.concat([pattern(MiB, 1).subarray(MiB - 100), Buffer.alloc(100)])));
    const bad = await c.request(CMD.READ, { offset: SIZE, length: 1 });
    assert.equal(bad.error, ERR.EINVAL);
    assert.equal(bad.simple, true);
    assert.equal((await c.blockStatus(0, MiB)).error, ERR.EINVAL);
    await c.disconnect();
  });

  it('BLOCK_STATUS: data 0, unallocated and ZERO blocks HOLE|ZERO (no storage behind them, as qemu-nbd says); REQ_ONE gives one extent', async () => {
    const { c, info } = await ready();
    assert.ok(info.contextId !== null);
    const all = await c.blockStatus(0, SIZE);
    assert.equal(all.contextId, info.contextId);
    assert.equal(all.chunks, 1);
    assert.deepEqual(all.extents, [
      { length: MiB, flags: 0 },
      { length: 2 * MiB, flags: 3 }, // the unallocated block and the ZERO block
      { length: MiB, flags: 0 },
      { length: SIZE - 4 * MiB, flags: 3 },
    ]);
    const mid = await c.blockStatus(MiB / 2, MiB, 0);
    assert.deepEqual(mid.extents, [
      { length: MiB / 2, flags: 0 },
      { length: MiB / 2, flags: 3 },
    ]);
    const one = await c.blockStatus(MiB + 512, 10 * MiB, CF.REQ_ONE);
    assert.deepEqual(one.extents, [{ length: 2 * MiB - 512, flags: 3 }]);
    const clamp = await c.blockStatus(5 * MiB, 1000, CF.REQ_ONE);
    assert.deepEqual(clamp.extents, [{ length: 1000, flags: 3 }]);
    assert.equal((await c.blockStatus(SIZE - 512, 1024)).error, ERR.EINVAL);
    assert.equal((await c.blockStatus(0, 0)).error, ERR.EINVAL);
    assert.equal((await c.blockStatus(0, MiB, CF.DF)).error, ERR.EINVAL);
    await c.disconnect();
  });

  it('BLOCK_STATUS without a selected context is EINVAL', async () => {
    const { c } = await ready({ context: false });
    assert.equal((await c.blockStatus(0, MiB)).error, ERR.EINVAL);
    await c.disconnect();
  });

  it('WRITE (with and without FUA), FLUSH, TRIM and WRITE_ZEROES change what READ and BLOCK_STATUS see', async () => {
    const { c } = await ready();
    const at = 40 * MiB + 12345;
    const data = pattern(300000, 9);
    assert.equal((await c.request(CMD.WRITE, { offset: at, data })).error, 0);
    assert.equal((await c.request(CMD.WRITE, { offset: at + data.length, data: Buffer.alloc(512, 0x42), flags: CF.FUA })).error, 0);
    assert.equal((await c.request(CMD.FLUSH)).error, 0);
    assert.ok((await c.readBytes(at, data.length)).bytes.equals(data));
    assert.ok((await c.readBytes(at + data.length, 512)).bytes.equals(Buffer.alloc(512, 0x42)));
    assert.deepEqual((await c.blockStatus(40 * MiB, MiB, CF.REQ_ONE)).extents, [{ length: MiB, flags: 0 }]);
    // Write-zeroes over a whole block: a ZERO block, no storage behind it. FAST_ZERO on part of an allocated block: ENOTSUP.
    assert.equal((await c.request(CMD.WRITE_ZEROES, { offset: 40 * MiB, length: MiB, flags: CF.NO_HOLE })).error, 0);
    assert.deepEqual((await c.blockStatus(40 * MiB, MiB, CF.REQ_ONE)).extents, [{ length: MiB, flags: 3 }]);
    assert.ok((await c.readBytes(40 * MiB, MiB)).bytes.equals(Buffer.alloc(MiB)));
    assert.ok((await c.readBytes(41 * MiB, 512)).bytes.equals(Buffer.alloc(512))); // unaffected tail of the write
    const fz = await c.request(CMD.WRITE_ZEROES, { offset: 3 * MiB + 4096, length: 4096, flags: CF.FAST_ZERO });
    assert.equal(fz.error, ERR.ENOTSUP);
    assert.equal((await c.request(CMD.WRITE_ZEROES, { offset: 41 * MiB + 4096, length: 4096, flags: CF.FUA })).error, 0);
    // TRIM: reads as zeros after.
    assert.equal((await c.request(CMD.WRITE, { offset: 45 * MiB, data: Buffer.alloc(MiB, 7) })).error, 0);
    assert.equal((await c.request(CMD.TRIM, { offset: 45 * MiB, length: MiB })).error, 0);
    assert.ok((await c.readBytes(45 * MiB, MiB)).bytes.equals(Buffer.alloc(MiB)));
    assert.equal((await c.request(CMD.CACHE, { offset: 0, length: MiB })).error, 0);
    await c.disconnect();
  });

  it('error values: EINVAL for bad ranges, flags and commands, ENOSPC for writes past the end; the stream stays in step', async () => {
    const { c } = await ready();
    const cases: [number, RequestOptions, number][] = [
      [CMD.READ, { offset: SIZE - 10, length: 11 }, ERR.EINVAL],
      [CMD.READ, { offset: 2n ** 64n - 1n, length: 1 }, ERR.EINVAL],
      [CMD.READ, { offset: 2n ** 53n, length: 1 }, ERR.EINVAL],
      [CMD.READ, { offset: 0, length: 32 * MiB + 1 }, ERR.EINVAL],
      [CMD.READ, { offset: 0, length: 512, flags: CF.REQ_ONE }, ERR.EINVAL],
      [CMD.READ, { offset: 0, length: 512, flags: 0x8000 }, ERR.EINVAL],
      [CMD.WRITE, { offset: SIZE - 100, data: Buffer.alloc(200, 1) }, ERR.ENOSPC],
      [CMD.WRITE, { offset: 2n ** 63n, data: Buffer.alloc(10, 1) }, ERR.ENOSPC],
      [CMD.WRITE, { offset: 0, data: Buffer.alloc(100, 1), flags: CF.DF }, ERR.EINVAL],
      [CMD.WRITE_ZEROES, { offset: SIZE, length: 1 }, ERR.ENOSPC],
      [CMD.WRITE_ZEROES, { offset: 0, length: 1, flags: CF.REQ_ONE }, ERR.EINVAL],
      [CMD.TRIM, { offset: SIZE - 1, length: 2 }, ERR.EINVAL],
      [CMD.TRIM, { offset: 0, length: 1, flags: CF.NO_HOLE }, ERR.EINVAL],
      [CMD.CACHE, { offset: SIZE, length: 1 }, ERR.EINVAL],
      [CMD.FLUSH, { offset: 1 }, ERR.EINVAL],
      [CMD.FLUSH, { length: 1 }, ERR.EINVAL],
      [42, { offset: 0, length: 0 }, ERR.EINVAL],
      [0xffff, { offset: 0, length: 4096 }, ERR.EINVAL],
    ];
    for (const [type, opts, errno] of cases) {
      const r = await c.request(type, opts);
      assert.equal(r.error, errno, `${type} ${JSON.stringify(opts, (k, v) => (typeof v === 'bigint' ? String(v) : k === 'data' ? v.length : v))}`);
      if (type === CMD.READ) assert.equal(r.simple, undefined, 'READ errors are structured');
    }
    // The error names the request as the client sent it.
    assert.equal((await c.request(CMD.READ, { offset: SIZE - 10, length: 11 })).message, `read of 11 bytes at offset ${SIZE - 10} is outside the ${SIZE}-byte export`);
    // Untouched by the refused writes, and still in step.
    assert.ok((await c.readBytes(0, 4096)).bytes.equals(pattern(MiB, 1).subarray(0, 4096)));
    assert.ok((await c.readBytes(SIZE - 200, 200)).bytes.equals(Buffer.alloc(200)));
    await c.disconnect();
  });

  it('a WRITE over the maximum block size is drained, then refused with EINVAL', async () => {
    const { c } = await ready();
    const big = Buffer.alloc(32 * MiB + 4096, 0x77);
    const r = await c.request(CMD.WRITE, { offset: 0, data: big });
    assert.equal(r.error, ERR.EINVAL);
    assert.ok((await c.readBytes(0, 4096)).bytes.equals(pattern(MiB, 1).subarray(0, 4096)));
    // 32 MiB exactly is fine (READ too).
    const max = Buffer.alloc(32 * MiB, 0x66);
    assert.equal((await c.request(CMD.WRITE, { offset: 16 * MiB, data: max })).error, 0);
    assert.ok((await c.readBytes(16 * MiB, 32 * MiB)).bytes.equals(max));
    assert.equal((await c.request(CMD.WRITE_ZEROES, { offset: 16 * MiB, length: 32 * MiB })).error, 0);
    await c.disconnect();
  });

  it('a read-only export refuses WRITE (payload drained), TRIM and WRITE_ZEROES with EPERM', async () => {
    const c = await connect();
    await c.negotiate({ name: 'ro' });
    const refusals: [number, RequestOptions][] = [
      [CMD.WRITE, { offset: 0, data: Buffer.alloc(65536, 1) }],
      [CMD.WRITE, { offset: 0, data: Buffer.alloc(10, 1), flags: CF.FUA }],
      [CMD.TRIM, { offset: 0, length: 4096 }],
      [CMD.WRITE_ZEROES, { offset: 0, length: 4096 }],
    ];
    for (const [type, opts] of refusals) {
      assert.equal((await c.request(type, opts)).error, ERR.EPERM);
    }
    assert.equal((await c.request(CMD.FLUSH)).error, 0);
    assert.ok((await c.readBytes(0, 65536)).bytes.equals(Buffer.alloc(65536)));
    await c.disconnect();
  });

  it('many requests in flight are all answered, matched by cookie, whatever the order', async () => {
    const { c } = await ready();
    const base = 48 * MiB;
    const jobs = [];
    for (let i = 0; i < 300; i++) {
      const off = base + (i % 100) * 8192;
      if (i < 100) jobs.push(c.request(CMD.WRITE, { offset: off, data: Buffer.alloc(8192, i + 1) }));
      else if (i % 3 === 0) jobs.push(c.request(CMD.BLOCK_STATUS, { offset: base, length: MiB, flags: CF.REQ_ONE }));
      else jobs.push(c.request(CMD.READ, { offset: off, length: 8192 }));
    }
    const rs = await Promise.all(jobs);
    assert.ok(rs.every((r) => r.error === 0));
    for (let i = 0; i < 100; i += 17) {
      assert.ok((await c.readBytes(base + i * 8192, 8192)).bytes.equals(Buffer.alloc(8192, i + 1)));
    }
    await c.disconnect();
  });

  it('two connections share the image: a write flushed on one is read on the other', async () => {
    const a = await ready();
    const b = await ready();
    assert.ok(a.info.flags & TF.CAN_MULTI_CONN);
    const data = pattern(70000, 42);
    assert.equal((await a.c.request(CMD.WRITE, { offset: 30 * MiB, data })).error, 0);
    assert.equal((await a.c.request(CMD.FLUSH)).error, 0);
    assert.ok((await b.c.readBytes(30 * MiB, data.length)).bytes.equals(data));
    await Promise.all([a.c.disconnect(), b.c.disconnect()]);
  });

  it('DISC: the requests in flight are answered, then the server closes', async () => {
    const { c } = await ready();
    const pending = [c.request(CMD.READ, { offset: 0, length: MiB }), c.request(CMD.WRITE, { offset: 20 * MiB, data: Buffer.alloc(MiB, 3) })];
    c.send(CMD.DISC);
    c.socket.end();
    const rs = await Promise.all(pending);
    assert.ok(rs.every((r) => r.error === 0));
    assert.ok(await c.closedWithin());
  });

  it('no device errors were reported by the tests above', () => {
    assert.deepEqual(
      errors.filter((e) => nameOf(e) !== 'ProtocolViolation'),
      [],
    );
  });
});

describe('concurrency', () => {
  it('four connections, random writes, zeroes, trims and reads in flight together, match a model', async () => {
    const path = join(dir, 'model.vhdx');
    const R = 8 * MiB;
    await createFile(path, { size: 4 * R, blockSize: MiB });
    const dev = await openFile(path, { readOnly: false });
    const srv = new NbdServer({ device: dev });
    const p = join(dir, 'model.sock');
    await srv.listen({ path: p });
    let seed = 2024;
    const rand = (n: number) => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const clients: NbdTestClient[] = [];
    const run = Promise.all(
      [0, 1, 2, 3].map(async (k) => {
        const c = await NbdTestClient.connect({ path: p });
        clients.push(c);
        await c.negotiate();
        const base = k * R;
        const model = Buffer.alloc(R);
        for (let batch = 0; batch < 12; batch++) {
          // Up to 16 requests on disjoint ranges of this connection's region, all in flight.
          const slots = Array.from({ length: 16 }, (_, i) => i).filter(() => rand(3) > 0);
          const ops = slots.map((slot) => {
            const slotSize = R / 16;
            const off = slot * slotSize + rand(slotSize / 2);
            const len = 1 + rand(slotSize / 2 - 1);
            const kind = rand(10);
            if (kind < 5) {
              const data = Buffer.alloc(len, 1 + rand(255));
              data[0] = batch;
              data.copy(model, off);
              return c.request(CMD.WRITE, { offset: base + off, data, flags: kind === 0 ? CF.FUA : 0 });
            }
            if (kind < 7) {
              model.fill(0, off, off + len);
              return c.request(CMD.WRITE_ZEROES, { offset: base + off, length: len, flags: kind === 5 ? CF.NO_HOLE : 0 });
            }
            if (kind < 8) {
              model.fill(0, off, off + len);
              return c.request(CMD.TRIM, { offset: base + off, length: len });
            }
            const want = Buffer.from(model.subarray(off, off + len));
            return c.readBytes(base + off, len).then((r) => assert.ok(r.bytes.equals(want), `conn ${k} batch ${batch} read at ${off}`));
          });
          ops.push(c.request(CMD.BLOCK_STATUS, { offset: base, length: R }));
          const rs = await Promise.all(ops);
          for (const r of rs) if (r && 'error' in r) assert.equal(r.error, 0);
          if (batch % 4 === 3) assert.equal((await c.request(CMD.FLUSH)).error, 0);
        }
        assert.ok((await c.readBytes(base, R)).bytes.equals(model), `conn ${k}: whole region`);
        await c.disconnect();
      }),
    );
    try {
      await run;
    } finally {
      // Also when an assertion failed: nothing may stay open and keep the test file running.
      for (const c of clients) c.destroy();
      await srv.close();
      await dev.close();
    }
  });
});

describe('shutdown', () => {
  it('close() answers requests in flight, flushes, closes the connections; the device stays open', async () => {
    const path = join(dir, 'shut.vhdx');
    await createFile(path, { size: 16 * MiB, blockSize: MiB });
    const dev = await openFile(path, { readOnly: false });
    const srv = new NbdServer({ device: dev });
    const p = join(dir, 'shut.sock');
    await srv.listen({ path: p });
    const c = await NbdTestClient.connect({ path: p });
    await c.negotiate();
    // A handshake in progress is dropped.
    const h = await NbdTestClient.connect({ path: p });
    await h.greeting();
    const jobs = [];
    for (let i = 0; i < 32; i++) jobs.push(c.request(CMD.WRITE, { offset: i * 65536, data: Buffer.alloc(65536, i + 1) }));
    const settled = Promise.allSettled(jobs);
    await new Promise((r) => setTimeout(r, 5));
    await srv.close();
    const rs = await settled;
    // Whatever the server had read before close() was answered; nothing was half-sent.
    const answered = rs.filter((r) => r.status === 'fulfilled');
    assert.ok(answered.every((r) => r.value.error === 0));
    assert.ok(rs.slice(0, answered.length).every((r) => r.status === 'fulfilled'), 'the answered requests are the first ones sent');
    assert.ok(await c.closedWithin());
    assert.ok(await h.closedWithin());
    assert.equal(srv.connections, 0);
    // The answered writes are there; the device is still usable.
    for (let i = 0; i < answered.length; i++) {
      const b = new Uint8Array(65536);
      await dev.read(i * 65536, b);
      assert.ok(b.every((x) => x === i + 1));
    }
    await dev.close();
    // New connections are refused.
    await assert.rejects(NbdTestClient.connect({ path: p }));
  });
});
