/**
 * What the server offers: named exports over block devices, and the transmission flags each one
 * advertises.
 */
import type { BlockDevice, WritableBlockDevice } from '../device/block-device.js';
import { MAX_STRING, TFlag } from './protocol.js';

/** How a device is exported: its name, description, access and what it advertises. */
export interface NbdExportOptions {
  /** The export's name (default ''). The empty name also reaches the first export. */
  name?: string;
  /** Free text shown by `nbdinfo` and `qemu-nbd --list`. */
  description?: string;
  /** Refuse writes (EPERM) even when the device is writable. Always true for a read-only device. */
  readOnly?: boolean;
  /**
   * Advertise CAN_MULTI_CONN (default true). Honest when every connection goes through this one
   * device object and its `flush` makes every completed write durable, whichever connection made
   * it: true of VhdxImage and RawDevice, which keep no per-caller cache.
   */
  multiConn?: boolean;
  /**
   * Whether 'unallocated' extents read as zeros, so that block status may say HOLE|ZERO and READ
   * may answer with hole chunks. Default: true, except for a differencing image opened without
   * its parent, whose unallocated ranges would be the parent's data (reported as status 0). A
   * differencing image opened with its chain reports 'unallocated' only where no image of the
   * chain has data, which reads as zeros.
   */
  unallocatedIsZero?: boolean;
}

/** One export of an {@link NbdServer}: a device and how it is offered. */
export interface NbdExportSpec extends NbdExportOptions {
  /** The device served; the server does not close it. */
  device: BlockDevice;
}

/** An export as the protocol code sees it: everything resolved. */
export interface NbdExport {
  readonly name: string;
  readonly description: string;
  readonly device: BlockDevice;
  /** The device when writes are allowed, else null. */
  readonly writable: WritableBlockDevice | null;
  readonly size: number;
  readonly multiConn: boolean;
  readonly unallocatedIsZero: boolean;
}

export function resolveExport(spec: NbdExportSpec): NbdExport {
  const { device } = spec;
  const name = spec.name ?? '';
  const description = spec.description ?? '';
  if (Buffer.byteLength(name) > MAX_STRING || name.includes('\0')) throw new TypeError(`export name ${JSON.stringify(name.slice(0, 40))} is longer than ${MAX_STRING} bytes or holds NUL`);
  if (Buffer.byteLength(description) > MAX_STRING || description.includes('\0')) throw new TypeError('export description is longer than 4096 bytes or holds NUL');
  if (!Number.isSafeInteger(device.size) || device.size < 0) throw new TypeError(`device size ${device.size} is not a byte count`);
  const canWrite = !device.readOnly && spec.readOnly !== true && typeof (device as Partial<WritableBlockDevice>).write === 'function';
  const d = device as { type?: unknown; parent?: unknown };
  const parentless = d.type === 'differencing' && !d.parent;
  return {
    name,
    description,
    device,
    writable: canWrite ? (device as WritableBlockDevice) : null,
    size: device.size,
    multiConn: spec.multiConn ?? true,
    unallocatedIsZero: spec.unallocatedIsZero ?? !parentless,
  };
}

/**
 * Transmission flags for an export, computed when the client enters transmission (DF depends on
 * whether structured replies were negotiated).
 */
export function transmissionFlags(exp: NbdExport, structured: boolean): number {
  let f = TFlag.HAS_FLAGS | TFlag.SEND_FLUSH | TFlag.SEND_CACHE;
  if (structured) f |= TFlag.SEND_DF;
  if (exp.multiConn) f |= TFlag.CAN_MULTI_CONN;
  const w = exp.writable;
  if (!w) return f | TFlag.READ_ONLY;
  f |= TFlag.SEND_FUA;
  if (w.can.discard) f |= TFlag.SEND_TRIM;
  if (w.can.zero) {
    f |= TFlag.SEND_WRITE_ZEROES;
    if (w.can.fastZero) f |= TFlag.SEND_FAST_ZERO;
  }
  return f;
}

/** The exports of one server, found by name. */
export class ExportTable {
  private readonly byName = new Map<string, NbdExport>();
  readonly all: readonly NbdExport[];

  constructor(exports: NbdExport[]) {
    if (exports.length === 0) throw new TypeError('an NBD server needs at least one export');
    for (const e of exports) {
      if (this.byName.has(e.name)) throw new TypeError(`two exports are named ${JSON.stringify(e.name)}`);
      this.byName.set(e.name, e);
    }
    this.all = exports;
  }

  /** The export called `name`; the empty name reaches the first export when none is called ''. */
  lookup(name: string): NbdExport | undefined {
    return this.byName.get(name) ?? (name === '' ? this.all[0] : undefined);
  }
}
