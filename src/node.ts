/** Node.js entry: everything in the browser-safe entry, plus opening files by path. */
import { NodeFileSource } from './io/node-file.js';
import { VhdxImage, type OpenOptions } from './driver/image.js';

export * from './index.js';
export { NodeFileSource } from './io/node-file.js';

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
