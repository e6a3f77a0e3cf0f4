#!/usr/bin/env node
// The public API report: one Markdown file per entry point (api/index.api.md, api/node.api.md,
// api/testing.api.md), made by API Extractor from the build's declarations (dist/*.d.ts; run
// `npm run build` first). Checked in, so that every change to the public surface shows in review;
// test/api-report.test.ts fails when they are stale, or when a public symbol has no doc comment. Usage: npm run api-report [-- OUT_DIR]
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const { Extractor, ExtractorConfig, CompilerState } = createRequire(import.meta.url)('@microsoft/api-extractor');

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The package's entry points: the file name of each one's report is `${entry}.api.md`. */
export const ENTRIES = ['index', 'node', 'testing'];

function configFor(entry, outDir, scratch) {
  return ExtractorConfig.prepare({
    configObject: {
      projectFolder: repoRoot,
      mainEntryPointFilePath: join(repoRoot, 'dist', `${entry}.d.ts`),
      compiler: { tsconfigFilePath: join(repoRoot, 'tsconfig.json') },
      apiReport: { enabled: true, reportFileName: `${entry}.api.md`, reportFolder: outDir, reportTempFolder: scratch },
      docModel: { enabled: false },
      dtsRollup: { enabled: false },
      tsdocMetadata: { enabled: false },
      messages: {
        compilerMessageReporting: { default: { logLevel: 'warning' } },
        // A symbol the API uses but no entry exports, and the like, are written into the report.
        extractorMessageReporting: {
          default: { logLevel: 'none', addToApiReportFile: true },
          // The package has one release level: whatever an entry exports is public.
          'ae-missing-release-tag': { logLevel: 'none', addToApiReportFile: false },
          // Every public declaration and member has a doc comment: one without fails the report
          // (and test/api-report.test.ts) with its place in dist/*.d.ts, which mirrors src/.
          'ae-undocumented': { logLevel: 'error', addToApiReportFile: false },
        },
        tsdocMessageReporting: { default: { logLevel: 'none' } },
      },
    },
    configObjectFullPath: undefined,
    packageJsonFullPath: join(repoRoot, 'package.json'),
  });
}

/** Write the report of every entry into `outDir`; returns the paths written. */
export function writeApiReports(outDir) {
  const scratch = mkdtempSync(join(tmpdir(), 'vhdx-api-'));
  try {
    const configs = ENTRIES.map((e) => configFor(e, outDir, scratch));
    const [first] = configs;
    // One TypeScript program for all the entries: most of the time is spent making it.
    const compilerState = CompilerState.create(first, { additionalEntryPoints: configs.map((c) => c.mainEntryPointFilePath) });
    const problems = [];
    for (const config of configs) {
      const result = Extractor.invoke(config, {
        localBuild: true,
        compilerState,
        messageCallback: (m) => {
          if (m.category !== 'console' && (m.logLevel === 'error' || m.logLevel === 'warning')) problems.push(m.formatMessageWithLocation(repoRoot));
          m.handled = true;
        },
      });
      if (!result.succeeded) throw new Error(`API Extractor failed on dist/${ENTRIES[configs.indexOf(config)]}.d.ts:\n${problems.join('\n')}`);
    }
    if (problems.length) throw new Error(`API Extractor:\n${problems.join('\n')}`);
    return configs.map((c) => c.reportFilePath);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  for (const path of writeApiReports(resolve(process.argv[2] ?? join(repoRoot, 'api')))) console.log(path);
}
