/** Opening and creating image files by path (Node only). The CLI imports this directly, not the
 * package barrel, so a command loads only the modules it uses. */
import { createRequire } from 'node:module';
import { unlink } from 'node:fs/promises';
import { NodeFileSource } from './io/node-file.js';
import { VhdxImage, type OpenOptions } from './driver/image.js';
import { createImage, planCreate, DEFAULT_CREATOR, type CreateOptions, type CreateResult } from './driver/create.js';
import { VhdxError } from './errors.js';


/**
 * Open the VHDX file at `path`, read-only unless `readOnly: false`. A writable open takes the
 * image's lock (see NodeFileSource). Close the image to release the file.
 */
export async function openFile(path: string, opts: OpenOptions = {}): Promise<VhdxImage> {
  const src = await NodeFileSource.open(path, { readOnly: opts.readOnly ?? true });
  try {
    return await VhdxImage.open(src, opts);
  } catch (e) {
    await src.close();
    throw e;
  }
}

let version: string | undefined;
/** This package's version, from its package.json (the one place it is written). */
export function packageVersion(): string {
  if (version === undefined) {
    const require = createRequire(import.meta.url);
    version = (require('../package.json') as { version: string }).version;
  }
  return version;
}

export interface CreateFileOptions extends CreateOptions {
  /** Replace an existing file instead of failing with EEXIST / FILE_EXISTS (default false). */
  overwrite?: boolean;
}

/**
 * Create a new VHDX file at `path` (see `createImage` for the options; the creator text defaults
 * to `vhdx <version>`). The options are checked before the file is made. The file is created
 * exclusively: an existing file is an EEXIST / FILE_EXISTS error and is left alone, unless
 * `overwrite`. If anything fails after the file was made (an I/O error, no space, `signal`
 * aborted), the file is removed before the error is thrown. The file is flushed and closed on
 * success; open it with `openFile(path, { readOnly: false })` to write.
 */
export async function createFile(path: string, opts: CreateFileOptions): Promise<CreateResult> {
  const { overwrite = false, ...rest } = opts;
  const options: CreateOptions = { ...rest, creator: rest.creator ?? `${DEFAULT_CREATOR} ${packageVersion()}` };
  planCreate(options); // bad options fail here, before any file exists
  let src: NodeFileSource;
  try {
    src = await NodeFileSource.open(path, { readOnly: false, create: true, truncate: overwrite });
  } catch (e) {
    if (e instanceof VhdxError && (e.cause as { code?: string } | undefined)?.code === 'EEXIST') {
      throw new VhdxError('EEXIST', 'FILE_EXISTS', `${path} already exists (it is not overwritten)`, { cause: e });
    }
    throw e;
  }
  try {
    const result = await createImage(src, options);
    await src.close();
    return result;
  } catch (e) {
    await src.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw e;
  }
}
