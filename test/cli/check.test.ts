// `vhdx check [-r leaks|all]`: exit codes as qemu-img check (0 clean, 1 incomplete, 2 corrupt,
// 3 leaks, 63 not supported), human and JSON output, repairs on files, and the verdicts compared
// with qemu-img check on our images, qemu-made ones and the corpus. The two dirty corpus images
// are copied, replayed by `vhdx check -r all`, then read by qemu-img to their recorded SHA-256.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  appendFileSync,
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { openFile, type Finding, type RepairAction } from '../../src/node.js';
import { main } from '../../src/cli/main.js';
import { buildImage, putBatEntry, HEADER_AT, REGION_TABLE_AT, PayloadState, MiB } from '../helpers/build.js';
import { corpusDir, corpusFile, corpusManifest, needTool, run, runCli } from '../helpers/env.js';
import { lockRecords } from '../helpers/tools.js';

// Scratch files on tmpfs when there is one.
const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'vhdx-check-'));
after(() => rmSync(dir, { recursive: true, force: true }));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const noQemu = needTool('qemu-img');
const noQemuIo = needTool('qemu-img', 'qemu-io');
const manifest = corpusManifest();
const noCorpus = manifest ? false : `corpus not present at ${join(corpusDir, 'manifest.json')}`;
const clean = (manifest ?? []).filter((e) => !e.dirtyLog);
const dirty = (manifest ?? []).filter((e) => e.dirtyLog);

let n = 0;
/** Write `bytes` to a fresh scratch file and return its path. */
function file(bytes: Uint8Array, name = 'img'): string {
  const p = join(dir, `${name}-${n++}.vhdx`);
  writeFileSync(p, bytes);
  return p;
}

/** `vhdx check ARGS`, run in this process (fast); `{ status, stdout, stderr }`. */
async function check(...args: string[]) {
  let stdout = '';
  let stderr = '';
  const status = await main(['check', ...args], { out: (t) => (stdout += t), err: (t) => (stderr += t) });
  return { status, stdout, stderr };
}

async function checkJson(...args: string[]) {
  const r = await check('--output=json', ...args);
  return { status: r.status, json: JSON.parse(r.stdout), stderr: r.stderr };
}

/** qemu-img check's exit status (0 clean, 1 could not check/open, 2 corrupt, 3 leaks). */
function qemuCheck(path: string): number | null {
  const r = spawnSync('qemu-img', ['check', '-f', 'vhdx', path], { encoding: 'utf8' });
  if (r.status !== 0) qemuCheck.last = `${r.stdout}${r.stderr}`;
  return r.status;
}
/** The output of the last qemu-img check that did not exit 0. */
qemuCheck.last = '';

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/**
 * SHA-256 of a sparse raw file, reading only its data: `qemu-img map` lists the data extents
 * (SEEK_DATA), and the holes are hashed from a buffer of zeros.
 */
