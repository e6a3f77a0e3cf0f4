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
// The CLI is measured; bench/http-client.js gives the VHDX structures' share of info alone.
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

/** The CLI commands measured: `vhdx info` and `vhdx convert -O raw` of a URL. */
function commands() {
  return {
    by: 'the CLI',
    info: (u, allocation) => [process.execPath, [cli, 'info', `--allocation=${allocation}`, u]],
    convert: (u, out, extra = []) => [process.execPath, [cli, 'convert', ...extra, '-O', 'raw', u, out]],
  };
}

/**
 * Run [cmd, args] `n` times, the server's counts reset before each (and `before()`, untimed):
 * { wall (summary), cpu (median user + system seconds: what the load distorts least), sys
 * (median system seconds), requests, bytes } of the last run.
 */
async function measured(server, n, [cmd, args], after = () => {}, before = () => {}) {
  const runs = [];
  let counts = null;
  for (let i = 0; i < n; i++) {
    await server.reset();
    // spawnSync is fine: the server is another process.
    runs.push(timeCmd(cmd, args, { before }));
    counts = await server.stats();
    after();
  }
  const median = (k) => runs.map((r) => r[k]).sort((x, y) => x - y)[Math.floor(runs.length / 2)];
  return { wall: summarise(runs), cpu: median('cpu'), sys: median('sys'), requests: counts.requests, bytes: counts.bytes };
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
      const cmds = commands();
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

/** Write `bytes` into a new file at `path` with dd and delete it: timed, { wall, sys }. */
function ddWrite(path, bytes) {
  const r = timeCmd('dd', ['if=/dev/zero', `of=${path}`, 'bs=16M', `count=${Math.max(1, Math.ceil(bytes / (16 * MiB)))}`, 'status=none']);
  rmSync(path, { force: true });
  return r;
}

/**
 * Wait until the machine has had time to take back freed memory. On a virtual machine that
 * hands freed memory to its host (virtio-balloon free page reporting), page cache for new data
 * costs many times more when the memory has gone back than when it was freed moments ago; the
 * runs after this show that cost, which is the machine's, not the program's.
 */
const idle = () => new Promise((r) => setTimeout(r, 15_000));

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
      let written = 0;
      for (const [name, file, curlRuns] of [[TRIMMED, images.trimmed, 1], [COMPACT, images.compact, runs]]) {
        const url = `${server.base}/${name}`;
        const cmds = commands();
        const size = Number(sh('stat', ['-c', '%s', file]).trim());
        const curl = await measured(server, curlRuns, ['curl', ['-sf', '-o', '/dev/null', url]]);
        // What the output holds (its allocated blocks: the data the convert wrote), then away with it.
        const afterConvert = () => {
          const [blocks, unit] = sh('stat', ['-c', '%b %B', out]).trim().split(' ').map(Number);
          written = blocks * unit;
          clean();
        };
        const conv = await measured(server, runs, cmds.convert(url, out), afterConvert);
        const speedup = curl.wall.median / conv.wall.median;
        await idle();
        const cold = await measured(server, 1, cmds.convert(url, out), afterConvert);
        // -t none: the output written around the page cache (O_DIRECT), as after qemu-img's -t none.
        const direct = await measured(server, runs, cmds.convert(url, out, ['-t', 'none']), afterConvert);
        await idle();
        const directCold = await measured(server, 1, cmds.convert(url, out, ['-t', 'none']), afterConvert);
        const times = (m, c) =>
          `${fmt(m.wall.median)} (${fmt(m.wall.best)}-, median of ${runs}), ${cpuText(m.cpu, m.bytes)} of which system ${m.sys.toFixed(2)} s, ${(curl.wall.median / m.wall.median).toFixed(1)}x faster than the download; ` +
          `after 15 s idle ${fmt(c.wall.median)} (system ${c.sys.toFixed(2)} s), ${(curl.wall.median / c.wall.median).toFixed(1)}x`;
        lines.push(
          `${name} (file ${(size / GiB).toFixed(2)} GiB): curl ${fmt(curl.wall.median)}, ${cpuText(curl.cpu, curl.bytes)}, for ${mib(curl.bytes)}; ` +
            `convert: ${conv.requests} requests, ${mib(conv.bytes)} = ${(conv.bytes / allocated).toFixed(3)}x allocated\n` +
            `    default (-t unsafe): ${times(conv, cold)}\n` +
            `    -t none: ${times(direct, directCold)}`,
        );
        result ??= { conv, curl, speedup, by: cmds.by };
      }
      // The machine's part: writing the output's data alone (dd), after the machine sat idle and
      // again at once, while the memory just freed is still the guest's.
      await idle();
      const ddCold = ddWrite(out, written);
      const ddHot = ddWrite(out, written);
      lines.push(
        `the machine's part: dd writing the ${mib(written)} the output holds, alone: ${fmt(ddCold.wall)} (system ${ddCold.sys.toFixed(2)} s) after 15 s idle, ` +
          `${fmt(ddHot.wall)} (system ${ddHot.sys.toFixed(2)} s) just after as much was freed`,
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
