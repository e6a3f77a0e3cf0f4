/** Node.js entry: everything in the browser-safe entry, plus opening and creating files by path. */
export * from './index.js';
export { NodeFileSource, CACHE_MODES, type CacheMode } from './io/node-file.js';
export { openFile, openDevice, parentResolver, type OpenFileOptions, type OpenDeviceOptions, type FileOptions } from './device/open-node.js';
export { createFile, createOpenFile, type CreateFileOptions } from './device/create-file.js';
export { commitFile, rebaseFile, type CommitFileOptions, type CommitChildOutcome } from './device/commit-file.js';
export { locatorFor } from './device/parents-node.js';
export { packageVersion } from './package-version.js';
export { NbdServer, serveNbd, DEFAULT_PORT as NBD_DEFAULT_PORT, type NbdLimits, type NbdServerOptions, type NbdListen, type NbdServerStats, type ServeOptions } from './nbd/server.js';
export { ClientDropped, ProtocolViolation } from './nbd/handshake.js';
export type { NbdExportOptions, NbdExportSpec } from './nbd/export.js';
