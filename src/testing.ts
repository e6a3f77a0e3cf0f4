/**
 * `vhdx/testing`: tools for testing code built on this library, kept out of the main entries.
 * FaultySource is a memory disk with a volatile write cache that can lose power at any write or
 * flush (a seeded choice of the pending writes lands, one may be torn), to test crash safety.
 * Browser-safe. Public API, recorded in api/testing.api.md (`npm run api-report`).
 */
export type { CopyHint, RandomAccessSource } from './io/source.js';
export { FaultySource, type FaultyOptions, type FaultyOp, type CrashImageOptions } from './io/faulty.js';
