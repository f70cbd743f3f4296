/**
 * A counting semaphore: at most `size` holders at once, FIFO. The pipeline bounds memory
 * with the concurrency of one mergeMap and uses Slots inside it to cap each phase
 * (reads, writes) separately, so a slow phase holds its blocks instead of letting the
 * other phase queue more of them.
 */
export class Slots {
  readonly size: number;
  private _free: number;
  private readonly _waiters: Array<() => void> = [];

  constructor(size: number, name = 'slots') {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`${name} must be an integer of at least 1, got ${size}`);
    }
    this.size = size;
    this._free = size;
  }

  /** Holders right now. */
  get used(): number {
    return this.size - this._free;
  }

  async use<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Waits for a slot; the returned function gives it back (once, whatever happens). */
  async acquire(): Promise<() => void> {
    if (this._free > 0) this._free--;
    else await new Promise<void>((resolve) => this._waiters.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const waiter = this._waiters.shift();
      if (waiter) waiter();
      else this._free++;
    };
  }
}
