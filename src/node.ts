/**
 * The Node.js entry (the package's `node` condition): everything in the browser-safe entry, plus
 * images by path (files with their locks and cache modes, chains found on the host's files),
 * create / commit / rebase by path, and the NBD server. Public API, recorded in
 * api/node.api.md (`npm run api-report`).
 */
export * from './index.js';

// Files: a source over a file, and opening, creating, committing and rebasing images by path.
export { NodeFileSource, CACHE_MODES, type CacheMode } from './io/node-file.js';
// HTTP: the Node transport (HTTP/1.1 on node:net and node:tls), the HTTP source's default in Node.
export { nodeHttpTransport, type NodeHttpTransportOptions } from './io/http-node.js';
export { openFile, openDevice, parentResolver, type OpenFileOptions, type OpenDeviceOptions, type FileOptions } from './device/open-node.js';
export { createFile, createOpenFile, type CreateFileOptions } from './device/create-file.js';
export { commitFile, rebaseFile, type CommitFileOptions, type CommitChildOutcome } from './device/commit-file.js';

// Serving over NBD.
export { NbdServer, serveNbd, DEFAULT_PORT as NBD_DEFAULT_PORT, type NbdLimits, type NbdServerOptions, type NbdListen, type NbdServerStats, type ServeOptions } from './nbd/server.js';
export { ClientDropped, ProtocolViolation, type ClientDropReason } from './nbd/handshake.js';
export type { NbdExportOptions, NbdExportSpec } from './nbd/export.js';
