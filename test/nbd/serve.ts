// Start `vhdx serve` as a real process for the interop and CLI tests: resolves once it prints
// its listening line, with the URI from that line.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable } from 'node:stream';
import { cliPath } from '../helpers/env.js';

/** How a server process ended: its exit code, or the signal that ended it. */
export interface ServeExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running `vhdx serve`. */
export interface Serve {
  proc: ChildProcessByStdio<null, Readable, Readable>;
  /** The URI from its listening line. */
  uri: string;
  /** Everything it has written to stderr so far. */
  stderr(): string;
  exited: Promise<ServeExit>;
  /** Send `signal` (SIGTERM unless told) if it still runs, and wait for it to exit. */
  stop(signal?: NodeJS.Signals): Promise<ServeExit>;
}

/**
 * Spawn `vhdx serve ARGS`. Resolves once the server prints its listening line; rejects with its
 * stderr if it exits first.
 */
export function startServe(args: string[], { env }: { env?: NodeJS.ProcessEnv } = {}): Promise<Serve> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [cliPath, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let err = '';
    // A test that fails half-way must not leave its server running.
    const reap = () => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL');
    process.once('exit', reap);
    const exited = new Promise<ServeExit>((r) =>
      proc.once('exit', (code, signal) => {
        process.off('exit', reap);
        r({ code, signal });
      }),
    );
    let started = false;
    proc.stderr.on('data', (d: Buffer) => {
      err += d;
      const m = /^vhdx: serving .* on (nbd\S+)$/m.exec(err);
      if (m && !started) {
        started = true;
        resolve({
          proc,
          uri: m[1]!,
          stderr: () => err,
          exited,
          async stop(signal: NodeJS.Signals = 'SIGTERM') {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
            return exited;
          },
        });
      }
    });
    exited.then(({ code, signal }) => {
      if (!started) reject(new Error(`vhdx serve exited (${code ?? signal}) before listening: ${err}`));
    });
  });
}

/** Unix-socket path and URI of a socket file. */
export const unixUri = (path: string, name = ''): string => `nbd+unix:///${name}?socket=${path}`;
