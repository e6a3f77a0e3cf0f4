// `vhdx web` run as a real process, for the tests of the command and of the page it serves.
import { spawn } from 'node:child_process';
import { cliPath } from './env.js';

/**
 * Start `vhdx web --port 0 ARGS...` and wait for the address it prints. Returns { url, stop }:
 * stop() sends `signal` and resolves to { code, signal, stderr } once it exited.
 */
export async function startVhdxWeb(
  args: readonly string[] = [],
): Promise<{ url: string; stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> }> {
  const child = spawn(process.execPath, [cliPath, 'web', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d;
      const m = /serving the web page on (http:\/\/\S+\/) /.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`vhdx web exited ${code} before serving: ${stderr}`)));
  });
  return {
    url,
    stop(signal = 'SIGTERM') {
      child.kill(signal);
      return exited;
    },
  };
}
