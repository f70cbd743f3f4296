import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { HamalError } from '../errors.ts';
import type { ResultReport } from './ControlPlane.ts';
import { processGone, thisProcess, type ProcessIdentity } from '../processIdentity.ts';

/** A task accepted from the control plane, as the ledger keeps it. */
export interface LedgerEntry {
  /** Empty for a nonce carried over from the nonce list of 0.1.0 (only the nonce was kept). */
  id: string;
  epoch?: number;
  expiresAtMs: number;
  /** The process that accepted it: while it runs, no other process on this lib dir runs the task. */
  owner?: ProcessIdentity;
  /** Set once the task ended: what the control plane is told, again if it asks again. */
  result?: ResultReport;
  /** Kept until then (a day past the later of its expiry and its end). */
  keepUntilMs?: number;
}

/**
 * What a nonce is to the ledger: never seen; accepted by this process (`mine`) or by another
 * that still runs (`elsewhere`); accepted by a process gone before it ended (`unfinished`);
 * ended, with its result.
 */
export type Claim =
  | { kind: 'new' | 'mine' | 'unfinished' }
  | { kind: 'elsewhere'; owner: ProcessIdentity }
  | { kind: 'finished'; result: ResultReport };

export interface TaskLedgerOptions {
  /** An entry (and the result in it) is kept this long past the later of its task's expiresAt and its end. @default 24 h */
  keepMs?: number;
  /** The nonce list of 0.1.0 (`service/nonces.json`): taken over at first use, then removed. */
  legacyNonces?: string;
}

const DAY_MS = 24 * 3600_000;
/** Old entries are swept at most this often (a sweep reads every entry). */
const SWEEP_EVERY_MS = 10 * 60_000;

/**
 * The tasks this proxy accepted, one file per nonce in a 0700 folder
 * (`hamal_lib_dir/service/tasks/`): created exclusively when the nonce is first accepted
 * (so a nonce is taken once, by one process, across restarts), replaced whole by one
 * holding the result when the task ends. The control plane lists a task until it has its
 * result (docs/control-plane.md): a task listed again, after a restart or an answer it
 * lost, is answered from here instead of being run twice or called a replay. Kept a day
 * past the task's expiry, so even an expired task listed again gets its own result.
 */
export class TaskLedger {
  private readonly _claimed = new Map<string, { file: string; entry: LedgerEntry }>();
  private _ready?: Promise<void>;
  private _swept = 0;

  constructor(
    private readonly _dir: string,
    private readonly _o: TaskLedgerOptions = {},
  ) {}

  /** What `nonce` is to this proxy, without claiming it. */
  async lookup(nonce: string): Promise<Claim> {
    await this._prepare();
    const entry = await this._read(this._file(nonce));
    if (entry === null) return { kind: 'new' };
    return entry?.result ? { kind: 'finished', result: entry.result } : { kind: 'unfinished' };
  }

  /**
   * Claims `nonce` for a task about to run: `new` (first seen) and `unfinished` (its
   * process ended before the task did) are claimed for this process; `mine`, `elsewhere`
   * and `finished` are not.
   */
  async claim(nonce: string, entry: Omit<LedgerEntry, 'result' | 'owner'>, now: number): Promise<Claim> {
    await this._prepare();
    await this._sweep(now);
    const file = this._file(nonce);
    const mine: LedgerEntry = { ...entry, owner: thisProcess() };
    for (let attempt = 0; attempt < 50; attempt++) {
      // Written whole under a temporary name, then linked: the name appears complete or
      // not at all, and only one process's link succeeds.
      if (await this._write(file, mine, 'link')) {
        this._claimed.set(key(entry.id, entry.epoch), { file, entry: mine });
        return { kind: 'new' };
      }
      const seen = await this._judge(file);
      if (seen.kind === 'new') continue; // gone meanwhile: link again
      if (seen.kind !== 'unfinished') return seen;
      // Its process is gone (or unknown, or the entry is damaged): taken over under a
      // lock folder, judged again there, so of two processes doing this at once one wins.
      const lock = `${file}.lock`;
      if (!(await this._lock(lock))) continue;
      try {
        const again = await this._judge(file);
        if (again.kind === 'new') continue;
        if (again.kind !== 'unfinished') return again;
        await this._write(file, mine, 'rename');
        this._claimed.set(key(entry.id, entry.epoch), { file, entry: mine });
        return { kind: 'unfinished' };
      } finally {
        await fsp.rmdir(lock).catch(() => {});
      }
    }
    throw this._error(file, new Error('its takeover lock stayed held'));
  }

  /** What the entry at `file` says, as a claim would see it (`unfinished`: ours to take over; `new`: none). */
  private async _judge(file: string): Promise<Claim> {
    const seen = await this._read(file);
    if (seen === null) return { kind: 'new' };
    if (seen?.result) return { kind: 'finished', result: seen.result };
    if (seen?.owner && processGone(seen.owner) === false) {
      return seen.owner.pid === process.pid ? { kind: 'mine' } : { kind: 'elsewhere', owner: seen.owner };
    }
    return { kind: 'unfinished' };
  }

