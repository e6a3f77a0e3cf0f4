/** Node.js entry: everything in the browser-safe entry, plus opening and creating files by path. */
export * from './index.js';
export { NodeFileSource } from './io/node-file.js';
export { openFile, createFile, packageVersion, type CreateFileOptions, type OpenFileOptions, type ParentPaths } from './node-files.js';
