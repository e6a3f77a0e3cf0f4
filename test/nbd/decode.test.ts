// The NBD request decoder on its own, without a socket: every command, every combination of flag
// bits allowed and refused, ranges at and past the end with offsets up to 2^64 − 1, oversized
// payloads, zero lengths, unknown commands, the order of the checks, and the cookie as one value.
// Expected answers are written from the protocol here, not computed by the code under test.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decodeRequest, type Decoded, type RequestRules } from '../../src/nbd/decode.js';
import { CMD, CF, TF, ERR, REQUEST_MAGIC } from './client.js';

const MiB = 1024 * 1024;
const SIZE = MiB;
const MAX_PAYLOAD = 32 * MiB;
const DRAIN_LIMIT = 128 * MiB;
const U64_MAX = 2n ** 64n - 1n;

/** Connections as the server negotiates them (flags as transmissionFlags gives them). */
const BASE = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_CACHE | TF.CAN_MULTI_CONN;
const limits = { size: SIZE, maxPayload: MAX_PAYLOAD, drainLimit: DRAIN_LIMIT };
type ConnName = 'rw' | 'ro' | 'simple';
const CONN: Record<ConnName, RequestRules> = {
  /** A writable VHDX over structured replies with base:allocation selected. */
  rw: { ...limits, flags: BASE | TF.SEND_DF | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO, context: 1 },
  /** Read-only, structured, base:allocation selected. */
  ro: { ...limits, flags: BASE | TF.SEND_DF | TF.READ_ONLY, context: 1 },
  /** Writable raw file over simple replies: no DF, no TRIM, zeroes but not fast ones, no context. */
  simple: { ...limits, flags: BASE | TF.SEND_FUA | TF.SEND_WRITE_ZEROES, context: null },
};

/**
 * The flags each command may carry on each connection, from the protocol: FUA wherever SEND_FUA
 * was advertised, DF with SEND_DF, NO_HOLE and FAST_ZERO (with SEND_FAST_ZERO) on WRITE_ZEROES,
 * REQ_ONE on BLOCK_STATUS. Commands missing from a row are refused whatever their flags.
 */
const ALLOWED: Record<ConnName, Partial<Record<number, number>>> = {
  rw: {
    [CMD.READ]: CF.FUA | CF.DF,
    [CMD.WRITE]: CF.FUA,
    [CMD.FLUSH]: CF.FUA,
    [CMD.TRIM]: CF.FUA,
    [CMD.CACHE]: CF.FUA,
    [CMD.WRITE_ZEROES]: CF.FUA | CF.NO_HOLE | CF.FAST_ZERO,
    [CMD.BLOCK_STATUS]: CF.FUA | CF.REQ_ONE,
  },
  ro: { [CMD.READ]: CF.DF, [CMD.FLUSH]: 0, [CMD.CACHE]: 0, [CMD.BLOCK_STATUS]: CF.REQ_ONE },
  simple: {
    [CMD.READ]: CF.FUA,
    [CMD.WRITE]: CF.FUA,
    [CMD.FLUSH]: CF.FUA,
    [CMD.CACHE]: CF.FUA,
    [CMD.WRITE_ZEROES]: CF.FUA | CF.NO_HOLE,
  },
};

/** A request header as a test writes it; any field may be wrong on purpose. */
interface Header {
  type: number;
  flags?: number;
  cookie?: bigint;
  offset?: bigint | number;
  length?: number;
  magic?: number;
}

function header({ type, flags = 0, cookie = 0x0102030405060708n, offset = 0n, length = 0, magic = REQUEST_MAGIC }: Header): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

const name = (type: number): string => Object.entries(CMD).find(([, v]) => v === type)?.[0] ?? `command ${type}`;

/** The message of a decision, which every kind but 'done' carries. */
const messageOf = (d: Decoded): string | undefined => ('message' in d ? d.message : undefined);
/** The cookie of a decision, which every kind but 'violation' carries. */
const cookieOf = (d: Decoded): bigint | undefined => ('cookie' in d ? d.cookie : undefined);

/** A decision reduced to the fields the rows below name. */
type Decision = { kind: 'request' | 'done'; command: number } | { kind: 'refusal'; errno: number; drain: number } | { kind: 'violation' };

/** The decision without the fields a row does not name. */
function decide(conn: RequestRules, req: Header): Decision {
  const d = decodeRequest(header(req), conn);
  switch (d.kind) {
    case 'request':
      return { kind: d.kind, command: d.command };
    case 'done':
      return { kind: d.kind, command: d.command };
    case 'refusal':
      return { kind: d.kind, errno: d.errno, drain: d.drain };
    default:
      return { kind: d.kind };
  }
}

