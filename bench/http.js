// Issue 18 item 5: images read over HTTP on loopback, from a range server in its own process
// (bench/http-server.js), which counts the requests and body bytes it answers.
//
// The image: a 64 GiB dynamic VHDX (32 MiB blocks) holding a GPT with one ext4 partition that
// fills the disk, with 2 GiB of files in it (mke2fs -d). Two files of that disk:
//   http-64g.vhdx          as vhdx convert writes it: only the allocated blocks, file ~2.5 GiB;
//   http-64g-trimmed.vhdx  the same blocks in a 64 GiB file whose other blocks were allocated and
//                          then discarded (UNMAPPED, keeping their place), as Hyper-V leaves a
//                          disk whose guest trimmed its free space until the file is compacted.
//
// info:    what `vhdx info URL` reads (open, describe with --allocation=auto, and the contents:
//          partition table, filesystem with its usage from the group descriptors, reclaimable
//          space): requests and bytes, target <= 6 and <= 2 MiB. The VHDX structures alone
//          (open + describe) and --allocation=always (every block bitmap read) are reported beside it.
// convert: `vhdx convert -O raw URL OUT`: bytes transferred against the allocated bytes (target
//          <= 1.1x) and wall time against `curl` downloading the whole file to /dev/null (target:
//          10x faster), for both files.
//
// When the CLI takes URLs (`vhdx info URL` succeeds), the CLI itself is measured; otherwise
// bench/http-client.js does through the library what the commands do, and the output says so.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createFile, openFile } from '../dist/node.js';
import { cli, fmt, have, repoRoot, scratchDir, sh, summarise, timeCmd } from './lib.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const COMPACT = 'http-64g.vhdx';
const TRIMMED = 'http-64g-trimmed.vhdx';

function missingTools() {
  const need = ['sfdisk', 'mke2fs', 'curl'].filter((t) => !have(t));
  return need.length ? `${need.join(', ')} not installed` : null;
}

/** The two image files in scratchDir, made once (about a minute). */
async function makeImages() {
  const compact = join(scratchDir, COMPACT);
  const trimmed = join(scratchDir, TRIMMED);
  if (!existsSync(compact)) {
    const raw = join(scratchDir, 'http-64g.raw');
    const files = join(scratchDir, 'http-files');
    rmSync(files, { recursive: true, force: true });
    mkdirSync(files);
    try {
      sh('truncate', ['-s', '64G', raw]);
      sh('sh', ['-c', `printf 'label: gpt\\n,,L\\n' | sfdisk -q "$0"`, raw]);
      const part = JSON.parse(sh('sfdisk', ['--json', raw])).partitiontable.partitions[0];
      sh('sh', ['-c', 'head -c 1G /dev/urandom > "$0/a.bin" && head -c 1G /dev/urandom > "$0/b.bin"', files]);
      sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', files, '-E', `offset=${part.start * 512}`, raw, `${(part.size * 512) / 1024}k`]);
      sh(process.execPath, [cli, 'convert', '-f', 'raw', '-O', 'vhdx', '-o', 'block_size=32M', raw, `${compact}.tmp`]);
      renameSync(`${compact}.tmp`, compact);
    } finally {
      rmSync(raw, { force: true });
      rmSync(files, { recursive: true, force: true });
    }
  }
  if (!existsSync(trimmed)) {
    await makeTrimmed(compact, `${trimmed}.tmp`);
    renameSync(`${trimmed}.tmp`, trimmed);
  }
  return { compact, trimmed };
}

/**
 * `to`: the disk of `from` with every block given a place in the file in order, the blocks
 * without data discarded afterwards (UNMAPPED keeps the place): a 64 GiB file with `from`'s
 * data, sparse on the host.
 */
