/** Node.js entry: everything in the browser-safe entry, plus opening and creating files by path. */
export * from './index.js';
export { NodeFileSource, CACHE_MODES, type CacheMode } from './io/node-file.js';
export { openFile, createFile, createOpenFile, packageVersion, type CreateFileOptions, type OpenFileOptions, type ParentPaths, commitFile, rebaseFile, locatorFor, type CommitFileOptions, type CommitChildOutcome } from './node-files.js';
export { NbdServer, serveNbd, DEFAULT_PORT as NBD_DEFAULT_PORT, type NbdLimits, type NbdServerOptions, type NbdListen, type NbdServerStats, type ServeOptions } from './nbd/server.js';
export { ClientDropped, ProtocolViolation, type ClientDropReason } from './nbd/handshake.js';
export type { NbdExportOptions, NbdExportSpec } from './nbd/export.js';
