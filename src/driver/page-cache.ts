/**
 * Pages of an on-disk table (the BAT, sector bitmaps) in a bounded LRU map, shared by BatCache
 * and SectorBitmaps. Concurrent loads of one page share one read. A change marks a unit dirty
 * (a 4 KiB BAT sector, a bitmap page: what a commit writes through the log) and pins its page
 * in the cache until a commit has written it (`release`), so no change is evicted unwritten.
 * Memory is bounded by `maxPages` clean pages, plus the pinned ones.
 */

/** A 4 KiB unit of a table as it must be written to the file. */
export interface TableSector {
  fileOffset: number;
  data: Uint8Array;
}

/** Dirty units handed to a commit: their bytes, and the ids `release` needs. */
export interface DirtyBatch {
  sectors: TableSector[];
  ids: number[];
}

export class PageCache<P> {
  private readonly pages = new Map<number, P>();
  private readonly loading = new Map<number, Promise<P>>();
  private lastKey = -1;
  /** Units changed in memory and not yet handed to a commit. */
  private readonly dirty = new Set<number>();
  /** Pages that must not be evicted: count of their dirty or committing units. */
  private readonly pinned = new Map<number, number>();

  /**
   * @param maxPages pages kept at most, pinned ones aside
   * @param read reads (and validates) page `key` from the file
   * @param unitsPerPage dirty units per page (16 BAT sectors in a 64 KiB page; 1 for bitmaps)
   */
  constructor(
    private readonly maxPages: number,
    private readonly read: (key: number) => Promise<P>,
    private readonly unitsPerPage = 1,
  ) {}

  /** Page `key` when cached (made the most recently used), else undefined: lets hot paths skip an await. */
  cached(key: number): P | undefined {
    const page = this.pages.get(key);
    if (page !== undefined && key !== this.lastKey) {
      // Map iteration order is insertion order: re-inserting makes it the newest.
      this.pages.delete(key);
      this.pages.set(key, page);
      this.lastKey = key;
    }
    return page;
  }

  /** Page `key`, read when not cached. */
  async get(key: number): Promise<P> {
    return this.cached(key) ?? (await this.load(key));
  }

  /**
   * Change page `key` in place: `apply` edits it and returns the units it changed, which are dirty
   * from then on. `apply` runs synchronously on the page that is in the cache: a page read for
   * us may have been evicted by other loads (while clean) before this resumed, and a change made
   * to a page outside the cache would be lost, so it is put back first.
   */
  async change(key: number, apply: (page: P) => number | number[]): Promise<void> {
    const loaded = this.cached(key) ?? (await this.load(key));
    let page = this.pages.get(key);
    if (page === undefined) {
      this.insert(key, loaded);
      page = loaded;
    }
    const units = apply(page);
    for (const unit of typeof units === 'number' ? [units] : units) this.markDirty(unit);
  }

  private markDirty(unit: number): void {
    if (this.dirty.has(unit)) return;
    this.dirty.add(unit);
    const key = Math.floor(unit / this.unitsPerPage);
    this.pinned.set(key, (this.pinned.get(key) ?? 0) + 1);
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  isDirty(unit: number): boolean {
    return this.dirty.has(unit);
  }

  /**
   * Up to `max` dirty units, as `copy` makes them from their (pinned) pages: those of `first`
   * that are dirty, then the others lowest first, leaving out those in `hold`. They stay pinned
   * until `release`. When `copy` throws, no unit is taken.
   */
  takeDirty(max: number, copy: (unit: number, page: P) => TableSector, first: readonly number[] = [], hold?: ReadonlySet<number>): DirtyBatch {
    const firstDirty = new Set(first.filter((u) => this.dirty.has(u)));
    const rest = [...this.dirty].filter((u) => !firstDirty.has(u) && !hold?.has(u)).sort((a, b) => a - b);
    const ids = [...firstDirty, ...rest].slice(0, Math.max(0, max));
    const sectors = ids.map((unit) => copy(unit, this.pages.get(Math.floor(unit / this.unitsPerPage))!));
    for (const unit of ids) this.dirty.delete(unit);
    return { sectors, ids };
  }

  /** Unpin units handed out by `takeDirty` once they are in the file, or make them dirty again on failure. */
  release(batch: DirtyBatch, applied: boolean): void {
    for (const unit of batch.ids) {
      if (!applied && !this.dirty.has(unit)) {
        this.dirty.add(unit); // still pinned: the count carries over
        continue;
      }
      const key = Math.floor(unit / this.unitsPerPage);
      const n = (this.pinned.get(key) ?? 1) - 1;
      if (n > 0) this.pinned.set(key, n);
      else this.pinned.delete(key);
    }
  }

  private load(key: number): Promise<P> {
    let p = this.loading.get(key);
    if (!p) {
      p = this.read(key)
        .then((page) => {
          // A copy already cached (put back by `change`) wins: it may hold changes.
          const existing = this.pages.get(key);
          if (existing !== undefined) return existing;
          this.insert(key, page);
          return page;
        })
        .finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }

  private insert(key: number, page: P): void {
    if (this.pages.size >= this.maxPages) {
      for (const candidate of this.pages.keys()) {
        if (!this.pinned.has(candidate)) {
          this.pages.delete(candidate);
          break;
        }
      }
    }
    this.pages.set(key, page);
  }
}
