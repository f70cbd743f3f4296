import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { SMALL_OBJECT_BYTES, type ObjectStore } from '../sinks/ObjectStore.ts';
import { HamalError, NotFoundError } from '../errors.ts';
import { log } from '../log/Logger.ts';

export interface LockOptions {
  /**
   * How long a lock lives without renewal; the holder renews it every third of this. A
   * crashed holder blocks others at most this long (plus `clockSkewSeconds`).
   * @default 120
   */
  ttlSeconds?: number;
  /** Clocks of the machines sharing a bucket may differ by this much. @default 60 */
  clockSkewSeconds?: number;
  /** Shown to other holders: what this lock is for. */
  purpose?: string;
}

interface LockRecord {
  kind: 'shared' | 'exclusive';
  owner: string;
  purpose: string;
  created: string;
  expires: string;
}

/**
 * Repository locks (docs/format.md, Locks), so several proxies can share a bucket:
 * syncs hold shared locks, prune holds the exclusive one, never together.
 *
 *   locks/exclusive.json         created with a conditional write: one holder at most
 *   locks/shared-<random>.json   one per running sync
 *
 * Each side writes its own lock first, then looks for the other kind: with the read-after
 * -write consistency S3 gives, of two that race at least one sees the other and backs off.
 */
export class RepositoryLock {
  readonly key: string;
  readonly kind: 'shared' | 'exclusive';
  private readonly _store: ObjectStore;
  private readonly _record: LockRecord;
  private readonly _ttl: number;
  private _timer: ReturnType<typeof setInterval> | undefined;
  private _released = false;
  /** When the lock as last stored expires: past it, others no longer see it held. */
  private _storedExpires: number;

  private constructor(store: ObjectStore, key: string, record: LockRecord, ttlMs: number) {
    this._store = store;
    this.key = key;
    this.kind = record.kind;
    this._record = record;
    this._ttl = ttlMs;
    this._storedExpires = Date.parse(record.expires);
  }

  static async acquire(store: ObjectStore, kind: 'shared' | 'exclusive', options: LockOptions = {}): Promise<RepositoryLock> {
    const ttlMs = (options.ttlSeconds ?? 120) * 1000;
    const skewMs = (options.clockSkewSeconds ?? 60) * 1000;
    const now = Date.now();
    const record: LockRecord = {
      kind,
      owner: `${hostname()}/${process.pid}`,
      purpose: options.purpose ?? kind,
      created: new Date(now).toISOString(),
      expires: new Date(now + ttlMs).toISOString(),
    };
    const key = kind === 'exclusive' ? 'locks/exclusive.json' : `locks/shared-${randomBytes(8).toString('hex')}.json`;
    const lock = new RepositoryLock(store, key, record, ttlMs);
    const body = () => Buffer.from(JSON.stringify(record));
    const live = (r: LockRecord) => Date.parse(r.expires) + skewMs > Date.now();

    if (kind === 'exclusive') {
      try {
        await store.put(key, body(), { ifAbsent: true });
      } catch (err) {
        if ((err as HamalError).code !== 'OBJECT_EXISTS') throw err;
        const holder = await readLock(store, key);
        if (holder && live(holder)) throw locked(store, [holder]);
        // A crashed holder's lock has expired: take it over once.
        log.child('lock').warn(`taking over the expired exclusive lock of ${holder?.owner ?? 'an unknown holder'}`);
        await store.delete(key);
        await store.put(key, body(), { ifAbsent: true }).catch((e) => {
          throw (e as HamalError).code === 'OBJECT_EXISTS' ? locked(store, []) : e;
        });
      }
      await store.flush();
      const shared: LockRecord[] = [];
      for await (const k of store.list('locks/shared-')) {
        const r = await readLock(store, k);
        if (r && live(r)) shared.push(r);
      }
      if (shared.length) {
        await lock.release();
        throw locked(store, shared);
      }
    } else {
      await store.put(key, body());
      await store.flush();
      const holder = await readLock(store, 'locks/exclusive.json');
      if (holder && live(holder)) {
        await lock.release();
        throw locked(store, [holder]);
      }
    }
    lock._timer = setInterval(() => void lock._renew(), ttlMs / 3);
    lock._timer.unref?.();
    return lock;
  }

  private async _renew(): Promise<void> {
    if (this._released) return;
    const expires = Date.now() + this._ttl;
    this._record.expires = new Date(expires).toISOString();
    try {
      await this._store.put(this.key, Buffer.from(JSON.stringify(this._record)));
      await this._store.flush();
      this._storedExpires = expires;
    } catch (err) {
      // Retried at the next renewal (a third of the TTL). Once the stored lock has expired,
      // a prune elsewhere may take the exclusive lock: that is worth an error, not a warning.
      const lapsed = Date.now() > this._storedExpires;
      const what = lapsed
        ? `repository lock ${this.key} expired at ${new Date(this._storedExpires).toISOString()} and cannot be renewed: a prune elsewhere may now delete chunks this ${this._record.purpose} still uses`
        : `cannot renew repository lock ${this.key} (it holds until ${new Date(this._storedExpires).toISOString()}; retrying in ${Math.round(this._ttl / 3000)} s)`;
      log.child('lock')[lapsed ? 'error' : 'warn'](what, { error: err as Error });
    }
  }

  /** Fails unless this lock is still the one stored (not expired and taken over meanwhile). */
  async assertHeld(): Promise<void> {
    const stored = await readLock(this._store, this.key);
    if (!stored || stored.owner !== this._record.owner || stored.created !== this._record.created) {
      throw new HamalError('LOCK_LOST', `repository lock ${this.key} was taken over${stored ? ` by ${stored.owner}` : ''}; stopped before deleting anything more`, {
        subject: this.key,
        retryable: true,
      });
    }
  }

  async release(): Promise<void> {
    if (this._released) return;
    this._released = true;
    if (this._timer) clearInterval(this._timer);
    await this._store.delete(this.key);
    await this._store.flush();
  }
}

async function readLock(store: ObjectStore, key: string): Promise<LockRecord | null> {
  try {
    return JSON.parse((await store.get(key, { maxBytes: SMALL_OBJECT_BYTES })).toString('utf8')) as LockRecord;
  } catch (err) {
    if (err instanceof NotFoundError || err instanceof SyntaxError) return null;
    throw err;
  }
}

function locked(store: ObjectStore, holders: LockRecord[]): HamalError {
  const who = holders.map((h) => `${h.purpose} by ${h.owner} until ${h.expires}`).join('; ');
  return new HamalError('REPOSITORY_LOCKED', `repository ${store.location} is in use${who ? `: ${who}` : ''}; try again later`, {
    subject: store.location,
    retryable: true,
  });
}
