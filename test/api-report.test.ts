// The checked-in API report (api/*.api.md) matches the public entries: regenerated from the
// build's declarations into a temporary folder and compared, file by file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { writeApiReports, repoRoot } from '../scripts/api-report.js';

test('the API report in api/ is up to date (else run `npm run api-report` and review the diff)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vhdx-api-test-'));
  try {
    const written = writeApiReports(dir);
    assert.equal(written.length, 3);
    for (const path of written) {
      const name = basename(path);
      const fresh = readFileSync(path, 'utf8');
      let checkedIn = '';
      try {
        checkedIn = readFileSync(join(repoRoot, 'api', name), 'utf8');
      } catch {
        assert.fail(`api/${name} is missing: run \`npm run api-report\` and commit it`);
      }
      assert.ok(fresh === checkedIn, `api/${name} is stale: the public API changed. Run \`npm run api-report\`, review the diff and commit it`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
