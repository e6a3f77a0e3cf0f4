// Mutations. A format-aware mutation picks one structure instance found in the input (see
// fuzz/formats.js: the structure's field table, where it is, and how its checksum is
// recomputed), sets one of its fields to a value chosen for the field's kind (boundaries, small
// steps from the current value, numbers related to the input's size, other GUIDs found in the
// input), then reseals the structure so the checks behind its checksum are reached. A share of
// mutations are raw (bit flips, random bytes, copies, cuts) and are not resealed: they exercise
// the checksum refusals themselves.

const BOUNDARY = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 0x7fff, 0x8000];
const BIG = [2 ** 20 - 1, 2 ** 20, 2 ** 20 + 1, 2 ** 23, 2 ** 24, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32];

/** Width in bytes and byte order of a numeric field kind, or null. */
function numeric(kind) {
  switch (kind) {
    case 'u8': return { w: 1, le: true };
    case 'u16': return { w: 2, le: true };
    case 'u32': return { w: 4, le: true };
    case 'u64': case 'u64big': return { w: 8, le: true };
    case 'u16be': return { w: 2, le: false };
    case 'u32be': return { w: 4, le: false };
    case 'u64be': case 'u64bigbe': return { w: 8, le: false };
    default: return null;
  }
}

const view = (b) => new DataView(b.buffer, b.byteOffset, b.byteLength);

export function readNum(b, at, w, le) {
  const v = view(b);
  if (w === 1) return BigInt(v.getUint8(at));
  if (w === 2) return BigInt(v.getUint16(at, le));
  if (w === 4) return BigInt(v.getUint32(at, le));
  return v.getBigUint64(at, le);
}

export function writeNum(b, at, w, le, x) {
  const v = view(b);
  const n = BigInt.asUintN(w * 8, BigInt(x));
  if (w === 1) v.setUint8(at, Number(n));
  else if (w === 2) v.setUint16(at, Number(n), le);
  else if (w === 4) v.setUint32(at, Number(n), le);
  else v.setBigUint64(at, n, le);
}

/** A value for a numeric field of `w` bytes holding `cur`, in an input of `size` bytes. */
function numberFor(rng, w, cur, size) {
  const max = (1n << BigInt(w * 8)) - 1n;
  switch (rng.int(7)) {
    case 0: return BigInt(rng.pick(BOUNDARY));
    case 1: return BigInt(rng.pick(BIG));
    case 2: return max - BigInt(rng.int(3));
    case 3: return cur + BigInt(rng.pick([1, -1, 2, -2, 8, -8, 512, -512, 4096, -4096, 1 << 20, -(1 << 20)]));
    case 4: return BigInt(rng.pick([size, size - 1, size + 1, size >>> 1, Math.floor(size / 4096) * 4096, Math.ceil(size / 2 ** 20) * 2 ** 20, size * 2]));
    case 5: return cur * 2n + BigInt(rng.int(2));
    default: return BigInt(rng.int(2 ** 32)) & max;
  }
}

/** Set one field of `inst` (see formats.js) in place; the reseal is the caller's. Returns a description. */
export function mutateField(b, inst, rng, guids) {
  const entries = Object.entries(inst.struct.fields).filter(([, f]) => !f.crc32c && !f.checksum);
  if (entries.length === 0) return null;
  const [name, f] = rng.pick(entries);
  const at = inst.at + f.at;
  const size = f.type.size;
  if (at + size > b.length) return null;
  const num = numeric(f.type.kind);
  if (num) {
    const cur = readNum(b, at, num.w, num.le);
    const x = numberFor(rng, num.w, cur, b.length);
    writeNum(b, at, num.w, num.le, x);
    return `${inst.name}.${name} = ${BigInt.asUintN(num.w * 8, x)}`;
  }
  if ((f.type.kind === 'guid' || f.type.kind === 'uuid') && guids.length && rng.chance(0.5)) {
    b.set(rng.pick(guids), at);
    return `${inst.name}.${name} = another GUID of the input`;
  }
  if (f.type.kind === 'guid' || f.type.kind === 'uuid') {
    if (rng.chance(0.3)) b.fill(0, at, at + size);
    else b[at + rng.int(size)] ^= 1 << rng.int(8);
    return `${inst.name}.${name} changed`;
  }
  // Text, byte strings, signatures: change one byte, or cut the text short.
  const i = rng.int(Math.min(size, 64));
  b[at + i] = rng.chance(0.5) ? 0 : rng.int(256);
  return `${inst.name}.${name} byte ${i}`;
}

