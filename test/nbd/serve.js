// Start `vhdx serve` as a real process for the interop and CLI tests: resolves once it prints
// its listening line, with the URI from that line.
import { spawn } from 'node:child_process';
import { cliPath } from '../helpers/env.js';

/**
 * Spawn `vhdx serve ARGS`. Resolves to { proc, uri, stderr(), stop(signal) } once the server
 * prints its listening line; rejects with its stderr if it exits first.
 */
export function startServe(args, { env } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [cliPath, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let err = '';
    // A test that fails half-way must not leave its server running.
    const reap = () => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL');
    process.once('exit', reap);
    const exited = new Promise((r) =>
      proc.once('exit', (code, signal) => {
        process.off('exit', reap);
        r({ code, signal });
      }),
    );
    let started = false;
    proc.stderr.on('data', (d) => {
      err += d;
      const m = /^vhdx: serving .* on (nbd\S+)$/m.exec(err);
      if (m && !started) {
        started = true;
        resolve({
          proc,
          uri: m[1],
          stderr: () => err,
          exited,
          async stop(signal = 'SIGTERM') {
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
export const unixUri = (path, name = '') => `nbd+unix:///${name}?socket=${path}`;
