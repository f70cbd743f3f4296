/**
 * One resource per disk of a snapshot (an NBD server, a data channel), made on the first
 * read and shared by the later ones; the snapshot stops them all when it is released.
 */
export class PerDisk<T> {
  private readonly _made = new Map<string, Promise<T>>();
  /** Stops under way: stopAll waits for them too (a channel's release before the snapshot's). */
  private readonly _stopping = new Set<Promise<unknown>>();

  get(disk: string, make: () => Promise<T>): Promise<T> {
    let p = this._made.get(disk);
    if (!p) this._made.set(disk, (p = make()));
    return p;
  }

  /** Stops the one of `disk`, if it was made, and forgets it (a later `get` makes a new one). */
  async stop(disk: string, stop: (resource: T) => unknown): Promise<void> {
    const p = this._made.get(disk);
    if (!p) return;
    this._made.delete(disk);
    const stopping = p.then((r) => stop(r)).catch(() => undefined);
    this._stopping.add(stopping);
    await stopping;
    this._stopping.delete(stopping);
  }

  /** Waits for those still being made, then stops each one that was; failures are ignored. */
  async stopAll(stop: (resource: T) => unknown): Promise<void> {
    const made = await Promise.allSettled(this._made.values());
    await Promise.allSettled([...this._stopping, ...made.map((m) => (m.status === 'fulfilled' ? stop(m.value) : undefined))]);
  }
}
