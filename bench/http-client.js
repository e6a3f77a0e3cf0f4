// Parts of what `vhdx info` and `vhdx convert` do over HTTP, through the library (openUrl), for
// bench/http.js and for measuring by hand. One line of JSON on stdout: the HttpStats of the run.
//   node bench/http-client.js describe URL   open and describe only: the VHDX structures
//   node bench/http-client.js read URL [node|fetch]   the copy a convert makes, into a sink that
//                                            discards the data, through that transport (default
//                                            node): what fetching costs, without writing output
import { availableParallelism } from 'node:os';
import { openUrl, fetchTransport } from '../dist/node.js';
import { describe } from '../dist/driver/info.js';
import { copyDevice } from '../dist/device/copy.js';

const [mode, url, arg] = process.argv.slice(2);
const stats = { requests: 0, bytesReceived: 0, retries: 0 };
if (mode === 'read' && arg !== undefined && arg !== 'node' && arg !== 'fetch') throw new Error(`transport ${arg}?`);
const img = await openUrl(url, { http: { stats, ...(mode === 'read' && arg === 'fetch' ? { transport: fetchTransport() } : {}) } });
try {
  if (mode === 'describe') {
    await describe(img, { allocation: 'auto' });
  } else if (mode === 'read') {
    await copyDevice(img, { write: async () => {}, finish: async () => {} }, { parallel: Math.max(2, availableParallelism()) });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await img.close();
}
process.stdout.write(`${JSON.stringify(stats)}\n`);
