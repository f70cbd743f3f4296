import { readFileSync, renameSync } from 'node:fs';
import { log } from '../log/Logger.ts';
import { replaceFile } from './replaceFile.ts';

/**
 * When each VM last synced successfully (Unix ms), in a small state file
 * (`hamal_lib_dir/service/last_success.json`), so the metric an operator alerts on
 * (hamal_vm_last_success_timestamp_seconds) survives a restart instead of vanishing with it.
 * A VM no longer synced here is forgotten by removing its key from the file (serve stopped).
 */
export class LastSuccess {
  private readonly _at: Record<string, number>;
  private _writing: Promise<void> = Promise.resolve();

  constructor(private readonly _file: string) {
    let at: Record<string, number> = {};
    try {
      const parsed = JSON.parse(readFileSync(_file, 'utf8')) as unknown;
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
      at = Object.fromEntries(Object.entries(parsed).filter(([, v]) => Number.isFinite(v)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        // Kept aside, not overwritten: the times in it can be put back by hand.
        const aside = `${_file}.damaged-${Date.now()}`;
        try {
          renameSync(_file, aside);
        } catch {
          // unreadable and immovable: the next record replaces it
        }
        log.child('service').warn(`${_file} is damaged (${(err as Error).message}); moved to ${aside}, the last-success times start afresh`);
      }
    }
    this._at = at;
  }

  all(): Readonly<Record<string, number>> {
    return this._at;
  }

  /** Records a success; writes are serialised, the file ends with the latest times. */
  record(vm: string, atMs: number): Promise<void> {
    this._at[vm] = Math.max(atMs, this._at[vm] ?? 0);
    const snapshot = JSON.stringify(this._at);
    this._writing = this._writing.catch(() => {}).then(() => replaceFile(this._file, snapshot));
    return this._writing;
  }
}
