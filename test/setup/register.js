// Loaded by `npm test` (node --import) into the runner and every test file's process: TypeScript
// tests and sources, and imports of dist/ served from src/ (test/setup/ts-hooks.js).
import { register } from 'node:module';

register('./ts-hooks.js', import.meta.url);
