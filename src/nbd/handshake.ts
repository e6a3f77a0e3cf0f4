/**
 * The fixed newstyle handshake: greeting, client flags, then options handled strictly in turn
 * (a client sends no option before the final reply to the previous one) until GO or EXPORT_NAME
 * starts transmission, or ABORT or a protocol violation ends the connection.
 *
 * Options: EXPORT_NAME, ABORT, LIST, INFO and GO (EXPORT always; NAME, DESCRIPTION and BLOCK_SIZE
 * when asked), STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT for base:allocation.
 * Everything else gets ERR_UNSUP. Every length is checked against the option's own length before
 * it is used, and an option longer than `maxOptionLength` ends the connection unread.
 */
import { ExportTable, transmissionFlags, type NbdExport } from './export.js';
import {
  BASE_ALLOCATION,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  INIT_PASSWD,
  Info,
  OPTION_HEADER_SIZE,
  OPTION_MAGIC,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  Opt,
  Rep,
  SERVER_HANDSHAKE_FLAGS,
  decodeString,
  putU64,
} from './protocol.js';

export interface HandshakeIo {
  /** Exactly `n` bytes from the client; rejects when the connection ends. */
  read(n: number): Promise<Buffer>;
  /** Queue bytes for the client (in order). */
  write(data: Buffer): void;
  /**
   * Claim a place among the connections in transmission, when GO or EXPORT_NAME asks for one.
   * Returns null when claimed, else the message to refuse the client with.
   */
  admit(): string | null;
}

export interface HandshakeLimits {
  /** Longest option data accepted (bytes); longer ends the connection. */
  maxOptionLength: number;
  /** Options accepted before GO / EXPORT_NAME; more ends the connection. */
  maxOptions: number;
  /** Block sizes advertised in INFO_BLOCK_SIZE. */
  minimumBlockSize: number;
  preferredBlockSize: number;
  maximumPayload: number;
}

/** The state transmission starts from. */
export interface Negotiated {
  export: NbdExport;
  structured: boolean;
  /** Id of the selected base:allocation context, or null when none was selected for this export. */
  allocationContext: number | null;
  flags: number;
}

/** A client broke the protocol in a way that allows no reply: the connection is closed. */
export class ProtocolViolation extends Error {
  /** Always `ProtocolViolation`. */
  override name = 'ProtocolViolation';
}

/**
 * Why the server refused or dropped a client that broke no rule (reported to onError; the client
 * gets the message where the protocol has room for it):
 * - SERVER_FULL: GO or EXPORT_NAME while every connection is taken and none has been idle long
 *   enough to be let go (GO gets ERR_POLICY with the message; EXPORT_NAME has no error channel,
 *   so that connection is closed).
 * - TOO_MANY_HANDSHAKES: a connection accepted while the most allowed are in the handshake: closed.
 * - HANDSHAKE_TIMEOUT: the handshake was not finished in time: closed.
 * - IDLE: idle past the idle timeout while the server was full and another client asked in.
 * - STALLED_REQUEST: a request left half sent for the I/O timeout.
 * - UNREAD_REPLIES: replies not read for the I/O timeout.
 */
export type ClientDropReason = 'SERVER_FULL' | 'TOO_MANY_HANDSHAKES' | 'HANDSHAKE_TIMEOUT' | 'IDLE' | 'STALLED_REQUEST' | 'UNREAD_REPLIES';

/** A client the server refused or dropped because of a limit or timeout (given to `onError`). */
export class ClientDropped extends Error {
  /** Always `ClientDropped`. */
  override name = 'ClientDropped';
  /** A client dropped for `reason`, with a message for people. */
  constructor(
    /** Why the client was refused or dropped. */
    readonly reason: ClientDropReason,
    message: string,
  ) {
    super(message);
  }
}

/** The id we give base:allocation in SET_META_CONTEXT (any u32 unique per connection will do). */
export const ALLOCATION_CONTEXT_ID = 1;

/**
 * Run the handshake. Resolves to the negotiated state, or null when the client ended it with ABORT
 * (the ACK has been queued) or asked with EXPORT_NAME while `io.admit` refused. Rejects with
 * ProtocolViolation, or with the read error when the connection ends.
 */
