import { readFileSync } from 'node:fs';
import { replaceFile } from './replaceFile.ts';

/**
 * When each VM last synced successfully (Unix ms), in a small state file
 * (`hamal_lib_dir/service/last_success.json`), so the metric an operator alerts on
 * (hamal_vm_last_success_timestamp_seconds) survives a restart instead of vanishing with it.
 */
export class LastSuccess {
  private readonly _at: Record<string, number>;
  private _writing: Promise<void> = Promise.resolve();

  constructor(private readonly _file: string) {
    let at: Record<string, number> = {};
    try {
      const parsed = JSON.parse(readFileSync(_file, 'utf8')) as unknown;
      if (parsed && typeof parsed === 'object') at = Object.fromEntries(Object.entries(parsed).filter(([, v]) => Number.isFinite(v)));
    } catch {
      // Missing or damaged: the metric starts empty and fills at the next successes.
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
