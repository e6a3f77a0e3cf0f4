/** A progress bar on stderr for `-p`, drawn by cli-progress. */
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

/**
 * A bar labelled `label`. Progress comes in bytes and shows as MiB, or with `unit: 'entries'`
 * as a plain count (the BAT scan of `check`).
 */
export function progressBar(enabled: boolean, label: string, unit: 'bytes' | 'entries' = 'bytes'): Progress {
  if (!enabled) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {value}/{total}${unit === 'bytes' ? ' MiB' : ' BAT entries'} | {eta_formatted}`,
      hideCursor: true,
      stream: process.stderr,
      noTTYOutput: true,
      notTTYSchedule: 2000,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  const MiB = unit === 'bytes' ? 1024 * 1024 : 1;
  return {
    update(done, total) {
      if (!started) {
        bar.start(Math.ceil(total / MiB), 0);
        started = true;
      }
      bar.update(Math.floor(done / MiB));
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