function sparseSha256(path: string): string {
  const extents = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'raw', path]));
  const h = createHash('sha256');
  const zeros = new Uint8Array(16 * MiB);
  const fd = openSync(path, 'r');
  try {
    for (const e of extents) {
      for (let done = 0; done < e.length; ) {
        const len = Math.min(zeros.length, e.length - done);
        if (e.data) {
          const b = new Uint8Array(len);
          assert.equal(readSync(fd, b, 0, len, e.start + done), len);
          h.update(b);
        } else h.update(zeros.subarray(0, len));
        done += len;
      }
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** A sparse raw file of what we read from `vhdxPath` (opened read-only: a dirty log is replayed in memory). */
async function ourRaw(vhdxPath: string, rawPath: string) {
  const img = await openFile(vhdxPath);
  const fd = openSync(rawPath, 'w');
  try {
    ftruncateSync(fd, img.size);
    for (const x of await img.blockStatus(0, img.size)) {
      if (x.type !== 'data') continue;
      const b = new Uint8Array(x.length);
      await img.read(x.offset, b);
      writeSync(fd, b, 0, b.length, x.offset);
    }
  } finally {
    closeSync(fd);
    await img.close();
  }
}

/** Virtual sizes up to this are hashed whole (about 0.8 s per GiB); VHDX_FULL_HASH=1 lifts it. */
const FULL_HASH_LIMIT = process.env.VHDX_FULL_HASH === '1' ? Infinity : 2 * 1024 * MiB;

for (const e of dirty) {
  test(`corpus: ${e.file}: check sees a dirty log, -r all replays it, qemu-img reads it to its rawSha256`, { skip: noCorpus || noQemu }, async () => {
    const cached = await corpusFile(e.file);
    const p = join(dir, e.file.replace(/\.gz$/, ''));
    copyFileSync(cached, p); // the cached copy is never written
    const pristine = sha256(p);

    // Space inside the file that no entry names (a crashed qemu session's blocks: iotest 070
    // has 4 MiB of it) is leaked, and stays so: reclaiming it would move blocks.
    const insideLeaks = (findings: Finding[]) => findings.filter((f) => f.severity === 'leak' && f.repairableBy === null);
    const { status, json } = await checkJson(p);
    assert.equal(status, json.leaks > 0 ? 3 : 0, JSON.stringify(json.findings));
    assert.equal(json.log.state, 'dirty');
    assert.deepEqual(json.findings.filter((f: Finding) => !insideLeaks(json.findings).includes(f)).map((f: Finding) => f.reason), ['LOG_DIRTY']);
    assert.equal(sha256(p), pristine, 'a check without -r writes nothing');
    assert.notEqual(qemuCheck(p), 0, 'qemu-img cannot check it before the replay');

    const rr = await checkJson('-r', 'all', p);
    assert.equal(rr.status, json.leaks > 0 ? 3 : 0, JSON.stringify(rr.json));
    assert.ok(rr.json.repair.logEntriesReplayed > 0);
    assert.equal(rr.json.log.state, 'clean');
    assert.deepEqual(rr.json.findings, insideLeaks(json.findings));
    assert.equal(qemuCheck(p), 0, 'qemu-img check is clean after the replay');

    const raw = `${p}.raw`;
    run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', p, raw]);
    assert.equal(statSync(raw).size, e.virtualSize);
    if (e.virtualSize <= FULL_HASH_LIMIT) {
      assert.equal(sparseSha256(raw), e.rawSha256, 'qemu-img reads the replayed image to the recorded SHA-256');
    } else {
      // Hashing 10 GiB takes ~8 s (VHDX_FULL_HASH=1 does it). Instead: qemu's read of the
      // repaired file equals our in-memory replay of the untouched image, which corpus.test.ts
      // reads to the recorded SHA-256 (qemu-img compare skips the holes on both sides).
      const ours = `${p}.ours.raw`;
      await ourRaw(cached, ours);
      const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, ours], { encoding: 'utf8' });
      assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
      // The compare is not vacuous: one byte changed is a difference.
      const fd = openSync(ours, 'r+');
      writeSync(fd, new Uint8Array([0x5a]), 0, 1, 17 * MiB + 12345);
      closeSync(fd);
      assert.equal(spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, ours]).status, 1);
      rmSync(ours);
    }
    rmSync(raw);
  });
}

// ------------------------------------------------------------------------------------------

test('clean image: exit 0, qemu-img style human output, qemu-img check agrees', async () => {
  const { bytes } = await buildImage({ allocate: [0, 1, 5] });
  const p = file(bytes);
  const r = await check(p);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^No errors were found on the image\.$/m);
  assert.match(r.stdout, /^3\/64 = 4\.69% allocated, 0\.00% fragmented, 0\.00% compressed clusters$/m);
  assert.match(r.stdout, new RegExp(`^Image end offset: ${bytes.length}$`, 'm'));
  assert.equal(r.stderr, '');
  if (!noQemu) assert.equal(qemuCheck(p), 0, 'qemu-img check is clean too');
});

test('JSON output: stable camelCase keys', async () => {
  const { bytes } = await buildImage({ allocate: [0] });
  const { status, json } = await checkJson(file(bytes));
  assert.equal(status, 0);
  assert.deepEqual(Object.keys(json), [
    'filename', 'format', 'type', 'supported', 'canComplete', 'error', 'corruptions', 'leaks', 'leakedBytes', 'warnings', 'checkErrors',
    'fileSize', 'imageEndOffset', 'totalBlocks', 'allocatedBlocks', 'fragmentedBlocks', 'fragmentationPercentage', 'bitmapBlocks', 'log', 'findings', 'omittedFindings', 'exitCode',
  ]);
  assert.equal(json.format, 'vhdx');
  assert.equal(json.type, 'dynamic');
  assert.equal(json.exitCode, 0);
  assert.deepEqual(json.log, { state: 'clean', entries: 0 });
  assert.deepEqual(json.findings, []);
});

