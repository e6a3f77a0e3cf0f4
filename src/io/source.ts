/**
 * Random-access byte sources: the only thing the format code needs from storage.
 * Backends: Node file (./node-file.ts, Node only), memory, Blob (browsers, read-only).
 */
import { VhdxError } from '../errors.js';
import { isZero } from '../codec/bytes.js';

/**
 * How a long copy reads a source best: bytes per read and reads in flight. A source says so when
 * the copy engine's defaults (4 MiB, a few at once: right for files) would leave it idle, as
 * each request over HTTP costs a round trip and its own overhead.
 */
export interface CopyHint {
  /** Bytes per read. */
  chunkSize: number;
  /** Reads in flight at once. */
  parallel: number;
}

/** Random-access bytes an image is read from, and written to when the optional methods are there. */
export interface RandomAccessSource {
  /** Current size in bytes. */
  readonly size: number;
  /** True when the source refuses writes. */
  readonly readOnly: boolean;
  /** How a long copy reads it best, when not as a file (see CopyHint). */
  readonly copyHint?: CopyHint | undefined;
  /**
   * Read up to `into.length` bytes at `offset`; resolves to the count read, short only at the end
   * of the source. Many reads may be in flight at once.
   */
  read(offset: number, into: Uint8Array): Promise<number>;
  /** Write `data` at `offset`, growing the source when it ends past its size. */
  write?(offset: number, data: Uint8Array): Promise<void>;
  /** Make every completed write and truncate durable. */
  flush?(): Promise<void>;
  /** Set the size in bytes, cutting or extending with zeros. */
  truncate?(size: number): Promise<void>;
  /** Release what the source holds (a file and its lock, connections); a second call does nothing. */
  close(): Promise<void>;
}

/**
 * A source that can be changed: what a writable image, a log replay, a repair and a copy's
 * destination write through. Narrow a source once, where it comes in (`writableSource`); code
 * that holds a WritableSource calls its methods without checking again.
 */
export interface WritableSource extends RandomAccessSource {
  /** Write `data` at `offset`, growing the source when it ends past its size. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make every completed write and truncate durable. */
  flush(): Promise<void>;
  /** Set the size in bytes, cutting or extending with zeros. */
  truncate(size: number): Promise<void>;
}

/** True when `src` can be written, flushed and truncated, and is not open read-only. */
export function isWritableSource(src: RandomAccessSource): src is WritableSource {
  return !src.readOnly && typeof src.write === 'function' && typeof src.flush === 'function' && typeof src.truncate === 'function';
}

/** `src` as a WritableSource, or EROFS / READ_ONLY with `message` (what needed it). */
export function writableSource(src: RandomAccessSource, message: string): WritableSource {
  if (!isWritableSource(src)) throw new VhdxError('EROFS', 'READ_ONLY', message);
  return src;
}

/** Read exactly `into.length` bytes or fail with SHORT_READ naming what was being read. */
export async function readExact(src: RandomAccessSource, offset: number, into: Uint8Array, what: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await src.read(offset + done, into.subarray(done));
    if (n <= 0) {
      throw new VhdxError('EIO', 'SHORT_READ', `short read of ${what}: ${done} of ${into.length} bytes`, {
        structure: what,
        offset,
      });
    }
    done += n;
  }
}

/** Allocate and read `length` bytes exactly. */
export async function readBytes(src: RandomAccessSource, offset: number, length: number, what: string): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await readExact(src, offset, b, what);
  return b;
}

const ZERO_MIB = new Uint8Array(1024 * 1024);

/** Write zeros over [offset, offset + length) in 1 MiB pieces, through `write`. */
export async function writeZeros(write: (offset: number, data: Uint8Array) => Promise<void>, offset: number, length: number): Promise<void> {
  for (let done = 0; done < length; done += ZERO_MIB.length) {
    await write(offset + done, ZERO_MIB.subarray(0, Math.min(ZERO_MIB.length, length - done)));
  }
}

