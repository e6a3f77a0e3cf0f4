/**
 * A raw disk image (a plain file holding the disk's bytes) as a block device over any
 * RandomAccessSource. Reads are direct; block status is found by reading the data and reporting
 * 64 KiB grains of zeros as 'zero' (a raw file carries no allocation map we can reach portably),
 * so `can.extents` is false: callers that read the data anyway (the copy engine) find zeros
 * themselves and read it once. Writable when its source is.
 */
import { VhdxError, checkRequestRange, type RequestKind } from '../errors.js';
import { isZero } from '../codec/bytes.js';
import { isWritableSource, readExact, writeZeros, type CopyHint, type RandomAccessSource, type WritableSource } from '../io/source.js';
import type { DeviceCapabilities, Extent, WritableBlockDevice } from './block-device.js';

/** Granularity of zero detection in block status. */
export const RAW_ZERO_GRAIN = 64 * 1024;
/** Bytes read at a time while scanning for block status. */
const SCAN_BYTES = 1024 * 1024;

/** Options of a new {@link RawDevice}. */
export interface RawDeviceOptions {
  /** Sector size the device reports (default 512). */
  logicalSectorSize?: 512 | 4096;
}

/**
 * A raw disk image (the file is the disk) as a block device over any source: writable when the
 * source is. Block status reads the data and reports 64 KiB grains of zeros as `zero`.
 */
export class RawDevice implements WritableBlockDevice {
  /** The source's size when the device was made; writes stay inside it. */
  readonly size: number;
  /** The sector size the device reports (512 unless given). */
  readonly logicalSectorSize: number;
  /** True when the source cannot be written. */
  readonly readOnly: boolean;
  /** Writable: zero and FUA (zeros are written as data); never fastZero, discard or extents. */
  readonly can: DeviceCapabilities;
  /** The source's hint for long copies (see CopyHint). */
  readonly copyHint: CopyHint | undefined;
  /** The source, narrowed once to a writable one when it is (else null: the device is read-only). */
  private readonly out: WritableSource | null;
  private closed = false;

  /** A raw device over `source`, of the source's size. */
  constructor(
    private readonly source: RandomAccessSource,
    opts: RawDeviceOptions = {},
  ) {
    this.size = source.size;
    this.logicalSectorSize = opts.logicalSectorSize ?? 512;
    this.out = isWritableSource(source) ? source : null;
    this.readOnly = this.out === null;
    const w = !this.readOnly;
    this.can = { zero: w, fastZero: false, discard: false, extents: false, fua: w };
    this.copyHint = source.copyHint;
  }

  /** Fill `into` with the bytes at `offset` (the range must lie inside the disk). */
  async read(offset: number, into: Uint8Array): Promise<void> {
    this.checkRange('read', offset, into.length);
    await readExact(this.source, offset, into, 'raw image data');
  }

  /**
   * Extents of [offset, offset + length): 'data' where a 64 KiB grain holds a non-zero byte,
   * 'zero' elsewhere. Reads the range (1 MiB at a time); the last extent may run on to the end of
   * its grain.
   */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange('block status', offset, length);
    const out: Extent[] = [];
    const end = Math.min(this.size, Math.ceil((offset + length) / RAW_ZERO_GRAIN) * RAW_ZERO_GRAIN);
    const buf = new Uint8Array(Math.min(SCAN_BYTES, Math.max(1, end - offset)));
    for (let pos = offset; pos < end; ) {
      const n = Math.min(buf.length, end - pos);
      const data = buf.subarray(0, n);
      await readExact(this.source, pos, data, 'raw image data');
      for (let g = 0; g < n; ) {
        // Grains are aligned to the disk, so the first one may be short.
        const gEnd = Math.min(n, Math.floor((pos + g) / RAW_ZERO_GRAIN) * RAW_ZERO_GRAIN + RAW_ZERO_GRAIN - pos);
        const type = isZero(data.subarray(g, gEnd)) ? 'zero' : 'data';
        const last = out[out.length - 1];
        if (last && last.type === type) last.length += gEnd - g;
        else out.push(type === 'data' ? { offset: pos + g, length: gEnd - g, type, fileOffset: pos + g } : { offset: pos + g, length: gEnd - g, type });
        g = gEnd;
      }
      pos += n;
    }
    return out;
  }

  /** Write `data` at `offset` (inside the disk: a raw device does not grow); with `fua`, flushed before this returns. */
  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkRange('write', offset, data.length);
    await this.writable().write(offset, data);
    if (opts.fua) await this.flush();
  }

  /** Writes zeros (a raw file offers no cheaper way here); `fast` fails with ENOTSUP. */
  async writeZeroes(offset: number, length: number, opts: { mayDiscard?: boolean; fast?: boolean } = {}): Promise<void> {
    await this.zero('write zeroes', offset, length, opts.fast === true);
  }

  /** Raw files cannot be deallocated here: the range is written with zeros, so it reads as zeros after. */
  async discard(offset: number, length: number): Promise<void> {
    await this.zero('discard', offset, length, false);
  }

  /** Make completed writes durable (flushes the source). */
  async flush(): Promise<void> {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', 'raw image is closed');
    await this.out?.flush();
  }

  /** Close the source (without a flush); a second call does nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.source.close();
  }

  private writable(): WritableSource {
    if (!this.out) throw new VhdxError('EROFS', 'READ_ONLY', 'raw image is open read-only');
    return this.out;
  }

  private async zero(kind: RequestKind, offset: number, length: number, fast: boolean): Promise<void> {
    this.checkRange(kind, offset, length);
    const out = this.writable();
    if (fast) throw new VhdxError('ENOTSUP', 'BAD_ARGUMENT', 'a raw image cannot zero a range without writing it');
    await writeZeros((at, data) => out.write(at, data), offset, length);
  }

  /** Check a request in full without doing any of it (see BlockDevice.checkRequest). */
  async checkRequest(kind: RequestKind, offset: number, length: number): Promise<void> {
    this.checkRange(kind, offset, length);
    if (kind !== 'read' && kind !== 'block status') this.writable();
  }

  private checkRange(kind: RequestKind, offset: number, length: number): void {
    if (this.closed) throw new VhdxError('EINVAL', 'CLOSED', `${kind} of ${length} bytes at offset ${offset}: the raw image is closed`);
    checkRequestRange(kind, offset, length, this.size);
  }
}