const run = (type: number): Decision => ({ kind: 'request', command: type });
const done = (type: number): Decision => ({ kind: 'done', command: type });
const refused = (errno: number, drain = 0): Decision => ({ kind: 'refusal', errno, drain });
const VIOLATION: Decision = { kind: 'violation' };

describe('NBD request decoder', () => {
  it('every command with every combination of flag bits: the allowed ones run, any other bit is EINVAL', () => {
    const bits: number[] = [];
    for (let f = 0; f < 0x40; f++) bits.push(f); // FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN
    bits.push(0x40, 0x80, 0x100, 0x8000, 0xffff);
    const commands = [CMD.READ, CMD.WRITE, CMD.FLUSH, CMD.TRIM, CMD.CACHE, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS];
    let checked = 0;
    for (const [connName, conn] of Object.entries(CONN) as [ConnName, RequestRules][]) {
      for (const type of commands) {
        const allowed = ALLOWED[connName][type];
        if (allowed === undefined) continue; // refused for another reason, below
        const length = type === CMD.FLUSH ? 0 : 512;
        for (const flags of bits) {
          const expected: Decision = (flags & ~allowed) === 0 ? run(type) : refused(ERR.EINVAL, type === CMD.WRITE ? length : 0);
          assert.deepEqual(decide(conn, { type, flags, length }), expected, `${connName} ${name(type)} flags 0x${flags.toString(16)}`);
          checked++;
        }
      }
    }
    assert.ok(checked > 1000);
  });

  it('commands a connection lacks are refused whatever their flags: EPERM for changes to a read-only export, EINVAL for what was not advertised', () => {
    const rows: [ConnName, number, number][] = [
      ['ro', CMD.WRITE, ERR.EPERM],
      ['ro', CMD.TRIM, ERR.EPERM],
      ['ro', CMD.WRITE_ZEROES, ERR.EPERM],
      ['simple', CMD.TRIM, ERR.EINVAL], // SEND_TRIM not advertised
      ['simple', CMD.BLOCK_STATUS, ERR.EINVAL], // no context selected
    ];
    for (const [connName, type, errno] of rows) {
      for (const flags of [0, CF.FUA, CF.REQ_ONE, 0xffff]) {
        const length = 512;
        assert.deepEqual(decide(CONN[connName], { type, flags, length }), refused(errno, type === CMD.WRITE ? length : 0), `${connName} ${name(type)} flags ${flags}`);
      }
    }
  });

  it('ranges at and past the end, offsets up to 2^64 − 1: in range runs, past the end is ENOSPC for WRITE and WRITE_ZEROES and EINVAL for the rest', () => {
    const offsets = [0n, 1n, BigInt(SIZE - 512), BigInt(SIZE - 1), BigInt(SIZE), BigInt(SIZE + 1), 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, U64_MAX - 0xffffffffn, U64_MAX];
    const lengths = [0, 1, 512, SIZE - 1, SIZE, SIZE + 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xffffffff];
    const pastEnd: Record<number, number> = { [CMD.READ]: ERR.EINVAL, [CMD.WRITE]: ERR.ENOSPC, [CMD.TRIM]: ERR.EINVAL, [CMD.CACHE]: ERR.EINVAL, [CMD.WRITE_ZEROES]: ERR.ENOSPC, [CMD.BLOCK_STATUS]: ERR.EINVAL };
    for (const type of [CMD.READ, CMD.WRITE, CMD.TRIM, CMD.CACHE, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS]) {
      const payload = type === CMD.READ || type === CMD.WRITE;
      for (const offset of offsets) {
        for (const length of lengths) {
          const drain = type === CMD.WRITE ? length : 0;
          let expected: Decision;
          if (payload && length > MAX_PAYLOAD) expected = drain > DRAIN_LIMIT ? VIOLATION : refused(ERR.EINVAL, drain);
          else if (offset + BigInt(length) > BigInt(SIZE)) expected = refused(pastEnd[type]!, drain);
          else if (length === 0) expected = type === CMD.BLOCK_STATUS ? refused(ERR.EINVAL) : done(type);
          else expected = run(type);
          assert.deepEqual(decide(CONN.rw, { type, offset, length }), expected, `${name(type)} offset ${offset} length ${length}`);
        }
      }
    }
  });

  it('an export of 2^53 − 1 bytes: its last byte can be read, nothing after it, and no sum rounds', () => {
    const conn = { ...CONN.rw, size: Number.MAX_SAFE_INTEGER };
    const last = 2n ** 53n - 2n;
    assert.deepEqual(decide(conn, { type: CMD.READ, offset: last, length: 1 }), run(CMD.READ));
    assert.deepEqual(decide(conn, { type: CMD.READ, offset: last, length: 2 }), refused(ERR.EINVAL));
    assert.deepEqual(decide(conn, { type: CMD.READ, offset: last + 1n, length: 0 }), done(CMD.READ));
    assert.deepEqual(decide(conn, { type: CMD.READ, offset: last + 1n, length: 1 }), refused(ERR.EINVAL));
    assert.deepEqual(decide(conn, { type: CMD.TRIM, offset: last - 0xfffffffen, length: 0xffffffff }), run(CMD.TRIM));
    assert.deepEqual(decide(conn, { type: CMD.TRIM, offset: last - 0xfffffffdn, length: 0xffffffff }), refused(ERR.EINVAL));
  });

  it('refusals name the request as it was sent', () => {
    const message = (conn: RequestRules, req: Header) => messageOf(decodeRequest(header(req), conn));
    assert.equal(message(CONN.rw, { type: CMD.READ, offset: SIZE - 10, length: 11 }), `read of 11 bytes at offset ${SIZE - 10} is outside the ${SIZE}-byte export`);
    assert.equal(message(CONN.rw, { type: CMD.WRITE_ZEROES, offset: U64_MAX, length: 1 }), `write zeroes of 1 bytes at an offset past 2^53 is outside the ${SIZE}-byte export`);
    assert.equal(message(CONN.rw, { type: CMD.READ, length: MAX_PAYLOAD + 1 }), 'read is longer than the maximum block size');
    assert.equal(message(CONN.rw, { type: CMD.READ, flags: CF.REQ_ONE, length: 1 }), 'unsupported flags');
    assert.equal(message(CONN.rw, { type: CMD.BLOCK_STATUS, length: 0 }), 'block status of 0 bytes');
    assert.equal(message(CONN.simple, { type: CMD.BLOCK_STATUS, length: 1 }), 'no metadata context was selected');
    assert.equal(message(CONN.simple, { type: CMD.TRIM, length: 1 }), 'command not advertised');
    assert.equal(message(CONN.ro, { type: CMD.WRITE, length: 1 }), 'the export is read-only');
    assert.equal(message(CONN.rw, { type: 42 }), 'unknown command');
    assert.equal(message(CONN.rw, { type: CMD.WRITE, length: DRAIN_LIMIT + 1, offset: SIZE }), `write of ${DRAIN_LIMIT + 1} bytes is past the drain limit`);
  });

  it('several faults in one request get the first answer of one fixed order: read-only, advertised, flags, length, range, zero length', () => {
    const rows: [string, RequestRules, Header, Decision][] = [
      ['read-only before flags', CONN.ro, { type: CMD.WRITE, flags: 0xffff, length: 8, offset: U64_MAX }, refused(ERR.EPERM, 8)],
      ['read-only before advertised', CONN.ro, { type: CMD.TRIM, length: 0 }, refused(ERR.EPERM)],
      ['advertised before flags', CONN.simple, { type: CMD.TRIM, flags: 0xffff, offset: U64_MAX, length: 1 }, refused(ERR.EINVAL)],
      ['flags before length', CONN.rw, { type: CMD.WRITE, flags: CF.DF, length: MAX_PAYLOAD + 1, offset: U64_MAX }, refused(ERR.EINVAL, MAX_PAYLOAD + 1)],
      ['length before range', CONN.rw, { type: CMD.WRITE, length: MAX_PAYLOAD + 1, offset: SIZE }, refused(ERR.EINVAL, MAX_PAYLOAD + 1)],
      ['range before zero length', CONN.rw, { type: CMD.WRITE_ZEROES, length: 0, offset: SIZE + 1 }, refused(ERR.ENOSPC)],
      ['context before flags', CONN.simple, { type: CMD.BLOCK_STATUS, flags: 0xffff, length: 0 }, refused(ERR.EINVAL)],
    ];
    for (const [why, conn, req, expected] of rows) assert.deepEqual(decide(conn, req), expected, why);
    assert.equal(messageOf(decodeRequest(header({ type: CMD.WRITE, flags: CF.DF, length: MAX_PAYLOAD + 1, offset: U64_MAX }), CONN.rw)), 'unsupported flags');
    assert.equal(messageOf(decodeRequest(header({ type: CMD.WRITE, length: MAX_PAYLOAD + 1, offset: SIZE }), CONN.rw)), 'write is longer than the maximum block size');
  });

  it('payloads: READ and WRITE up to the maximum run; longer is EINVAL; a refused WRITE is drained up to the drain limit, past it the stream is given up', () => {
    const big = { ...CONN.rw, size: 2 ** 40 };
    const ro = { ...CONN.ro, size: 2 ** 40 };
    const rows: [RequestRules, Header, Decision][] = [
      [big, { type: CMD.READ, length: MAX_PAYLOAD }, run(CMD.READ)],
      [big, { type: CMD.READ, length: MAX_PAYLOAD + 1 }, refused(ERR.EINVAL)],
      [big, { type: CMD.WRITE, length: MAX_PAYLOAD }, run(CMD.WRITE)],
      [big, { type: CMD.WRITE, length: MAX_PAYLOAD + 1 }, refused(ERR.EINVAL, MAX_PAYLOAD + 1)],
      [big, { type: CMD.WRITE, length: DRAIN_LIMIT }, refused(ERR.EINVAL, DRAIN_LIMIT)],
      [big, { type: CMD.WRITE, length: DRAIN_LIMIT + 1 }, VIOLATION],
      [ro, { type: CMD.WRITE, length: DRAIN_LIMIT }, refused(ERR.EPERM, DRAIN_LIMIT)],
      [ro, { type: CMD.WRITE, length: DRAIN_LIMIT + 1 }, VIOLATION],
      // Ranged commands carry no payload: up to 4 GiB − 1, never capped by the maximum payload.
      [big, { type: CMD.TRIM, length: 0xffffffff }, run(CMD.TRIM)],
      [big, { type: CMD.WRITE_ZEROES, length: 0xffffffff }, run(CMD.WRITE_ZEROES)],
      [big, { type: CMD.BLOCK_STATUS, length: 0xffffffff }, run(CMD.BLOCK_STATUS)],
      [big, { type: CMD.CACHE, length: 0xffffffff }, run(CMD.CACHE)],
      // Commands that are not WRITE have no payload to drain, whatever their length says.
      [big, { type: 42, length: 0xffffffff }, refused(ERR.EINVAL)],
      [ro, { type: CMD.TRIM, length: 0xffffffff }, refused(ERR.EPERM)],
    ];
    for (const [conn, req, expected] of rows) assert.deepEqual(decide(conn, req), expected, `${name(req.type)} of ${req.length} on ${conn === ro ? 'ro' : 'rw'}`);
  });

  it('zero lengths are answered with success at once, except BLOCK_STATUS (EINVAL)', () => {
    for (const type of [CMD.READ, CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES, CMD.CACHE]) {
      assert.deepEqual(decide(CONN.rw, { type, length: 0 }), done(type), name(type));
      assert.deepEqual(decide(CONN.rw, { type, offset: SIZE, length: 0 }), done(type), `${name(type)} at the end`);
    }
    assert.deepEqual(decide(CONN.rw, { type: CMD.BLOCK_STATUS, length: 0 }), refused(ERR.EINVAL));
  });

  it('FLUSH takes no offset or length; DISC is taken as it comes', () => {
    for (const conn of Object.values(CONN)) {
      assert.deepEqual(decide(conn, { type: CMD.FLUSH }), run(CMD.FLUSH));
      assert.deepEqual(decide(conn, { type: CMD.FLUSH, offset: 1 }), refused(ERR.EINVAL));
      assert.deepEqual(decide(conn, { type: CMD.FLUSH, offset: U64_MAX }), refused(ERR.EINVAL));
      assert.deepEqual(decide(conn, { type: CMD.FLUSH, length: 1 }), refused(ERR.EINVAL));
      assert.deepEqual(decide(conn, { type: CMD.DISC, flags: 0xffff, offset: U64_MAX, length: 0xffffffff }), run(CMD.DISC));
    }
  });

  it('unknown commands are EINVAL with nothing to drain; a bad magic gives up the stream', () => {
    for (const type of [8 /* RESIZE */, 9, 42, 0x7fff, 0xffff]) {
      assert.deepEqual(decide(CONN.rw, { type, length: 4096 }), refused(ERR.EINVAL), `command ${type}`);
    }
    for (const magic of [0, 0x25609514, 0x668e33ef, 0xffffffff]) {
      assert.deepEqual(decide(CONN.rw, { type: CMD.READ, length: 1, magic }), VIOLATION, `magic 0x${magic.toString(16)}`);
    }
  });

  it('the cookie comes back as one value, all 64 bits of it, and the rest of the request as sent', () => {
    for (const cookie of [0n, 1n, 0xffffffffn, 0x100000000n, 0x0102030405060708n, 2n ** 63n, U64_MAX]) {
      const req = decodeRequest(header({ type: CMD.WRITE_ZEROES, flags: CF.NO_HOLE | CF.FUA, cookie, offset: 4096n, length: 8192 }), CONN.rw);
      assert.deepEqual(req, { kind: 'request', command: CMD.WRITE_ZEROES, flags: CF.NO_HOLE | CF.FUA, cookie, offset: 4096, length: 8192 });
      assert.equal(cookieOf(decodeRequest(header({ type: 42, cookie }), CONN.rw)), cookie);
      assert.equal(cookieOf(decodeRequest(header({ type: CMD.READ, cookie }), CONN.rw)), cookie);
    }
  });
});
