import { createRequire } from 'node:module';

let version: string | undefined;
/** This package's version, from its package.json (the one place it is written). Node only. */
export function packageVersion(): string {
  if (version === undefined) {
    const require = createRequire(import.meta.url);
    version = (require('../package.json') as { version: string }).version;
  }
  return version;
}
