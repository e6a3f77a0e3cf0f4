/**
 * The request decoder: a 28-byte request header and what the connection negotiated in, a
 * decision out. Pure: no socket, no device, no state. Transmission acts on the decision.
 *
 * Checks run in one order for every command, so a request with several faults always gets the
 * same answer: magic; the export is writable (EPERM); the command was advertised (EINVAL); its
 * flags (EINVAL); READ/WRITE length against the maximum payload (EINVAL); the range against the
 * export (ENOSPC for WRITE and WRITE_ZEROES, EINVAL for the rest); zero length. Offsets are compared
 * without forming offset + length, so any u64 is safe.
 */
import {
  CFlag,
  Cmd,
  Errno,
  REQUEST_MAGIC,
  TFlag,
  getU64,
  type Cookie,
} from './protocol.js';

/** What the decoder needs to know about the connection; fixed once transmission starts. */
export interface RequestRules {
  /** The export's size in bytes. */
  readonly size: number;
  /** The transmission flags advertised to the client (READ_ONLY, SEND_TRIM, SEND_DF, ...). */
  readonly flags: number;
  /** Id of the selected base:allocation context, or null when none was selected for this export. */
  readonly context: number | null;
  /** Largest READ or WRITE length (the advertised maximum block size). */
  readonly maxPayload: number;
  /** Largest refused WRITE whose payload is read and dropped; a longer one is a violation. */
  readonly drainLimit: number;
}

/** A request to carry out. For WRITE, `length` payload bytes follow the header. */
export interface Request {
  readonly kind: 'request';
  readonly command: Cmd;
  readonly flags: number;
  readonly cookie: Cookie;
  readonly offset: number;
  readonly length: number;
}

/** A valid request with nothing to do (zero length): answer success at once. */
export interface Done {
  readonly kind: 'done';
  readonly command: Cmd;
  readonly cookie: Cookie;
}

/**
 * A request to refuse with `errno`. `drain` payload bytes (a refused WRITE's) follow the header
 * and must be read and dropped before the reply, to keep the stream in step. `command` is the
 * type as sent (possibly unknown); it decides the reply's form.
 */
export interface Refusal {
  readonly kind: 'refusal';
  readonly command: number;
  readonly cookie: Cookie;
  readonly errno: Errno;
  readonly message: string;
  readonly drain: number;
}

/** The stream cannot be followed further (bad magic, a payload too long to drain): disconnect. */
export interface Violation {
  readonly kind: 'violation';
  readonly message: string;
}

export type Decoded = Request | Done | Refusal | Violation;

/** The facts the checks need about one command. */
interface CommandRule {
  /** How refusals name it. */
  readonly name: string;
  /** Changes the disk: refused with EPERM on a read-only export. */
  readonly writes: boolean;
  /** The error for a range past the end: ENOSPC for WRITE and WRITE_ZEROES, EINVAL for the rest (TRIM too). */
  readonly pastEnd: Errno;
  /** The transmission flag that advertises it (0: always available). */
  readonly advertisedBy: number;
  /** The flags it takes besides FUA, each with the transmission flag that offers it (0: none needed). */
  readonly flags: readonly (readonly [flag: number, advertisedBy: number])[];
  /** 'payload': length is READ/WRITE data, capped by maxPayload; 'range': a range of the export; 'none': offset and length must be 0. */
  readonly length: 'payload' | 'range' | 'none';
  /** A zero-length range: answered with success at once, or refused (BLOCK_STATUS). */
  readonly empty: 'done' | 'refuse';
}

const NO_FLAGS: CommandRule['flags'] = [];

// The one table of what each command is (DISC, which gets no reply, is handled apart).
const RULES = byCommand([
  [Cmd.READ, { name: 'read', writes: false, pastEnd: Errno.EINVAL, advertisedBy: 0, flags: [[CFlag.DF, TFlag.SEND_DF]], length: 'payload', empty: 'done' }],
  [Cmd.WRITE, { name: 'write', writes: true, pastEnd: Errno.ENOSPC, advertisedBy: 0, flags: NO_FLAGS, length: 'payload', empty: 'done' }],
  [Cmd.FLUSH, { name: 'flush', writes: false, pastEnd: Errno.EINVAL, advertisedBy: TFlag.SEND_FLUSH, flags: NO_FLAGS, length: 'none', empty: 'done' }],
  [Cmd.TRIM, { name: 'trim', writes: true, pastEnd: Errno.EINVAL, advertisedBy: TFlag.SEND_TRIM, flags: NO_FLAGS, length: 'range', empty: 'done' }],
  [Cmd.CACHE, { name: 'cache', writes: false, pastEnd: Errno.EINVAL, advertisedBy: TFlag.SEND_CACHE, flags: NO_FLAGS, length: 'range', empty: 'done' }],
  [
    Cmd.WRITE_ZEROES,
    {
      name: 'write zeroes',
      writes: true,
      pastEnd: Errno.ENOSPC,
      advertisedBy: TFlag.SEND_WRITE_ZEROES,
      flags: [
        [CFlag.NO_HOLE, 0],
        [CFlag.FAST_ZERO, TFlag.SEND_FAST_ZERO],
      ],
      length: 'range',
      empty: 'done',
    },
  ],
  [Cmd.BLOCK_STATUS, { name: 'block status', writes: false, pastEnd: Errno.EINVAL, advertisedBy: 0, flags: [[CFlag.REQ_ONE, 0]], length: 'range', empty: 'refuse' }],
]);

