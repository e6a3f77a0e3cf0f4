/** Byte-array helpers that use native code where the platform has it (Node's Buffer). */

type NativeCompare = { compare(a: Uint8Array, b: Uint8Array): number };
const native = (globalThis as { Buffer?: NativeCompare }).Buffer;

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  if (native) return native.compare(a, b) === 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const ZEROS = new Uint8Array(64 * 1024);

/** True when every byte of `b` is zero. */
export function isZero(b: Uint8Array): boolean {
  for (let at = 0; at < b.length; at += ZEROS.length) {
    const part = b.subarray(at, Math.min(b.length, at + ZEROS.length));
    if (!bytesEqual(part, ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}
