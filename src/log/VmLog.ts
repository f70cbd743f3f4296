import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { LOG_DIR_MODE, LogFile, type Rotation } from './LogFile.ts';
import { scopeSink } from './Logger.ts';
import { vmLogFileName } from './vmLogFileName.ts';

/**
 * The log of one VM's sync, `vm-<name>_Agent-<uuid>.log` in the log directory: every line
 * logged inside `run` (whatever component logs it) also goes there. The VM's UUID is known
 * once the source found the VM: lines before that wait in memory; a sync that fails before
 * (login refused, VM not found) is logged under the name it was asked for and uuid
 * `unresolved`.
 */
export class VmLog {
  private _file?: LogFile;
  private _pending: string[] = [];

  constructor(
    private readonly _dir: string,
    private readonly _selector: string,
    private readonly _rotation: Rotation = {},
  ) {}

  /** Names the file once the VM is known. */
  identify(name: string, uuid: string): void {
    if (this._file) return;
    this._open(name, uuid);
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    return scopeSink.run((line) => this.note(line), fn);
  }

  /** A line for this VM's log only (the service logs the same event its own way). */
  note(line: string): void {
    if (this._file) this._file.write(line);
    else this._pending.push(line);
  }

  get path(): string | undefined {
    return this._file?.path;
  }

  async close(): Promise<void> {
    if (!this._file) this._open(this._selector, 'unresolved');
    await this._file!.close();
  }

  private _open(name: string, uuid: string): void {
    mkdirSync(this._dir, { recursive: true, mode: LOG_DIR_MODE });
    this._file = new LogFile(join(this._dir, vmLogFileName(name, uuid)), this._rotation);
    for (const line of this._pending) this._file.write(line);
    this._pending = [];
  }
}