/**
 * Make [offset, offset + length) of `file`, which must lie inside it, read as zeros, writing only
 * the 1 MiB pieces that are not zeros already: a replay or repair then neither rewrites zeros nor
 * fills a sparse file's holes.
 */
export async function zeroInPlace(file: RandomAccessSource, offset: number, length: number): Promise<void> {
  if (!file.write) throw new VhdxError('EROFS', 'READ_ONLY', 'the source is read-only');
  if (offset < 0 || length < 0 || offset + length > file.size) {
    throw new VhdxError('EINVAL', 'OUT_OF_RANGE', `zeroing ${length} bytes at ${offset} reaches past the end of the ${file.size}-byte source`);
  }
  const piece = new Uint8Array(ZERO_MIB.length);
  for (let done = 0; done < length; done += piece.length) {
    const n = Math.min(piece.length, length - done);
    const view = piece.subarray(0, n);
    await readExact(file, offset + done, view, 'bytes to zero');
    if (!isZero(view)) await file.write(offset + done, ZERO_MIB.subarray(0, n));
  }
}

/** A source over bytes in memory. Writes past the end grow it. */
export class MemorySource implements RandomAccessSource {
  private buf: Uint8Array;
  private length: number;
  /** True when opened with `readOnly`: write and truncate fail with EROFS. */
  readonly readOnly: boolean;

  /** A source holding `bytes` (used in place, not copied, until a write grows it); empty by default. */
  constructor(bytes: Uint8Array = new Uint8Array(0), opts: { readOnly?: boolean } = {}) {
    this.buf = bytes;
    this.length = bytes.length;
    this.readOnly = opts.readOnly ?? false;
  }

  /** Current size in bytes. */
  get size(): number {
    return this.length;
  }

  /** The current content (a view, not a copy). */
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }

  /** Copy the bytes at `offset` into `into`; resolves to the count copied (short at the end). */
  async read(offset: number, into: Uint8Array): Promise<number> {
    if (offset >= this.length) return 0;
    const n = Math.min(into.length, this.length - offset);
    into.set(this.buf.subarray(offset, offset + n));
    return n;
  }

  /** Copy `data` in at `offset`, growing the source (zeros between) when it ends past the size. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'memory source is read-only');
    this.ensure(offset + data.length);
    this.buf.set(data, offset);
  }

  /** Nothing to do: memory holds every write already. */
  async flush(): Promise<void> {}

  /** Set the size in bytes; bytes past a cut read as zeros if the source grows again. */
  async truncate(size: number): Promise<void> {
    if (this.readOnly) throw new VhdxError('EROFS', 'READ_ONLY', 'memory source is read-only');
    this.ensure(size);
    if (size < this.length) this.buf.fill(0, size, this.length);
    this.length = size;
  }

  /** Nothing to release; the bytes stay readable through {@link MemorySource.bytes}. */
  async close(): Promise<void> {}

  private ensure(end: number): void {
    if (end > this.buf.length) {
      const grown = new Uint8Array(Math.max(end, Math.min(this.buf.length * 2, end + 64 * 1024 * 1024)));
      grown.set(this.buf.subarray(0, this.length));
      this.buf = grown;
    }
    if (end > this.length) this.length = end;
  }
}

/** A read-only source over a Blob or File (browsers, and Node's Blob). */
export class BlobSource implements RandomAccessSource {
  /** Always true: a Blob cannot be written. */
  readonly readOnly = true;
  /** A source reading `blob` through `slice()`. */
  constructor(private readonly blob: Blob) {}
  /** Size of the Blob in bytes. */
  get size(): number {
    return this.blob.size;
  }
  /** Read the bytes at `offset` into `into`; resolves to the count read (short at the end). */
  async read(offset: number, into: Uint8Array): Promise<number> {
    if (offset >= this.blob.size) return 0;
    const end = Math.min(this.blob.size, offset + into.length);
    const ab = await this.blob.slice(offset, end).arrayBuffer();
    into.set(new Uint8Array(ab));
    return ab.byteLength;
  }
  /** Nothing to release. */
  async close(): Promise<void> {}
}