test('corruption: exit 2, the finding listed, qemu-img check does not pass it either', async () => {
  const { bytes, plan } = await buildImage({ allocate: [0] });
  const b = bytes.slice();
  putBatEntry(b, plan, 2, { state: PayloadState.FULLY_PRESENT, fileOffsetMB: b.length / MiB + 4 });
  const p = file(b);
  const r = await check(p);
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stdout, /^ERROR: payload block 2 at file offset 0x\w+ \(\+1048576\) ends beyond the end of the file .* \(BAT entry 2 at file offset 0x\w+\)$/m);
  assert.match(r.stdout, /^1 errors were found on the image\.$/m);
  assert.match(r.stdout, /^Data may be corrupted, or further writes to the image may corrupt it\.$/m);
  const { json } = await checkJson(p);
  assert.equal(json.corruptions, 1);
  assert.equal(json.findings[0].reason, 'BAT_ENTRY_OUT_OF_BOUNDS');
  assert.equal(json.findings[0].structure, 'BAT entry 2');
  assert.equal(json.findings[0].repairableBy, null);
  if (!noQemu) assert.notEqual(qemuCheck(p), 0, 'qemu-img check rejects it too');

  // -r all refuses and leaves the file as it was.
  const before = sha256(p);
  const rr = await check('-r', 'all', p);
  assert.equal(rr.status, 2);
  assert.match(rr.stdout, /^The image was not repaired: /m);
  assert.equal(sha256(p), before, 'file unchanged');
  assert.deepEqual(await lockRecords(p), [], 'lock released');
});

test('leaks: exit 3; -r leaks frees them; then vhdx and qemu-img check clean', async () => {
  const { bytes } = await buildImage({ allocate: [0, 3] });
  const p = file(bytes);
  appendFileSync(p, new Uint8Array(3 * MiB));
  const r = runCli(['check', p]); // the real command, as a process
  assert.equal(r.status, 3, r.stdout + r.stderr);
  assert.match(r.stdout, /^3 leaked clusters were found on the image\.$/m);
  assert.match(r.stdout, /^This means waste of disk space, but no harm to data\.$/m);
  if (!noQemu) assert.equal(qemuCheck(p), 0, 'qemu-img check (which counts no leaks for vhdx) passes it');

  const rr = await check('-r', 'leaks', p);
  assert.equal(rr.status, 0, rr.stdout + rr.stderr);
  assert.match(rr.stdout, /^The following inconsistencies were found and repaired:$/m);
  assert.match(rr.stdout, /^ {4}3 leaked clusters$/m);
  assert.match(rr.stdout, /^ {4}0 corruptions$/m);
  assert.match(rr.stdout, /^Double checking the fixed image now\.\.\.$/m);
  assert.match(rr.stdout, /^No errors were found on the image\.$/m);
  assert.equal(statSync(p).size, bytes.length);
  assert.equal((await check(p)).status, 0);
  if (!noQemu) assert.equal(qemuCheck(p), 0);
});

test('a damaged header copy and a damaged region table copy: exit 2; -r leaks leaves them; -r all repairs both', async () => {
  const { bytes } = await buildImage({ allocate: [1] });
  const b = bytes.slice();
  b[HEADER_AT[0] + 300]! ^= 0x5a;
  b[REGION_TABLE_AT[1] + 300]! ^= 0x5a;
  const p = file(b);
  const { status, json } = await checkJson(p);
  assert.equal(status, 2);
  assert.deepEqual(
    json.findings.map((f: Finding) => [f.reason, f.structure, f.repairableBy]),
    [
      ['BAD_CHECKSUM', 'header 1', 'all'],
      ['BAD_CHECKSUM', 'region table 2', 'all'],
    ],
  );
  assert.equal((await check('-r', 'leaks', p)).status, 2, '-r leaks does not touch them');
  const rr = await checkJson('-r', 'all', p);
  assert.equal(rr.status, 0, JSON.stringify(rr.json));
  assert.equal(rr.json.repair.corruptionsFixed, 2);
  assert.deepEqual(rr.json.repair.actions.map((a: RepairAction) => a.action), ['rewriteHeaders', 'rewriteRegionTable']);
  assert.equal(rr.json.corruptions, 0);
  if (!noQemu) assert.equal(qemuCheck(p), 0, 'qemu-img check clean after the repair');
});