async function makeTrimmed(from, to) {
  const src = await openFile(from);
  try {
    const B = src.blockSize;
    const withData = new Set();
    for (const x of await src.blockStatus(0, src.size)) {
      if (x.type === 'data') for (let o = Math.floor(x.offset / B) * B; o < x.offset + x.length; o += B) withData.add(o);
    }
    await createFile(to, { size: src.size, blockSize: B, overwrite: true });
    const dst = await openFile(to, { readOnly: false });
    try {
      const block = new Uint8Array(B);
      const sector = new Uint8Array(512).fill(0xa5);
      for (let o = 0; o < src.size; o += B) {
        if (withData.has(o)) {
          await src.read(o, block);
          await dst.write(o, block);
        } else await dst.write(o, sector);
      }
      await dst.flush();
      for (let o = 0; o < src.size; o += B) if (!withData.has(o)) await dst.discard(o, B);
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

/** The range server on scratchDir, in its own process: { base, stats(), reset(), stop() }. */
async function startServer() {
  const child = spawn(process.execPath, [join(repoRoot, 'bench', 'http-server.js'), scratchDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(JSON.parse(out).port);
    });
    child.on('exit', (code) => reject(new Error(`bench/http-server.js exited ${code}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  // Once more on a network error: the server may close an idle kept-alive connection just as
  // this reuses it (after a long curl run, say).
  const get = async (p) => (await fetch(base + p).catch(() => fetch(base + p))).json();
  return {
    base,
    stats: () => get('/_stats'),
    reset: () => get('/_reset'),
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/**
 * The commands that do `vhdx info` and `vhdx convert -O raw` on a URL: the CLI's when it takes
 * URLs, else bench/http-client.js's, which do the same through the library.
 */
function commands(url) {
  const byCli = spawnSync(process.execPath, [cli, 'info', '--output=json', url], { encoding: 'utf8' }).status === 0;
  const client = join(repoRoot, 'bench', 'http-client.js');
  return byCli
    ? { by: 'the CLI', info: (u, allocation) => [process.execPath, [cli, 'info', `--allocation=${allocation}`, u]], convert: (u, out) => [process.execPath, [cli, 'convert', '-O', 'raw', u, out]] }
    : {
        by: 'bench/http-client.js (this CLI does not take URLs yet: the library doing what the command does)',
        info: (u, allocation) => [process.execPath, [client, 'info', u, allocation]],
        convert: (u, out) => [process.execPath, [client, 'convert', u, out]],
      };
}

/**
 * Run [cmd, args] `n` times, the server's counts reset before each: { wall (summary), cpu (median
 * user + system seconds: what the load distorts least), requests, bytes } of the last run.
 */
async function measured(server, n, [cmd, args], after = () => {}) {
  const runs = [];
  let counts = null;
  for (let i = 0; i < n; i++) {
    await server.reset();
    // spawnSync is fine: the server is another process.
    runs.push(timeCmd(cmd, args));
    counts = await server.stats();
    after();
  }
  const cpu = runs.map((r) => r.cpu).sort((x, y) => x - y)[Math.floor(runs.length / 2)];
  return { wall: summarise(runs), cpu, requests: counts.requests, bytes: counts.bytes };
}

/** CPU seconds and their rate per GiB of `bytes`. */
function cpuText(cpu, bytes) {
  return `${cpu.toFixed(2)} CPU-s (${(cpu / (bytes / GiB)).toFixed(2)}/GiB)`;
}

function mib(bytes) {
  return `${(bytes / MiB).toFixed(2)} MiB`;
}

export const info = {
  async run({ runs = 3 } = {}) {
    const missing = missingTools();
    if (missing) return { name: 'http-info', skipped: missing };
    const { compact } = await makeImages();
    const server = await startServer();
    try {
      const url = `${server.base}/${COMPACT}`;
      const cmds = commands(url);
      const all = await measured(server, runs, cmds.info(url, 'auto'));
      const never = await measured(server, 1, cmds.info(url, 'never'));
      const always = await measured(server, 1, cmds.info(url, 'always'));
      const vhdxOnly = await measured(server, 1, [process.execPath, [join(repoRoot, 'bench', 'http-client.js'), 'describe', url]]);
      const ratio = Math.max(all.requests / 6, all.bytes / (2 * MiB));
      return {
        name: `vhdx info over HTTP (loopback) of a 64 GiB dynamic VHDX, ext4 in a GPT partition, 2 GiB of files (${compact})`,
        peer: `measured with ${cmds.by}; counts from the server`,
        ours:
          `${all.requests} requests, ${mib(all.bytes)}, ${fmt(all.wall.median)} (median of ${runs})\n` +
          `  of which the VHDX structures (open + describe, the BAT scanned): ${vhdxOnly.requests} requests, ${mib(vhdxOnly.bytes)}; ` +
          `the rest reads the GPT (both copies) and the ext4 superblock and group descriptors, no block bitmap\n` +
          `  with --allocation=never (no BAT scan, no reclaimable space): ${never.requests} requests, ${mib(never.bytes)}\n` +
          `  with --allocation=always (the BAT, every block bitmap, allocated blocks read for zeros): ${always.requests} requests, ${mib(always.bytes)}`,
        ratio,
        target: '<= 6 requests and <= 2 MiB (ratio: the larger of requests/6 and bytes/2 MiB, <= 1)',
        ok: all.requests <= 6 && all.bytes <= 2 * MiB,
      };
    } finally {
      await server.stop();
    }
  },
};

export const convert = {
  async run({ runs = 3 } = {}) {
    const missing = missingTools();
    if (missing) return { name: 'http-convert', skipped: missing };
    const images = await makeImages();
    const allocated = JSON.parse(sh(process.execPath, [cli, 'info', '--output=json', '--allocation=always', images.compact])).allocation.bytesByState.fullyPresent;
    const server = await startServer();
    const out = join(scratchDir, 'http-out.raw');
    const clean = () => rmSync(out, { force: true });
    try {
      const lines = [];
      let result = null;
      let curlRate = 0;
      let written = 0;
      for (const [name, file, curlRuns] of [[TRIMMED, images.trimmed, 1], [COMPACT, images.compact, runs]]) {
        const url = `${server.base}/${name}`;
        const cmds = commands(url);
        const size = Number(sh('stat', ['-c', '%s', file]).trim());
        const curl = await measured(server, curlRuns, ['curl', ['-sf', '-o', '/dev/null', url]]);
        // What the output holds (its allocated blocks: the data the convert wrote), then away with it.
        const conv = await measured(server, runs, cmds.convert(url, out), () => {
          const [blocks, unit] = sh('stat', ['-c', '%b %B', out]).trim().split(' ').map(Number);
          written = blocks * unit;
          clean();
        });
        const speedup = curl.wall.median / conv.wall.median;
        lines.push(
          `${name} (file ${(size / GiB).toFixed(2)} GiB): curl ${fmt(curl.wall.median)}, ${cpuText(curl.cpu, curl.bytes)}, for ${mib(curl.bytes)}; ` +
            `convert ${fmt(conv.wall.median)} (${fmt(conv.wall.best)}-, median of ${runs}), ${cpuText(conv.cpu, conv.bytes)}, ${conv.requests} requests, ${mib(conv.bytes)} = ${(conv.bytes / allocated).toFixed(3)}x allocated; ` +
            `${speedup.toFixed(1)}x faster than the download`,
        );
        if (name === COMPACT) curlRate = curl.bytes / curl.wall.median;
        result ??= { conv, curl, speedup, by: cmds.by };
      }
      // The floor: the convert must fetch the allocated bytes (at best at curl's rate) and write
      // the raw output's data, here measured alone as dd writing that many bytes into the folder.
      const dd = timeCmd('dd', ['if=/dev/zero', `of=${out}`, 'bs=16M', `count=${Math.ceil(written / (16 * MiB))}`, 'status=none']);
      clean();
      lines.push(
        `floor: fetching ${mib(allocated)} at curl's rate on the compact file ${fmt(allocated / curlRate)}; writing the ${mib(written)} of data the output holds, alone (dd) ${fmt(dd.wall)}, ${cpuText(dd.cpu, written)}`,
      );
      const bytesRatio = result.conv.bytes / allocated;
      return {
        name: `vhdx convert -O raw over HTTP (loopback) of a 64 GiB dynamic VHDX holding ${mib(allocated)} of allocated blocks`,
        peer: `curl downloading the whole file to /dev/null; convert measured with ${result.by}, into ${scratchDir}`,
        ours: lines.join('\n  '),
        ratio: result.conv.wall.median / result.curl.wall.median,
        target: `<= 0.1 of the download's time for the trimmed 64 GiB file, and <= 1.1x the allocated bytes (${bytesRatio.toFixed(3)}x)`,
        ok: result.speedup >= 10 && bytesRatio <= 1.1,
      };
    } finally {
      clean();
      await server.stop();
    }
  },
};
