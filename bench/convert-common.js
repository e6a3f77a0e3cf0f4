// Shared by the two convert benchmarks: alternating rounds of several commands, and the reference
// points that say what the ratio is made of (a plain Node copy loop, a bare Node start).
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { diskDir, fmt, fsType, timeCmd } from './lib.js';

/**
 * Rounds per benchmark: VHDX_BENCH_RUNS, default 12, rounded up to a multiple of the number of
 * commands rotated (so each command follows every other equally often). On the project's VM one
 * 2 GiB copy takes from about 0.5 s to several seconds for every program alike (qemu-img, vhdx,
 * the plain loop): its time is mostly the kernel finding 2 GiB of pages for the new file, and
 * whether those are pages the host still backs (recently freed) or ones it reclaimed (free page
 * reporting) changes from run to run.
 */
export function benchRuns(runs, commands) {
  const n = runs ?? Number(process.env.VHDX_BENCH_RUNS ?? 12);
  return Math.ceil(n / commands) * commands;
}

/**
 * A plain Node copy of `length` bytes at `srcOffset` in `src` to a new file `dst`: 4 MiB chunks,
 * two reads and writes in flight through the thread pool, nothing else. What the issue calls
 * "a plain Node read/write loop over the same bytes": the floor for a Node program, start-up
 * included.
 */
export function plainCopyArgs(src, srcOffset, length, dst) {
  const script = `
    const fs = require('node:fs');
    const [src, off, len, dst] = process.argv.slice(1);
    const chunk = 4 << 20, size = Number(len), base = Number(off);
    const fd = fs.openSync(src, 'r'), out = fs.openSync(dst, 'w');
    let next = 0, active = 0;
    for (let w = 0; w < 2; w++) {
      const buf = Buffer.allocUnsafe(chunk);
      active++;
      const step = () => {
        if (next >= size) { if (--active === 0) { fs.closeSync(out); fs.closeSync(fd); } return; }
        const o = next, n = Math.min(chunk, size - o);
        next += n;
        fs.read(fd, buf, 0, n, base + o, (e) => {
          if (e) throw e;
          fs.write(out, buf, 0, n, o, (e2) => { if (e2) throw e2; step(); });
        });
      };
      step();
    }`;
  return [process.execPath, ['-e', script, src, String(srcOffset), String(length), dst]];
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

/**
 * Run `cmds` ({ label: [cmd, args] }) in alternating rounds, `dst` removed before each. Returns
 * per label the median wall time, the spread, and the median of its per-round ratios to `base`
 * (pairing the rounds cancels the machine's slow drifts). Each round starts one command later
 * than the last, so every command follows every other equally often: a 2 GiB copy leaves the
 * kernel's free pages in a state the next copy inherits (in four trials of 8 rounds in a fixed
 * order, the Node command run right after qemu-img was the slower of the two Node commands three
 * times), and a fixed order would charge that to one of them.
 */
export function rounds(n, cmds, dst, base) {
  const labels = Object.keys(cmds);
  const walls = Object.fromEntries(labels.map((k) => [k, []]));
  const clean = () => rmSync(dst, { force: true });
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < labels.length; j++) {
      const k = labels[(i + j) % labels.length];
      const [cmd, args] = cmds[k];
      walls[k].push(timeCmd(cmd, args, { before: clean }).wall);
    }
  }
  clean();
  const out = {};
  for (const [k, w] of Object.entries(walls)) {
    out[k] = {
      median: median(w),
      min: Math.min(...w),
      max: Math.max(...w),
      pairedRatio: median(w.map((x, i) => x / walls[base][i])),
    };
  }
  return out;
}

export function spread(s) {
  return `${fmt(s.median)} (${fmt(s.min)}-${fmt(s.max)})`;
}

/** A line saying why Node starts slowly here, when it does. */
export function startNote(nodeStart) {
  const certs = process.env.NODE_EXTRA_CA_CERTS
    ? `; NODE_EXTRA_CA_CERTS is set, so every Node process here parses CA certificates before any code runs (~40 ms on the project's VM)`
    : '';
  return `a bare Node start (node -e 0) takes ${spread(nodeStart)}${certs}`;
}

/**
 * The same conversion written into a disk-backed folder, where flushing the new file costs real
 * I/O: qemu-img and vhdx at the same cache mode, the default (qemu-img's unsafe: no flush, which
 * is vhdx's default too) and writeback (one flush at the end), in alternating rounds. `qemuArgs`
 * and `vhdxArgs` map an output path to the commands' arguments. Returns the lines to print and
 * the unsafe ratio.
 */
export function diskRounds(n, qemuArgs, vhdxArgs, ext) {
  const out = join(diskDir, `out.${ext}`);
  const cmds = {
    qemuUnsafe: ['qemu-img', qemuArgs(['-t', 'unsafe'], out)],
    vhdxUnsafe: [process.execPath, vhdxArgs([], out)],
    qemuWriteback: ['qemu-img', qemuArgs(['-t', 'writeback'], out)],
    vhdxWriteback: [process.execPath, vhdxArgs(['-t', 'writeback'], out)],
  };
  const r = rounds(benchRuns(n, Object.keys(cmds).length), cmds, out, 'qemuUnsafe');
  const ratio = (a, b) => (r[a].median / r[b].median).toFixed(3);
  return {
    ratio: r.vhdxUnsafe.median / r.qemuUnsafe.median,
    text:
      `  into ${diskDir} (${fsType(diskDir)}, disk-backed), at the same cache mode:\n` +
      `    default (unsafe, no flush): qemu-img -t unsafe ${spread(r.qemuUnsafe)}, vhdx ${spread(r.vhdxUnsafe)}, ratio ${ratio('vhdxUnsafe', 'qemuUnsafe')}\n` +
      `    -t writeback (one flush at the end): qemu-img ${spread(r.qemuWriteback)}, vhdx ${spread(r.vhdxWriteback)}, ratio ${ratio('vhdxWriteback', 'qemuWriteback')}`,
  };
}
