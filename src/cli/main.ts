/** The `vhdx` command: dispatch to one file per subcommand, one-line errors. */
import { createRequire } from 'node:module';
import { infoCommand, INFO_USAGE } from './info.js';
import { mapCommand, MAP_USAGE } from './map.js';
import { convertCommand, CONVERT_USAGE } from './convert.js';
import { describeError, UsageError, type Io } from './common.js';

const HELP = `vhdx: read Microsoft VHDX virtual disks

usage:
  ${INFO_USAGE}
      describe the image: geometry, headers, log, regions, metadata, allocation
  ${MAP_USAGE}
      list the virtual disk's extents (as qemu-img map)
  ${CONVERT_USAGE}
      write the virtual disk to a sparse raw file (-p: progress bar)
  vhdx --version

Errors print one line and exit 1; set VHDX_DEBUG=1 for a stack trace.
`;

function version(): string {
  const require = createRequire(import.meta.url);
  return (require('../../package.json') as { version: string }).version;
}

export async function main(argv: string[], io: Io = defaultIo()): Promise<number> {
  const [cmd, ...rest] = argv;
  const controller = new AbortController();
  const onSignal = (): void => controller.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    switch (cmd) {
      case 'info':
        return await infoCommand(rest, io);
      case 'map':
        return await mapCommand(rest, io);
      case 'convert':
        return await convertCommand(rest, io, controller.signal);
      case '--version':
      case '-V':
        io.out(`vhdx ${version()}\n`);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        io.out(HELP);
        return cmd === undefined ? 1 : 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}; see 'vhdx --help'`);
    }
  } catch (e) {
    if (process.env.VHDX_DEBUG === '1' && e instanceof Error) io.err(`${e.stack ?? e.message}\n`);
    io.err(`vhdx: ${describeError(e).replace(/\n/g, '\nvhdx: ')}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function defaultIo(): Io {
  return {
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    errIsTTY: process.stderr.isTTY === true,
  };
}
