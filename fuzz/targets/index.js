// The fuzz targets: name -> what it exercises. Each module exports a target object:
//   setup() -> ctx, seeds(ctx) -> [{ name, bytes }], run(bytes, ctx) -> outcome (see fuzz/rules.js),
//   optional structures(bytes) / guids(bytes) for format-aware mutation (fuzz/formats.js),
//   mutate(bytes, rng) for a target's own mutations, stream: true for byte streams, timeMs, maxBytes.
export const TARGETS = {
  vhdx: 'VHDX: check, open, describe, allocation scan, block status, read everything (unaligned stride too)',
  vhd: 'VHD (fixed, dynamic, differencing): check, open, block status, read everything',
  disk: 'raw disk: MBR/EBR or GPT, ext4 and NTFS inside: partitions, inspection, used runs',
  log: 'VHDX log replay in memory and in place: twice the same bytes, same content, check agrees',
  write: 'VHDX write path: open writable, zeros and a pattern across the disk, flush, reopen, verify, check',
  nbd: 'NBD server: handshake and transmission byte streams on a loopback socket, beside a normal client',
  http: 'HTTP range source: malformed statuses, Content-Range, lengths and bodies from the server',
  'http-wire': 'Node HTTP/1.1 transport: raw answer bytes from a loopback server, cut into writes, ended or reset; HttpSource and the transport alone',
};

export async function loadTarget(name) {
  if (!TARGETS[name]) throw new Error(`no fuzz target ${name}`);
  return (await import(`./${name}.js`)).default;
}
