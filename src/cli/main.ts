/** The `vhdx` command: dispatch to one file per subcommand, one-line errors. */
import { COMMANDS, commandHelp, mainHelp } from './usage.js';
import { writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { describeError, HelpRequested, UsageError, type Io } from './common.js';

/**
 * libuv's I/O pool size for a command, unless the user chose one (UV_THREADPOOL_SIZE). The pool
 * starts at the first file I/O, so setting it before the command runs takes effect. Its default
 * of 4 threads oversubscribes small machines (on 2 cores, 2 threads serve 4 KiB reads ~60% faster
 * than 4), so commands get one per CPU, at least 2. A server's main thread is a busy worker of
 * its own (every request and reply passes through it), so `serve` gets one fewer, at least 1: on
 * 2 cores, 1 thread served random 4 KiB reads ~25% faster than 2 (39.6k against 31.6k IOPS with
 * fio), at the cost of large sequential reads (750 against 1900 MiB/s, still twice qemu-nbd's 337).
 */
function sizeThreadPool(cmd: string | undefined): void {
  if (process.env.UV_THREADPOOL_SIZE !== undefined) return;
  const cpus = availableParallelism();
  process.env.UV_THREADPOOL_SIZE = String(cmd === 'serve' ? Math.max(1, cpus - 1) : Math.max(2, cpus));
}

export async function main(argv: string[], io: Io = defaultIo()): Promise<number> {
  const [cmd, ...rest] = argv;
  sizeThreadPool(cmd);
  const controller = new AbortController();
  const onSignal = (): void => controller.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    switch (cmd) {
      // Each command's code loads only when it runs: start-up is a large share of a short command.
      case 'info':
        return await (await import('./info.js')).infoCommand(rest, io);
      case 'map':
        return await (await import('./map.js')).mapCommand(rest, io);
      case 'check':
        return await (await import('./check.js')).checkCommand(rest, io, controller.signal);
      case 'convert':
        return await (await import('./convert.js')).convertCommand(rest, io, controller.signal);
      case 'create':
        return await (await import('./create.js')).createCommand(rest, io, controller.signal);
      case 'io':
        return await (await import('./io.js')).ioCommand(rest, io);
      case 'commit':
        return await (await import('./commit.js')).commitCommand(rest, io, controller.signal);
      case 'rebase':
        return await (await import('./rebase.js')).rebaseCommand(rest, io);
      case 'compact':
        return await (await import('./compact.js')).compactCommand(rest, io, controller.signal);
      case 'resize':
        return await (await import('./resize.js')).resizeCommand(rest, io, controller.signal);
      case 'serve':
        return await (await import('./serve.js')).serveCommand(rest, io, controller.signal);
      case 'web':
        return await (await import('./web.js')).webCommand(rest, io, controller.signal);
      case '--version':
      case '-V':
        io.out(`vhdx ${(await import('../package-version.js')).packageVersion()}\n`);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        // `vhdx help COMMAND` is `vhdx COMMAND --help`.
        if (cmd === 'help' && rest[0] !== undefined && rest[0] in COMMANDS) io.out(commandHelp(rest[0]));
        else io.out(mainHelp());
        return cmd === undefined ? 1 : 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}; see 'vhdx --help'`);
    }
  } catch (e) {
    if (e instanceof HelpRequested && cmd !== undefined) {
      io.out(commandHelp(cmd));
      return 0;
    }
    if (process.env.VHDX_DEBUG === '1') {
      // The error and what caused it (a message that names the file wraps the original).
      for (let c: unknown = e, first = true; c instanceof Error; c = c.cause, first = false) io.err(`${first ? '' : 'caused by: '}${c.stack ?? c.message}\n`);
    }
    io.err(`vhdx: ${describeError(e).replace(/\n/g, '\nvhdx: ')}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function defaultIo(): Io {
  return {
    out: writeOut,
    err: (t) => process.stderr.write(t),
  };
}

/**
 * Standard output, written synchronously to fd 1 until a write would block, then through
 * process.stdout (in order: once switched, always). Making process.stdout costs 3-7 ms at start,
 * a twentieth of a short command like `vhdx info`. A reader that stops early (`vhdx map | head`)
 * closes the pipe: the command then stops quietly, as a program killed by SIGPIPE would.
 */
let stdoutStream: NodeJS.WriteStream | null = null;
function writeOut(text: string): void {
  if (stdoutStream) {
    stdoutStream.write(text);
    return;
  }
  let bytes = Buffer.from(text);
  try {
    while (bytes.length > 0) bytes = bytes.subarray(writeSync(1, bytes));
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'EPIPE') process.exit(0);
    if (code !== 'EAGAIN') throw e;
    stdoutStream = process.stdout;
    stdoutStream.on('error', (err: { code?: string }) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
    stdoutStream.write(bytes);
  }
}
