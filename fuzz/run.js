#!/usr/bin/env node
// The fuzz campaign's entry (`npm run fuzz`; the campaign itself is fuzz/campaign.js). The seeds
// are made by the test helpers, which are TypeScript: the campaign, and the worker it runs the
// targets in, load every module through the tests' hooks (test/setup/ts-hooks.js), so that the
// targets, the seeds and the rules share one copy of the library, from src/.
import '../test/setup/register.js';

await import('./campaign.js');
