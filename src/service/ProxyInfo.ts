import { replaceFile } from './replaceFile.ts';

export interface ProxyInfoState {
  id: string;
  version: string;
  pid: number;
  mode: 'control-plane' | 'standalone';
  startedAt: string;
  state: 'starting' | 'running' | 'stopping' | 'stopped';
  updatedAt: string;
}

/** `hamal_info_path`: who this proxy is and what it is doing, replaced atomically at each change. */
export class ProxyInfo {
  constructor(
    private readonly _path: string,
    private _state: Omit<ProxyInfoState, 'updatedAt'>,
  ) {}

  private _writing: Promise<void> = Promise.resolve();

  /** Records a new state; writes are serialised, so the file ends with the last state set. */
  set(state: ProxyInfoState['state']): Promise<void> {
    this._state = { ...this._state, state };
    const snapshot = { ...this._state, updatedAt: new Date().toISOString() };
    this._writing = this._writing.catch(() => {}).then(() => replaceFile(this._path, JSON.stringify(snapshot, null, 2) + '\n'));
    return this._writing;
  }
}
