// Read-only commands take http(s) URLs through the device layer's opener (issue 18 item 2): info,
// map, check and convert read VHDX and VHD images over range requests, a differencing image
// finds its parent relative to its URL, --verbose and the JSON output give the requests made and
// bytes transferred, and any writable use of a URL is refused with a clear error.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NodeFileSource, createFile, createVhd, openFile } from '../../src/node.js';
import { startRangeServer } from '../helpers/http-server.js';
import { shmScratch, vhdxInProcess, vhdxOk, type MapEntry } from '../helpers/tools.js';

const dir = shmScratch('vhdx-cli-url-');
const MiB = 1024 * 1024;

const ok = vhdxOk;

test('info, map, check and convert read images over HTTP; --verbose and JSON report requests and bytes; writes are refused', async (t) => {
  const server = await startRangeServer();
  t.after(() => server.close());
  const base = join(dir, 'base.vhdx');
  const child = join(dir, 'child.vhdx');
  await createFile(base, { size: 8 * MiB, blockSize: MiB });
  await ok(['io', '-q', '-c', 'write -P 0x11 0 2M', base]);
  await createFile(child, { parent: base, blockSize: MiB });
  await ok(['io', '-q', '-c', 'write -P 0x22 1M 4k', child]);
  const vhd = join(dir, 'disk.vhd');
  const src = await NodeFileSource.open(vhd, { readOnly: false, create: true });
  await createVhd(src, { size: 4 * MiB, subformat: 'fixed' });
  await src.close();
  const objects: [string, string][] = [['d/base.vhdx', base], ['d/child.vhdx', child], ['d/disk.vhd', vhd]];
  for (const [name, path] of objects) server.objects.set(name, { path });
  const url = (name: string) => `${server.origin}/o/-/d/${name}`;

  const info = await ok(['info', '--verbose', '--backing-chain', url('child.vhdx')]);
  assert.match(info.stdout, /^file format: vhdx$/m);
  assert.match(info.stdout, /^type: differencing$/m);
  assert.match(info.stdout, /^disk size: unavailable$/m);
  assert.match(info.stdout, /^image: http:\/\/127\.0\.0\.1:\d+\/o\/-\/d\/base\.vhdx$/m, 'the parent, relative to the child URL');
  const line = /^vhdx: http: (\d+) requests, (\d+) bytes received$/m.exec(info.stderr);
  assert.ok(line, `--verbose line: ${info.stderr}`);
  assert.ok(Number(line[1]) >= 2 && Number(line[2]) > 0);
  assert.equal((await ok(['info', url('child.vhdx')])).stderr, '', 'figures only with --verbose');

  const j = JSON.parse((await ok(['info', '--output=json', url('disk.vhd')])).stdout);
  assert.equal(j.format, 'vpc');
  assert.equal(j.type, 'fixed');
  assert.ok(j.http.requests >= 1 && j.http.bytesReceived > 0, JSON.stringify(j.http));

  const map = JSON.parse((await ok(['map', '--output=json', url('child.vhdx')])).stdout);
  assert.deepEqual(
    map.filter((e: MapEntry) => e.data).map((e: MapEntry) => [e.start, e.length, e.depth]),
    [[0, MiB, 1], [MiB, 4096, 0], [MiB + 4096, MiB - 4096, 1]],
  );
  const check = JSON.parse((await ok(['check', '--output=json', url('child.vhdx')])).stdout);
  assert.equal(check.corruptions, 0);
  assert.ok(check.http.requests >= 1);
  assert.equal(JSON.parse((await ok(['check', '--output=json', url('disk.vhd')])).stdout).format, 'vpc');

  const raw = join(dir, 'child.raw');
  await ok(['convert', url('child.vhdx'), raw]);
  const local = await openFile(child);
  const want = new Uint8Array(8 * MiB);
  await local.read(0, want);
  await local.close();
  assert.ok(Buffer.from(want).equals(readFileSync(raw)), 'the chain over HTTP reads as on files');

  for (const args of [
    ['io', '-c', 'write 0 4k', url('disk.vhd')],
    ['check', '-r', 'all', url('disk.vhd')],
    ['commit', url('child.vhdx')],
    ['rebase', '-u', '-b', base, url('child.vhdx')],
    ['convert', raw, url('out.vhdx')],
  ]) {
    const r = await vhdxInProcess(args);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, /images read over HTTP are read-only/, args.join(' '));
  }
});

test('info of a 64 TiB image with 1 MiB blocks reads a few hundred KiB, not its 512 MiB BAT: the reclaimable space is left uncomputed unless the allocation is scanned', async (t) => {
  // The BAT is what grows with the disk; counting the bytes the source gives (over HTTP, where
  // the JSON output has them) proves the bound for any source, since info reads them all alike.
  const server = await startRangeServer();
  t.after(() => server.close());
  const path = join(dir, 'huge.vhdx');
  await createFile(path, { size: 64 * 2 ** 40, blockSize: MiB });
  server.objects.set('huge.vhdx', { path });
  const j = JSON.parse((await ok(['info', '--output=json', `${server.origin}/o/-/huge.vhdx`])).stdout);
  assert.equal(j.allocation, null, 'a 512 MiB BAT is not scanned by default');
  assert.equal(j.partitionScheme, 'none');
  assert.equal(j.reclaimable, null);
  assert.equal(j.reclaimableBytes, null);
  assert.ok(j.http.bytesReceived <= 2 * MiB, `${j.http.bytesReceived} bytes received`);
  assert.ok(j.http.requests <= 8, `${j.http.requests} requests`);
  const human = await ok(['info', path]);
  assert.match(human.stdout, /^reclaimable: not computed \(the allocation was not scanned; --allocation=always scans it\)$/m);
});
