// Loaded by `npm test` (node --import) into the runner and every test file's process. Each test
// file gets a lock folder of its own (src/io/lock.ts: VHDX_LOCK_DIR), inherited by the processes it
// starts, so that files run side by side cannot take over or tidy each other's lock records.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

if (process.env.NODE_TEST_CONTEXT !== undefined && process.env.VHDX_TEST_LOCK_OWNER !== String(process.ppid)) {
  const dir = mkdtempSync(join(tmpdir(), 'vhdx-test-locks-'));
  process.env.VHDX_LOCK_DIR = dir;
  // Processes this file starts keep the folder (their parent is this process, not the runner).
  process.env.VHDX_TEST_LOCK_OWNER = String(process.pid);
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
}