  /** Takes the lock folder, or waits a little and says no (a lock older than 30 s is a dead holder's: removed). */
  private async _lock(lock: string): Promise<boolean> {
    try {
      await fsp.mkdir(lock, { mode: 0o700 });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw this._error(lock, err);
      const st = await fsp.lstat(lock).catch(() => null);
      if (st && Date.now() - st.mtimeMs > 30_000) await fsp.rmdir(lock).catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
      return false;
    }
  }

  /** Records the result of a task claimed by this process; other results are not its to keep. */
  async finish(result: ResultReport, now = Date.now()): Promise<void> {
    const claimed = this._claimed.get(key(result.taskId, result.epoch));
    if (!claimed) return;
    const keepUntilMs = Math.max(claimed.entry.expiresAtMs, now) + (this._o.keepMs ?? DAY_MS);
    // Written even when the entry went meanwhile (a sweep, an operator): the result is what counts.
    await this._write(claimed.file, { ...claimed.entry, result, keepUntilMs }, 'rename');
    this._claimed.delete(key(result.taskId, result.epoch));
  }

  private _file(nonce: string): string {
    // Hashed: a nonce is the control plane's string, not a file name.
    return join(this._dir, `${createHash('sha256').update(nonce).digest('hex').slice(0, 40)}.json`);
  }

  /**
   * The entry in `file`; null when there is none; undefined when it is damaged (not JSON).
   * Never through a link, never blocking on a FIFO: anything but a regular file is an error.
   */
  private async _read(file: string): Promise<LedgerEntry | null | undefined> {
    let text: string;
    try {
      const fh = await fsp.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
      try {
        if (!(await fh.stat()).isFile()) throw new Error('not a regular file');
        text = await fh.readFile('utf8');
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw this._error(file, err);
    }
    try {
      const e = JSON.parse(text) as LedgerEntry;
      return typeof e === 'object' && e && Number.isFinite(e.expiresAtMs) ? e : undefined;
    } catch {
      return undefined;
    }
  }

  /** Writes `entry` to a temporary file, then links it to `file` (false: `file` exists) or renames it over. */
  private async _write(file: string, entry: LedgerEntry, how: 'link' | 'rename'): Promise<boolean> {
    const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      const fh = await fsp.open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(JSON.stringify(entry));
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (how === 'rename') await fsp.rename(tmp, file);
      else await fsp.link(tmp, file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && how === 'link') return false;
      throw this._error(file, err);
    } finally {
      await fsp.rm(tmp, { force: true }).catch(() => {});
    }
  }

  private _prepare(): Promise<void> {
    this._ready ??= (async () => {
      await fsp.mkdir(this._dir, { recursive: true, mode: 0o700 });
      if (this._o.legacyNonces) await this._takeOver(this._o.legacyNonces);
    })().catch((err) => {
      this._ready = undefined; // tried again at the next poll
      throw err;
    });
    return this._ready;
  }

  /** 0.1.0 kept `{ nonce: expiresAtMs }` in one file: each becomes an entry with no id or result. */
  private async _takeOver(legacy: string): Promise<void> {
    let old: Record<string, number>;
    try {
      old = JSON.parse(await fsp.readFile(legacy, 'utf8')) as Record<string, number>;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw this._error(legacy, err);
    }
    // Linked like any claim: an entry already there (a takeover cut short) is kept.
    for (const [nonce, expiresAtMs] of Object.entries(old)) await this._write(this._file(nonce), { id: '', expiresAtMs }, 'link');
    await fsp.rm(legacy, { force: true });
  }

  private async _sweep(now: number): Promise<void> {
    if (now - this._swept < SWEEP_EVERY_MS) return;
    this._swept = now;
    const keep = this._o.keepMs ?? DAY_MS;
    const mine = new Set([...this._claimed.values()].map((c) => c.file));
    for (const name of await fsp.readdir(this._dir)) {
      const file = join(this._dir, name);
      if (mine.has(file)) continue;
      // One odd file (a link, a FIFO, a folder) is skipped, not a reason to stop polling.
      const e = name.endsWith('.json') ? await this._read(file).catch(() => undefined) : undefined;
      const until = e ? (e.keepUntilMs ?? e.expiresAtMs + keep) : ((await fsp.lstat(file).catch(() => null))?.mtimeMs ?? Infinity) + keep;
      if (until < now) await fsp.rm(file, { force: true }).catch(() => {});
    }
  }

  private _error(file: string, err: unknown): HamalError {
    return new HamalError('TASK_LEDGER', `task ledger ${file}: ${(err as Error).message}`, { subject: file, cause: err });
  }
}

function key(id: string, epoch: number | undefined): string {
  return `${id}#${epoch ?? ''}`;
}
