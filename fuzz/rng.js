// A small seeded PRNG (sfc32 seeded through splitmix32), so a campaign with --seed replays.
/** @param {number} seed */
export function makeRng(seed) {
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  const rng = () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) >>> 0;
    return t / 2 ** 32;
  };
  /** @param {number} n  a whole number from 0 to n - 1 */
  rng.int = (n) => Math.floor(rng() * n);
  /**
   * @template T
   * @param {readonly T[]} arr  one element of a non-empty array
   * @returns {T}
   */
  rng.pick = (arr) => arr[Math.floor(rng() * arr.length)];
  /** @param {number} p  true with probability p */
  rng.chance = (p) => rng() < p;
  return rng;
}
