/**
 * Direct I/O (O_DIRECT) for NodeFileSource: the kernel moves data between the device and the
 * caller's memory without the page cache, and so requires the memory address, the file offset
 * and the length to be multiples of the device's block size. JavaScript cannot choose where an
 * ArrayBuffer lives, but a WebAssembly.Memory is allocated in whole pages, so its buffer starts
 * page-aligned: requests are bounced through slots of one such memory, widened to DIRECT_ALIGN.
 * A write that does not cover whole aligned blocks reads them first (read-modify-write), alone:
 * it waits for the writes in flight and holds the others back meanwhile. Memory is bounded by
 * the slots (SLOTS × SLOT_BYTES), whatever the requests' sizes.
 */
import type { FdFile } from './node-file.js';

// The one WebAssembly API used here (the project's TypeScript libraries do not declare it).
declare const WebAssembly: { Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer } };

/** Alignment of addresses, offsets and lengths: 4 KiB suits devices of 512- and 4096-byte blocks. */
export const DIRECT_ALIGN = 4096;
const SLOT_BYTES = 4 * 1024 * 1024;
const SLOTS = 4;
const WASM_PAGE = 64 * 1024;

export class DirectIo {
  private readonly memory: ArrayBuffer;
  private readonly free: number[] = [];
  private readonly slotWaiters: (() => void)[] = [];
  /** Aligned writes in flight, and the read-modify-write that holds them back. */
  private writing = 0;
  private idle: (() => void) | null = null;
  private exclusive: Promise<void> | null = null;
  private rmwChain: Promise<void> = Promise.resolve();
  /** A write widened past the file's end grew it beyond its size: trimmed by `settle`. */
  overhang = false;

  constructor(private readonly file: FdFile) {
    this.memory = new WebAssembly.Memory({ initial: (SLOTS * SLOT_BYTES) / WASM_PAGE }).buffer;
    for (let i = 0; i < SLOTS; i++) this.free.push(i);
  }

  /** Read into `into` from `offset`: bytes read, fewer only at the end of the file. */
  async read(offset: number, into: Uint8Array): Promise<number> {
    let done = 0;
    while (done < into.length) {
      const pos = offset + done;
      const start = alignDown(pos);
      const end = Math.min(alignUp(offset + into.length), start + SLOT_BYTES);
      const n = await this.withSlot(async (slot) => {
        const got = await this.file.read(slot.subarray(0, end - start), start);
        const useful = Math.max(0, Math.min(got, offset + into.length - start) - (pos - start));
        into.set(slot.subarray(pos - start, pos - start + useful), done);
        return useful;
      });
      done += n;
      if (pos + n < Math.min(end, offset + into.length)) break; // end of file
    }
    return done;
  }

  /** Write all of `data` at `offset`. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    for (let done = 0; done < data.length; ) {
      const pos = offset + done;
      const start = alignDown(pos);
      const pieceEnd = Math.min(offset + data.length, start + SLOT_BYTES);
      const end = alignUp(pieceEnd);
      const part = data.subarray(done, done + pieceEnd - pos);
      if (pos === start && pieceEnd === end) await this.alignedWrite(start, part);
      else await this.readModifyWrite(start, end, pos, part);
      done += part.length;
    }
  }

  private async alignedWrite(start: number, part: Uint8Array): Promise<void> {
    while (this.exclusive) await this.exclusive;
    this.writing++;
    try {
      await this.withSlot(async (slot) => {
        const view = slot.subarray(0, part.length);
        view.set(part);
        await this.file.writeAll(view, start);
      });
    } finally {
      if (--this.writing === 0) this.idle?.();
    }
  }

  /** [start, end) aligned, holding `part` at `pos`: read whole, patched, written whole, alone. */
  private readModifyWrite(start: number, end: number, pos: number, part: Uint8Array): Promise<void> {
    const run = this.rmwChain.then(async () => {
      let release!: () => void;
      this.exclusive = new Promise((r) => (release = r));
      try {
        if (this.writing > 0) await new Promise<void>((r) => (this.idle = r));
        this.idle = null;
        await this.withSlot(async (slot) => {
          const view = slot.subarray(0, end - start);
          const got = await this.file.read(view, start);
          view.fill(0, got);
          view.set(part, pos - start);
          await this.file.writeAll(view, start);
          if (got < end - start) this.overhang = true;
        });
      } finally {
        this.exclusive = null;
        release();
      }
    });
    this.rmwChain = run.catch(() => undefined);
    return run;
  }

  private async withSlot<T>(work: (slot: Uint8Array) => Promise<T>): Promise<T> {
    while (this.free.length === 0) await new Promise<void>((r) => this.slotWaiters.push(r));
    const i = this.free.pop()!;
    try {
      return await work(new Uint8Array(this.memory, i * SLOT_BYTES, SLOT_BYTES));
    } finally {
      this.free.push(i);
      this.slotWaiters.shift()?.();
    }
  }
}

function alignDown(n: number): number {
  return Math.floor(n / DIRECT_ALIGN) * DIRECT_ALIGN;
}

function alignUp(n: number): number {
  return Math.ceil(n / DIRECT_ALIGN) * DIRECT_ALIGN;
}
