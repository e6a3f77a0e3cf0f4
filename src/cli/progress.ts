/** A progress bar on stderr for `-p`, drawn by cli-progress. */
import cliProgress from 'cli-progress';
import { humanSize } from './common.js';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

const BAR_WIDTH = 30;

/**
 * The bar's line, computed here from the exact counts: right on a tiny copy (a few KiB, which a
 * bar counting whole MiB showed at 0%) and on an empty one (0 of 0 is done: 100%), with an ETA
 * only while one can be estimated.
 */
export function progressLine(label: string, unit: 'bytes' | 'entries', done: number, total: number, eta: unknown): string {
  const fraction = total > 0 ? Math.min(1, Math.max(0, done / total)) : 1;
  const filled = Math.round(fraction * BAR_WIDTH);
  const amount = unit === 'bytes' ? `${humanSize(done)}/${humanSize(total)}` : `${done}/${total} BAT entries`;
  const left = typeof eta === 'number' && Number.isFinite(eta) && eta > 0 && fraction < 1 ? ` | ETA ${Math.floor(eta / 60)}:${String(eta % 60).padStart(2, '0')}` : '';
  return `${label} [${'='.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${Math.floor(fraction * 100)}% | ${amount}${left}`;
}

/** A bar labelled `label`, counting bytes or (`unit: 'entries'`, the BAT scan of `check`) entries. */
export function progressBar(enabled: boolean, label: string, unit: 'bytes' | 'entries' = 'bytes'): Progress {
  if (!enabled) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar({
    format: (_options, params) => progressLine(label, unit, params.value, params.total, params.eta),
    hideCursor: true,
    stream: process.stderr,
    noTTYOutput: true,
    notTTYSchedule: 2000,
    etaBuffer: 50,
  });
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.update(done);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
