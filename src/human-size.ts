/** Byte counts as people read them, the same in the CLI and the web page. Browser-safe. */

const UNITS = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1073741824 -> "1 GiB", 1536 -> "1.5 KiB" (1024-based, up to two decimals, as qemu-img prints sizes). */
export function humanSize(n: number): string {
  let u = 0;
  let v = n;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  if (u === 0) return `${n} bytes`;
  const s = v >= 100 || Number.isInteger(v) ? String(Math.round(v * 100) / 100) : v.toFixed(2).replace(/0+$/, '').replace(/\.$/, '');
  return `${s} ${UNITS[u]}`;
}
