import { HamalError, NotFoundError } from '../errors.ts';
import { SMALL_OBJECT_BYTES, type ObjectStore } from '../sinks/ObjectStore.ts';

/**
 * The right to write one task's versions, granted by the control plane with an epoch that
 * grows each time the task moves to another proxy (docs/control-plane.md, Leases).
 */
export interface Lease {
  taskId: string;
  epoch: number;
  /** The proxy holding it ([mass] hyper_exporter_id). */
  holder: string;
}

/**
 * Fencing in the repository (docs/format.md, Leases): each disk written under a lease has
 * `vms/<vm>/disks/<disk>/lease.json` naming the newest epoch that claimed it. A holder
 * claims it when its sync of the disk starts and checks it before each partial index and
 * before its manifest is written: once a newer epoch claimed the disk, the old holder
 * writes nothing more there, whatever its own clock or network think.
 */
export class LeaseFence {
  constructor(
    private readonly _store: ObjectStore,
    private readonly _key: string,
    private readonly _lease: Lease,
    private readonly _what: string,
  ) {}

  private async _current(): Promise<Lease | null> {
    try {
      const doc = JSON.parse((await this._store.get(this._key, { maxBytes: SMALL_OBJECT_BYTES })).toString('utf8')) as Lease;
      return Number.isSafeInteger(doc?.epoch) ? doc : null;
    } catch (err) {
      if (err instanceof NotFoundError || err instanceof SyntaxError) return null;
      throw err;
    }
  }

  private _fenced(by: Lease): HamalError {
    return new HamalError(
      'LEASE_FENCED',
      `${this._what}: task ${this._lease.taskId} lease epoch ${this._lease.epoch} of proxy ${this._lease.holder} was taken over by epoch ${by.epoch} of proxy ${by.holder}; this proxy writes nothing more there`,
      { subject: this._key },
    );
  }

  /** Claims the disk for this lease; fails when a newer epoch (or another holder of this one) has it. */
  async claim(): Promise<void> {
    const now = await this._current();
    if (now && (now.epoch > this._lease.epoch || (now.epoch === this._lease.epoch && now.holder !== this._lease.holder))) throw this._fenced(now);
    await this._store.put(this._key, Buffer.from(JSON.stringify({ ...this._lease, claimedAt: new Date().toISOString() })));
    await this._store.flush();
  }

  /** Fails when another lease claimed the disk since. */
  async check(): Promise<void> {
    const now = await this._current();
    if (!now || now.epoch !== this._lease.epoch || now.holder !== this._lease.holder) {
      throw this._fenced(now ?? { taskId: this._lease.taskId, epoch: NaN, holder: '(lease record removed)' });
    }
  }
}
