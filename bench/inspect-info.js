// vhdx info with partitions, filesystems and used maps on a 64 GiB dynamic VHDX holding a GPT
// disk with an ext4 and an NTFS partition (a few GiB of files), against `7zz l` (which lists
// partitions and filesystem types, without used maps) and, when installed,
// `virt-filesystems --long --all` on the same image. Targets: <= 1 s, <= 100 MB, faster than 7zz.
//
// The image is built without root: a sparse raw disk partitioned by sfdisk, ext4 written in
// place by mke2fs -d with -E offset, NTFS made by mkntfs on a separate sparse file, filled with
// ntfscp and copied in sparsely, then `vhdx convert -O vhdx`. It is kept in the scratch folder
// for later runs (delete it to rebuild).
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { cli, compare, fmt, have, scratchDir, sh, summarise, timeCmd } from './lib.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const EXT4_START = MiB;
const EXT4_SIZE = 40 * GiB;
const NTFS_START = EXT4_START + EXT4_SIZE;
const NTFS_SIZE = 20 * GiB;
/** Files in each filesystem: count × size. */
const FILES = { ext4: [24, 64 * MiB], ntfs: [16, 64 * MiB] };

function fillFolder(dir, [count, size]) {
  mkdirSync(dir, { recursive: true });
  const b = Buffer.alloc(size);
  for (let i = 0; i < count; i++) {
    randomFillSync(b);
    writeFileSync(join(dir, `file-${i}.bin`), b);
  }
}

function buildImage(img) {
  const work = join(scratchDir, 'inspect-build');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    const raw = join(work, 'disk.raw');
    sh('truncate', ['-s', '64G', raw]);
    sh('sfdisk', ['-q', raw], {
      input: `label: gpt\nstart=${EXT4_START / 512}, size=${EXT4_SIZE / 512}, type=linux, name="linux"\nstart=${NTFS_START / 512}, size=${NTFS_SIZE / 512}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="windows"\n`,
    });
    const extFiles = join(work, 'ext-files');
    fillFolder(extFiles, FILES.ext4);
    sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'bench-ext4', '-d', extFiles, '-E', `offset=${EXT4_START}`, raw, `${EXT4_SIZE / 1024}k`]);
    rmSync(extFiles, { recursive: true });
    const ntfs = join(work, 'ntfs.img');
    sh('truncate', ['-s', String(NTFS_SIZE), ntfs]);
    sh('mkntfs', ['-q', '-F', '-Q', '-L', 'bench-ntfs', '-p', String(NTFS_START / 512), ntfs]);
    const ntfsFiles = join(work, 'ntfs-files');
    fillFolder(ntfsFiles, FILES.ntfs);
    for (let i = 0; i < FILES.ntfs[0]; i++) sh('ntfscp', ['-q', ntfs, join(ntfsFiles, `file-${i}.bin`), `file-${i}.bin`]);
    rmSync(ntfsFiles, { recursive: true });
    sh('dd', [`if=${ntfs}`, `of=${raw}`, 'bs=1M', `seek=${NTFS_START / MiB}`, 'conv=notrunc,sparse', 'status=none']);
    rmSync(ntfs);
    sh(process.execPath, [cli, 'convert', '-O', 'vhdx', raw, img]);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export function run({ runs = 5 } = {}) {
  const missing = ['sfdisk', 'mke2fs', 'mkntfs', 'ntfscp', '7zz'].filter((t) => !have(t));
  if (missing.length) return { name: 'inspect-info', skipped: `${missing.join(', ')} not installed` };
  const img = join(scratchDir, 'inspect-64g-gpt-ext4-ntfs.vhdx');
  if (!existsSync(img)) buildImage(img);
  const ours = [process.execPath, [cli, 'info', '--output=json', img]];
  const r = compare(runs, ['7zz', ['l', img]], ours);
  const info = JSON.parse(timeCmd(...ours).stdout);
  const fsSummary = info.partitions
    .map((p) => `${p.index}:${p.filesystem ? `${p.filesystem.type}${p.filesystem.trusted ? ` used ${(p.filesystem.usedBytes / GiB).toFixed(2)} GiB` : ' (no used map)'}` : 'none'}`)
    .join(', ');
  let virt = '';
  if (have('virt-filesystems')) {
    const v = summarise([timeCmd('virt-filesystems', ['--long', '--all', '-a', img])]);
    virt = `; virt-filesystems ${fmt(v.median)}, ${v.rssMB.toFixed(0)} MB`;
  }
  // 7zz is a native program that starts in a few ms; Node's own start is most of our time.
  const bare = summarise(Array.from({ length: runs }, () => timeCmd(process.execPath, ['-e', '0']))).median;
  const ratio = r.b.median / r.a.median;
  return {
    name: 'info with partitions and used maps, 64 GiB GPT disk (ext4 + NTFS)',
    peer: `7zz l ${fmt(r.a.median)}, ${r.a.rssMB.toFixed(0)} MB${virt}`,
    ours: `vhdx ${fmt(r.b.median)}, ${r.b.rssMB.toFixed(0)} MB (node -e 0 alone: ${fmt(bare)}) [${fsSummary}; reclaimable ${info.reclaimableBytes ?? 'n/a'} bytes]`,
    ratio,
    target: '<= 1 s, <= 100 MB, < 1 (faster than 7zz)',
    ok: r.b.median <= 1 && r.b.rssMB <= 100 && ratio < 1,
  };
}