/** The table as an array indexed by command type (looked up once per request). */
function byCommand(entries: readonly (readonly [Cmd, CommandRule])[]): readonly (CommandRule | undefined)[] {
  const rules: (CommandRule | undefined)[] = [];
  for (const [command, rule] of entries) rules[command] = rule;
  return rules;
}

/** Whether `command` changes the disk (WRITE, TRIM, WRITE_ZEROES). */
export function changesDisk(command: number): boolean {
  return RULES[command]?.writes === true;
}

/** The command flags `rule` accepts on a connection that advertised `advertised`. */
function allowedFlags(rule: CommandRule, advertised: number): number {
  let allowed = (advertised & TFlag.SEND_FUA) !== 0 ? CFlag.FUA : 0;
  for (let i = 0; i < rule.flags.length; i++) {
    const [flag, by] = rule.flags[i]!;
    if ((advertised & by) === by) allowed |= flag;
  }
  return allowed;
}

/** Decide what to do with one request header (`b` holds at least its 28 bytes). */
export function decodeRequest(b: Buffer, rules: RequestRules): Decoded {
  if (b.readUInt32BE(0) !== REQUEST_MAGIC) return { kind: 'violation', message: 'bad request magic' };
  const flags = b.readUInt16BE(4);
  const command = b.readUInt16BE(6);
  const cookie = b.readBigUInt64BE(8);
  const offset = getU64(b, 16); // -1 when >= 2^53: past the end of any export
  const length = b.readUInt32BE(24);

  if (command === Cmd.DISC) return { kind: 'request', command, flags, cookie, offset, length };
  const rule = RULES[command];
  const why = rule ? check(rule, command, flags, offset, length, rules) : ([Errno.EINVAL, 'unknown command'] as const);
  if (why === null) return { kind: 'request', command, flags, cookie, offset, length };
  if (why === 'done') return { kind: 'done', command, cookie };
  // A refused WRITE's payload is drained first, unless it is too long to.
  const drain = command === Cmd.WRITE ? length : 0;
  if (drain > rules.drainLimit) return { kind: 'violation', message: `write of ${length} bytes is past the drain limit` };
  return { kind: 'refusal', command, cookie, errno: why[0], message: why[1], drain };
}

/**
 * The checks, in their one order: null when the request is to run, 'done' for a valid zero-length
 * range, else the errno and message to refuse it with.
 */
function check(rule: CommandRule, command: number, flags: number, offset: number, length: number, rules: RequestRules): readonly [Errno, string] | 'done' | null {
  const advertised = rules.flags;
  if (rule.writes && (advertised & TFlag.READ_ONLY) !== 0) return [Errno.EPERM, 'the export is read-only'];
  if ((advertised & rule.advertisedBy) !== rule.advertisedBy) return [Errno.EINVAL, 'command not advertised'];
  if (command === Cmd.BLOCK_STATUS && rules.context === null) return [Errno.EINVAL, 'no metadata context was selected'];
  if ((flags & ~allowedFlags(rule, advertised)) !== 0) return [Errno.EINVAL, 'unsupported flags'];
  if (rule.length === 'none') {
    if (offset !== 0 || length !== 0) return [Errno.EINVAL, `${rule.name} takes no offset or length`];
    return null;
  }
  if (rule.length === 'payload' && length > rules.maxPayload) return [Errno.EINVAL, `${rule.name} is longer than the maximum block size`];
  const size = rules.size;
  if (offset < 0 || offset > size || length > size - offset) {
    const at = offset >= 0 ? `at offset ${offset}` : 'at an offset past 2^53';
    return [rule.pastEnd, `${rule.name} of ${length} bytes ${at} is outside the ${size}-byte export`];
  }
  if (length === 0) return rule.empty === 'refuse' ? [Errno.EINVAL, `${rule.name} of 0 bytes`] : 'done';
  return null;
}
