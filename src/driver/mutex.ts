/** A promise-based mutex: callers queue in order; `run` releases even when the task throws. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

/**
 * One mutex per key, made on demand and dropped when idle, so that a disk's many blocks cost
 * memory only while they are busy.
 */
export class KeyedMutex<K> {
  private readonly tails = new Map<K, Promise<void>>();

  run<T>(key: K, task: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const result = prev.then(task);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }
}

/**
 * Operations in flight, counted in two generations: `enter` counts one in the current
 * generation (and returns which), `leave` uncounts it, and `drain` starts a new generation and
 * resolves once every operation counted in the old one has left. One drain at a time. Costs two
 * increments per operation and no allocation, for hot paths that a rare exclusive step must wait for.
 */
export class InFlight {
  private readonly counts: [number, number] = [0, 0];
  private current: 0 | 1 = 0;
  private drained: (() => void) | null = null;

  enter(): 0 | 1 {
    this.counts[this.current]++;
    return this.current;
  }

  leave(generation: 0 | 1): void {
    if (--this.counts[generation] === 0 && generation !== this.current && this.drained) {
      const wake = this.drained;
      this.drained = null;
      wake();
    }
  }

  /** Start a new generation; resolves when the old one is empty. */
  drain(): Promise<void> {
    const old = this.current;
    this.current = old === 0 ? 1 : 0;
    if (this.counts[old] === 0) return Promise.resolve();
    return new Promise<void>((resolve) => (this.drained = resolve));
  }
}
