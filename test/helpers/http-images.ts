// The VHDX images the HTTP conformance matrix (test/http/matrix.ts) reads, made with the library.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openFile } from '../../src/device/open-node.js';
import { createFile } from '../../src/device/create-file.js';
import { chainContent, diskContent } from '../http/matrix.js';

const MiB = 1024 * 1024;

/** Write `content` into a new image's virtual disk wherever it is not zero, in 1 MiB pieces. */
async function fill(path: string, content: Uint8Array): Promise<void> {
  const img = await openFile(path, { readOnly: false });
  for (let o = 0; o < content.length; o += MiB) {
    const piece = content.subarray(o, o + MiB);
    if (piece.some((b) => b !== 0)) await img.write(o, piece);
  }
  await img.close();
}

/** The images the matrix reads: disk.vhdx, a chain (chain/base + chain/child), and a child without its parent. */
export async function makeMatrixImages(folder: string): Promise<Record<string, { path: string }>> {
  const disk = join(folder, 'disk.vhdx');
  await createFile(disk, { size: 16 * MiB, blockSize: MiB });
  await fill(disk, diskContent());
  mkdirSync(join(folder, 'chain'));
  mkdirSync(join(folder, 'orphan'));
  const base = join(folder, 'chain', 'base.vhdx');
  await createFile(base, { size: 16 * MiB, blockSize: MiB });
  await fill(base, diskContent());
  const child = join(folder, 'chain', 'child.vhdx');
  await createFile(child, { parent: base, blockSize: MiB });
  const img = await openFile(child, { readOnly: false });
  const c = chainContent();
  await img.write(2 * MiB + 4096, c.subarray(2 * MiB + 4096, 3 * MiB + 4096));
  await img.write(12 * MiB, c.subarray(12 * MiB, 12 * MiB + 8192));
  await img.close();
  return { 'disk.vhdx': { path: disk }, 'chain/base.vhdx': { path: base }, 'chain/child.vhdx': { path: child }, 'orphan/child.vhdx': { path: child } };
}
