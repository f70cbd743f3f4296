import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import type { ResultReport } from './ControlPlane.ts';

/**
 * Results not yet delivered to the control plane. The file outbox keeps each in
 * `<dir>/<taskId>.json` (written to a temporary name, fsynced, renamed) until the control
 * plane took it, so a result survives the control plane being down and the proxy being
 * restarted. The directory is created 0700 and each file 0600. Synchronous: results are rare and small, and the service graph stays
 * testable in virtual time.
 */
export interface Outbox {
  save(r: ResultReport): void;
  remove(taskId: string): void;
  pending(): ResultReport[];
}

export class MemoryOutbox implements Outbox {
  private readonly _items = new Map<string, ResultReport>();
  save(r: ResultReport): void {
    this._items.set(r.taskId, r);
  }
  remove(taskId: string): void {
    this._items.delete(taskId);
  }
  pending(): ResultReport[] {
    return [...this._items.values()];
  }
}

export class FileOutbox implements Outbox {
  constructor(private readonly _dir: string) {
    mkdirSync(_dir, { recursive: true, mode: 0o700 });
  }

  private _file(taskId: string): string {
    return join(this._dir, `${encodeURIComponent(taskId)}.json`);
  }

  save(r: ResultReport): void {
    const tmp = `${this._file(r.taskId)}.tmp`;
    // Results name VMs and errors: the owner's alone, whatever the umask (mode only applies
    // to a new file, so a stale temporary one goes first).
    rmSync(tmp, { force: true });
    writeFileSync(tmp, JSON.stringify(r), { mode: 0o600, flag: 'wx' }); // wx: never through a link planted there
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this._file(r.taskId));
  }

  remove(taskId: string): void {
    try {
      unlinkSync(this._file(taskId));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  pending(): ResultReport[] {
    return readdirSync(this._dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => JSON.parse(readFileSync(join(this._dir, f), 'utf8')) as ResultReport)
      .sort((a, b) => a.at.localeCompare(b.at));
  }
}
