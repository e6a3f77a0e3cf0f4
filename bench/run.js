// Runs every benchmark, each beside its peer tool in the same run, and prints ratios.
// Usage: npm run bench [-- convert|info|read|convert-vhdx|write-alloc|write|chain-read|child-write|nbd-randread|nbd-seqread|nbd-copy|nbd-randwrite|inspect-info|vhd-fixed|vhd-dynamic|compact|http-info|http-convert|resize]
import { availableParallelism } from 'node:os';
import * as convert from './convert-raw.js';
import * as info from './info-64t.js';
import * as read from './random-read.js';
import * as convertVhdx from './convert-vhdx.js';
import * as writeAlloc from './write-alloc.js';
import * as write from './random-write.js';
import * as chainRead from './chain-read.js';
import * as childWrite from './child-write.js';
import * as nbdRandread from './nbd-randread.js';
import * as nbdSeqread from './nbd-seqread.js';
import * as nbdCopy from './nbd-copy.js';
import * as nbdRandwrite from './nbd-randwrite.js';
import * as inspectInfo from './inspect-info.js';
import { runFixed as vhdFixed, runDynamic as vhdDynamic } from './vhd.js';
import * as compact from './compact.js';
import * as http from './http.js';
import * as resize from './resize.js';

// The in-process library benchmarks get the thread pool the CLI uses (see sizeThreadPool in src/cli/main.ts).
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(2, availableParallelism()));

const all = { convert, info, read, 'convert-vhdx': convertVhdx, 'write-alloc': writeAlloc, write, 'chain-read': chainRead, 'child-write': childWrite, 'nbd-randread': nbdRandread, 'nbd-seqread': nbdSeqread, 'nbd-copy': nbdCopy, 'nbd-randwrite': nbdRandwrite, 'inspect-info': inspectInfo, 'vhd-fixed': { run: vhdFixed }, 'vhd-dynamic': { run: vhdDynamic }, compact, 'http-info': http.info, 'http-convert': http.convert, resize };
const pick = process.argv.slice(2);
for (const [key, b] of Object.entries(all)) {
  if (pick.length && !pick.includes(key)) continue;
  const r = await b.run();
  if (r.skipped) {
    console.log(`${r.name}: skipped (${r.skipped})`);
    continue;
  }
  console.log(`${r.name}\n  ${r.peer}\n  ${r.ours}\n  ratio ${r.ratio.toFixed(3)} (target ${r.target})${r.target === 'report' ? '' : r.ok ? '  MET' : '  NOT MET'}`);
}
