// What `vhdx info` and `vhdx convert -O raw` do with an image, done over HTTP through the library
// (openUrl), for bench/http.js where the CLI does not take URLs. One line of JSON on stdout: the
// HttpStats of the run.
//   node bench/http-client.js info URL [auto|never]   open, describe, and inspect the contents, as
//                                            info does with that --allocation (default auto)
//   node bench/http-client.js describe URL   open and describe only: the VHDX structures
//   node bench/http-client.js convert URL OUT   copy the disk into a new sparse raw file, as convert does
//   node bench/http-client.js read URL [node|fetch]   the same copy into a sink that discards the
//                                            data, through that transport (default node): what
//                                            fetching costs, without writing the output
import { availableParallelism } from 'node:os';
import { openUrl, fetchTransport } from '../dist/node.js';
import { describe } from '../dist/driver/info.js';
import { describeContents } from '../dist/inspect/contents.js';
import { AUTO_ZERO_SCAN_BYTES } from '../dist/cli/info.js';
import { copyDevice, fileSink } from '../dist/device/copy.js';
import { NodeFileSource } from '../dist/io/node-file.js';

const [mode, url, arg] = process.argv.slice(2);
const stats = { requests: 0, bytesReceived: 0, retries: 0 };
if (mode === 'read' && arg !== undefined && arg !== 'node' && arg !== 'fetch') throw new Error(`transport ${arg}?`);
const img = await openUrl(url, { http: { stats, ...(mode === 'read' && arg === 'fetch' ? { transport: fetchTransport() } : {}) } });
try {
  if (mode === 'info') {
    // infoCommand: describe(), then contentsOf() (src/cli/info.ts), for --allocation=auto or never.
    const allocation = arg ?? 'auto';
    if (allocation !== 'auto' && allocation !== 'never') throw new Error(`--allocation ${allocation}?`);
    const info = await describe(img, { allocation });
    const scanned = info.allocation;
    const contents = await describeContents(img, {
      ...(scanned !== null ? { blockSize: info.blockSize } : {}),
      scanZeros: allocation === 'auto' && scanned !== null && (scanned.bytesByState.fullyPresent ?? 0) <= AUTO_ZERO_SCAN_BYTES,
      usage: 'counters',
    });
    if (contents.partitions.length === 0) throw new Error('no partitions found: not the image the benchmark made');
  } else if (mode === 'describe') {
    await describe(img, { allocation: 'auto' });
  } else if (mode === 'convert') {
    // toRaw() in src/cli/convert.ts: the default -t unsafe (no flush), COPY_PARALLEL copies.
    const dst = await NodeFileSource.open(arg, { readOnly: false, create: true, truncate: true, cache: 'unsafe' });
    await copyDevice(img, fileSink(dst), { parallel: Math.max(2, availableParallelism()) });
    await dst.close();
  } else if (mode === 'read') {
    await copyDevice(img, { write: async () => {}, finish: async () => {} }, { parallel: Math.max(2, availableParallelism()) });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await img.close();
}
process.stdout.write(`${JSON.stringify(stats)}\n`);