test('exit 63 for a file that is not a VHDX, 1 for a missing file or a bad option', async () => {
  const p = join(dir, 'plain.raw');
  writeFileSync(p, new Uint8Array(2 * MiB));
  const r = runCli(['check', p]); // the real command, as a process
  assert.equal(r.status, 63);
  assert.match(r.stderr, /this image cannot be checked: no "vhdxfile" signature/);
  const j = await checkJson(p);
  assert.equal(j.status, 63);
  assert.equal(j.json.supported, false);
  assert.equal(j.json.error.reason, 'NOT_VHDX');

  const missing = await check(join(dir, 'nope.vhdx'));
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /^vhdx: cannot open/);
  assert.equal((await check('-r', 'everything', p)).status, 1);
  assert.equal((await check()).status, 1);
});

test('an image written by our writer checks clean, and so does qemu-img check', async () => {
  const { bytes } = await buildImage({ virtualSize: 16 * MiB });
  const p = file(bytes);
  const img = await openFile(p, { readOnly: false });
  try {
    await img.write(0, new Uint8Array(3 * MiB).fill(0x42));
    await img.write(9 * MiB + 4096, new Uint8Array(8192).fill(0x43));
    await img.writeZeroes(12 * MiB, MiB);
  } finally {
    await img.close();
  }
  const { status, json } = await checkJson(p);
  assert.equal(status, 0, JSON.stringify(json.findings));
  assert.equal(json.allocatedBlocks, 4);
  if (!noQemu) {
    const q = qemuCheck(p);
    assert.equal(q, 0, qemuCheck.last);
  }
});

test('qemu-made images check clean (dynamic, written, fixed with ZERO blocks, fixed allocated), as qemu-img check says', { skip: noQemuIo }, async () => {
  const images: [string, string[]][] = [
    ['dyn', ['-f', 'vhdx', 'X', '64M']],
    ['dyn1m', ['-f', 'vhdx', '-o', 'block_size=1M', 'X', '8M']],
    ['fixzero', ['-f', 'vhdx', '-o', 'subformat=fixed', 'X', '10M']],
    ['fixed', ['-f', 'vhdx', '-o', 'subformat=fixed,block_state_zero=off', 'X', '10M']],
  ];
  for (const [name, args] of images) {
    const p = join(dir, `q-${name}.vhdx`);
    run('qemu-img', ['create', '-q', ...args.map((a) => (a === 'X' ? p : a))]);
    if (name === 'dyn1m') run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 7 0 3M', '-c', 'write -P 8 6M 512', p]);
    const { status, json } = await checkJson(p);
    assert.equal(status, 0, `${name}: ${JSON.stringify(json.findings)}`);
    assert.equal(json.corruptions + json.leaks, 0, name);
    assert.equal(qemuCheck(p), 0, `${name}: qemu-img check agrees`);
  }
  // qemu leaves 4 MiB after its metadata region for it to grow: not leaked. Past that, leaked.
  const p = join(dir, 'q-dyn.vhdx');
  const size = statSync(p).size;
  appendFileSync(p, new Uint8Array(2 * MiB));
  assert.equal((await check(p)).status, 3);
  assert.equal((await check('-r', 'leaks', p)).status, 0);
  assert.equal(statSync(p).size, size);
  assert.equal(qemuCheck(p), 0);
  run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 9 1M 64k', p]);
  assert.match(run('qemu-io', ['-f', 'vhdx', '-c', 'read -P 9 1M 64k', p]), /read 65536\/65536/);
  assert.equal((await check(p)).status, 0);
});

// ------------------------------------------------------------------------------------------
// The corpus


test('corpus: every clean image checks clean (exit 0), as qemu-img check says where it can open it', { skip: noCorpus }, async () => {
  assert.ok(clean.length > 0);
  // Parents first: check opens a differencing image's parent, as the readers do.
  for (const e of clean) await corpusFile(e.file);
  for (const e of clean) {
    const p = await corpusFile(e.file);
    const { status, json } = await checkJson(p);
    assert.equal(status, 0, `${e.file}: ${JSON.stringify(json.findings)}`);
    assert.equal(json.type, e.type, e.file);
    if (!noQemu && e.type !== 'differencing') assert.equal(qemuCheck(p), 0, `${e.file}: qemu-img check`);
  }
});

test('a truncated image: the blocks past the end are corruptions, exit 2', async () => {
  const { bytes } = await buildImage({ allocate: [0, 1, 2] });
  const p = file(bytes);
  truncateSync(p, bytes.length - MiB - 4096);
  const { status, json } = await checkJson(p);
  assert.equal(status, 2);
  assert.deepEqual(json.findings.map((f: Finding) => [f.reason, f.structure]), [
    ['BAT_ENTRY_OUT_OF_BOUNDS', 'BAT entry 1'],
    ['BAT_ENTRY_OUT_OF_BOUNDS', 'BAT entry 2'],
  ]);
});