/** Raw mutations, not resealed. `stream` inputs may also grow and shrink in the middle. */
export function mutateRaw(b, rng, { stream = false, focus = b.length } = {}) {
  const lim = Math.max(1, Math.min(focus, b.length));
  switch (rng.int(stream ? 8 : 5)) {
    case 0: {
      const at = rng.int(lim);
      b[at] ^= 1 << rng.int(8);
      return { bytes: b, what: `flip bit at ${at}` };
    }
    case 1: {
      const at = rng.int(lim);
      const n = 1 + rng.int(8);
      for (let i = 0; i < n && at + i < b.length; i++) b[at + i] = rng.int(256);
      return { bytes: b, what: `${n} random bytes at ${at}` };
    }
    case 2: {
      const at = rng.int(Math.max(1, lim - 4));
      if (at + 4 <= b.length) writeNum(b, at, 4, rng.chance(0.5), numberFor(rng, 4, 0n, b.length));
      return { bytes: b, what: `u32 at ${at}` };
    }
    case 3: {
      const len = 1 + rng.int(64);
      const from = rng.int(lim);
      const to = rng.int(lim);
      if (from + len <= b.length && to + len <= b.length) b.copyWithin(to, from, from + len);
      return { bytes: b, what: `copy ${len} bytes ${from} -> ${to}` };
    }
    case 4: {
      const cut = rng.chance(0.5) ? b.length - 1 - rng.int(Math.min(b.length, 4096)) : rng.int(b.length + 1);
      return { bytes: b.subarray(0, Math.max(0, cut)), what: `truncate to ${cut}` };
    }
    case 5: {
      const at = rng.int(b.length + 1);
      const n = 1 + rng.int(32);
      const out = new Uint8Array(b.length + n);
      out.set(b.subarray(0, at));
      for (let i = 0; i < n; i++) out[at + i] = rng.chance(0.5) ? 0 : rng.int(256);
      out.set(b.subarray(at), at + n);
      return { bytes: out, what: `insert ${n} bytes at ${at}` };
    }
    case 6: {
      const at = rng.int(b.length + 1);
      const n = 1 + rng.int(32);
      const out = new Uint8Array(Math.max(0, b.length - n));
      out.set(b.subarray(0, at).subarray(0, out.length));
      if (at + n < b.length) out.set(b.subarray(at + n), at);
      return { bytes: out, what: `delete ${n} bytes at ${at}` };
    }
    default: {
      // Duplicate a chunk (a request or option repeated).
      const at = rng.int(b.length);
      const n = Math.min(b.length - at, 1 + rng.int(64));
      const out = new Uint8Array(b.length + n);
      out.set(b.subarray(0, at + n));
      out.set(b.subarray(at), at + n);
      return { bytes: out, what: `duplicate ${n} bytes at ${at}` };
    }
  }
}

/**
 * One to four mutations of a copy of `input`: `structures(bytes)` lists the format's structure
 * instances (formats.js) or is null for byte streams; `rawShare` of them are raw. Returns
 * { bytes, what: [descriptions] }.
 */
export function mutate(input, rng, { structures = null, guids = () => [], rawShare = 0.25, stream = false, maxBytes = Infinity, custom = null } = {}) {
  let b = input.slice();
  const what = [];
  const n = 1 + (rng.chance(0.5) ? 0 : rng.int(4));
  for (let k = 0; k < n; k++) {
    if (custom && rng.chance(0.3)) {
      const r = custom(b, rng);
      if (r) {
        b = r.bytes;
        what.push(r.what);
        continue;
      }
    }
    const insts = structures && !rng.chance(rawShare) ? structures(b) : [];
    if (insts.length) {
      const inst = rng.pick(insts);
      const d = inst.mutate ? inst.mutate(b, rng) : mutateField(b, inst, rng, guids(b));
      if (d) {
        if (!rng.chance(0.1)) inst.reseal?.(b);
        what.push(d + (inst.reseal ? ' (resealed)' : ''));
        continue;
      }
    }
    const r = mutateRaw(b, rng, { stream });
    b = r.bytes;
    what.push(r.what);
  }
  if (b.length > maxBytes) b = b.subarray(0, maxBytes);
  return { bytes: b.slice(), what };
}