export async function negotiate(io: HandshakeIo, exports: ExportTable, limits: HandshakeLimits): Promise<Negotiated | null> {
  const greeting = Buffer.alloc(18);
  greeting.writeBigUInt64BE(INIT_PASSWD, 0);
  greeting.writeBigUInt64BE(OPTION_MAGIC, 8);
  greeting.writeUInt16BE(SERVER_HANDSHAKE_FLAGS, 16);
  io.write(greeting);

  const clientFlags = (await io.read(4)).readUInt32BE(0);
  if ((clientFlags & ~SERVER_HANDSHAKE_FLAGS) !== 0) throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
  const fixed = (clientFlags & FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (clientFlags & FLAG_NO_ZEROES) !== 0;

  let structured = false;
  /** The export SET_META_CONTEXT was for, when it selected base:allocation. */
  let contextFor: NbdExport | null = null;

  for (let count = 0; ; count++) {
    const head = await io.read(OPTION_HEADER_SIZE);
    if (head.readBigUInt64BE(0) !== OPTION_MAGIC) throw new ProtocolViolation('bad option magic');
    const opt = head.readUInt32BE(8);
    const length = head.readUInt32BE(12);
    if (count >= limits.maxOptions) throw new ProtocolViolation(`more than ${limits.maxOptions} options`);
    if (length > limits.maxOptionLength) throw new ProtocolViolation(`option ${opt} of ${length} bytes is over the ${limits.maxOptionLength}-byte limit`);
    const data = length > 0 ? Buffer.from(await io.read(length)) : Buffer.alloc(0);
    // Plain (not fixed) newstyle clients cannot read option replies: only EXPORT_NAME makes sense.
    if (!fixed && opt !== Opt.EXPORT_NAME) throw new ProtocolViolation(`option ${opt} from a client without fixed newstyle`);
    const reply = (type: number, payload?: Buffer): void => io.write(optionReply(opt, type, payload));
    const fail = (type: number, message: string): void => reply(type, Buffer.from(message));
    /** A parsed INFO, GO or META_CONTEXT request and the export it names; null when refused (the error is sent). */
    const target = <T extends { name: string }>(req: T | string): { req: T; exp: NbdExport } | null => {
      if (typeof req === 'string') {
        fail(Rep.ERR_INVALID, req);
        return null;
      }
      const exp = exports.lookup(req.name);
      if (!exp) {
        fail(Rep.ERR_UNKNOWN, 'no such export');
        return null;
      }
      return { req, exp };
    };

    switch (opt) {
      case Opt.EXPORT_NAME: {
        // No error channel: an unknown or malformed name closes the connection.
        const name = decodeString(data);
        const exp = name === null ? undefined : exports.lookup(name);
        if (!exp) throw new ProtocolViolation(`EXPORT_NAME for an unknown export`);
        if (io.admit() !== null) return null;
        const flags = transmissionFlags(exp, structured);
        io.write(exportNameReply(exp.size, flags, noZeroes));
        return { export: exp, structured, allocationContext: contextFor === exp ? ALLOCATION_CONTEXT_ID : null, flags };
      }
      case Opt.ABORT:
        reply(Rep.ACK);
        return null;
      case Opt.LIST:
        if (length !== 0) {
          fail(Rep.ERR_INVALID, 'LIST takes no data');
          break;
        }
        for (const e of exports.all) reply(Rep.SERVER, serverEntry(e.name, e.description));
        reply(Rep.ACK);
        break;
      case Opt.STRUCTURED_REPLY:
        if (length !== 0) fail(Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        else if (structured) fail(Rep.ERR_INVALID, 'structured replies are already on');
        else {
          structured = true;
          reply(Rep.ACK);
        }
        break;
      case Opt.INFO:
      case Opt.GO: {
        const t = target(parseInfoRequest(data));
        if (!t) break;
        const { req, exp } = t;
        const refusal = opt === Opt.GO ? io.admit() : null;
        if (refusal !== null) {
          // The client may try again, ABORT, or go; the handshake limits still hold.
          fail(Rep.ERR_POLICY, refusal);
          break;
        }
        const flags = transmissionFlags(exp, structured);
        reply(Rep.INFO, exportInfo(exp.size, flags));
        if (req.infos.has(Info.NAME)) reply(Rep.INFO, numberThenText(2, Info.NAME, exp.name));
        if (req.infos.has(Info.DESCRIPTION) && exp.description !== '') reply(Rep.INFO, numberThenText(2, Info.DESCRIPTION, exp.description));
        if (req.infos.has(Info.BLOCK_SIZE)) reply(Rep.INFO, blockSizeInfo(limits));
        reply(Rep.ACK);
        if (opt === Opt.GO) {
          return { export: exp, structured, allocationContext: contextFor === exp ? ALLOCATION_CONTEXT_ID : null, flags };
        }
        break;
      }
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT: {
        const set = opt === Opt.SET_META_CONTEXT;
        // SET replaces the selection even when it fails.
        if (set) contextFor = null;
        if (set && !structured) {
          fail(Rep.ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
          break;
        }
        const t = target(parseContextRequest(data));
        if (!t) break;
        const { req, exp } = t;
        // Only base:allocation exists. LIST with no query, or the query "base:", lists it; an exact
        // match lists or selects it; anything else is silently ignored.
        const match = set
          ? req.queries.includes(BASE_ALLOCATION)
          : req.queries.length === 0 || req.queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
        if (match) {
          reply(Rep.META_CONTEXT, numberThenText(4, set ? ALLOCATION_CONTEXT_ID : 0, BASE_ALLOCATION));
          if (set) contextFor = exp;
        }
        reply(Rep.ACK);
        break;
      }
      case Opt.STARTTLS:
        fail(Rep.ERR_UNSUP, 'TLS is not supported');
        break;
      default:
        fail(Rep.ERR_UNSUP, 'option not supported');
        break;
    }
  }
}

// Option reply payloads.

/** Reply to EXPORT_NAME: size, transmission flags, and 124 zero bytes unless the client said NO_ZEROES. */
function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(noZeroes ? 10 : 134);
  putU64(out, size, 0);
  out.writeUInt16BE(flags, 8);
  return out;
}

/** INFO_EXPORT: size and transmission flags. */
function exportInfo(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  putU64(b, size, 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** A big-endian u16 or u32, then text: INFO_NAME and INFO_DESCRIPTION (u16 type), REP_META_CONTEXT (u32 id). */
function numberThenText(size: 2 | 4, value: number, text: string): Buffer {
  const b = Buffer.alloc(size + Buffer.byteLength(text));
  b.writeUIntBE(value, 0, size);
  b.write(text, size, 'utf8');
  return b;
}

/** INFO_BLOCK_SIZE: minimum, preferred, maximum payload. */
function blockSizeInfo(limits: HandshakeLimits): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(limits.minimumBlockSize, 2);
  b.writeUInt32BE(limits.preferredBlockSize, 6);
  b.writeUInt32BE(limits.maximumPayload, 10);
  return b;
}

/** REP_SERVER: name length, name, description. */
function serverEntry(name: string, description: string): Buffer {
  const n = Buffer.byteLength(name);
  const b = Buffer.alloc(4 + n + Buffer.byteLength(description));
  b.writeUInt32BE(n, 0);
  b.write(name, 4, 'utf8');
  b.write(description, 4 + n, 'utf8');
  return b;
}

export function optionReply(opt: number, type: number, payload?: Buffer): Buffer {
  const n = payload?.length ?? 0;
  const out = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + n);
  out.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  out.writeUInt32BE(opt, 8);
  out.writeUInt32BE(type >>> 0, 12);
  out.writeUInt32BE(n, 16);
  payload?.copy(out, OPTION_REPLY_HEADER_SIZE);
  return out;
}

/**
 * The export name INFO, GO and the META_CONTEXT options start with (u32 length, name), checked to
 * leave at least `rest` bytes after it; `end` is where it ends.
 */
function leadingName(data: Buffer, rest: number): { name: string; end: number } | string {
  if (data.length < 4 + rest) return 'request too short';
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 4 - rest) return 'name length overruns the request';
  const name = decodeString(data.subarray(4, 4 + nameLength));
  if (name === null) return 'bad export name';
  return { name, end: 4 + nameLength };
}

/** INFO/GO data: u32 name length, name, u16 count k, k u16 info codes; nothing more or less. */
function parseInfoRequest(data: Buffer): { name: string; infos: Set<number> } | string {
  const head = leadingName(data, 2);
  if (typeof head === 'string') return head;
  const { name, end } = head;
  const k = data.readUInt16BE(end);
  if (data.length !== end + 2 + 2 * k) return 'request length does not match its info count';
  const infos = new Set<number>();
  for (let i = 0; i < k; i++) infos.add(data.readUInt16BE(end + 2 + 2 * i));
  return { name, infos };
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 query count, queries (u32 length, text). */
function parseContextRequest(data: Buffer): { name: string; queries: string[] } | string {
  const head = leadingName(data, 4);
  if (typeof head === 'string') return head;
  const { name, end } = head;
  const count = data.readUInt32BE(end);
  let pos = end + 4;
  const queries: string[] = [];
  // Each query takes at least 4 bytes, so the loop ends by the option's length, not the count.
  for (let i = 0; i < count; i++) {
    if (data.length - pos < 4) return 'query count overruns the request';
    const n = data.readUInt32BE(pos);
    pos += 4;
    if (n > data.length - pos) return 'query length overruns the request';
    const q = decodeString(data.subarray(pos, pos + n));
    if (q === null) return 'bad query';
    queries.push(q);
    pos += n;
  }
  if (pos !== data.length) return 'trailing bytes after the queries';
  return { name, queries };
}
