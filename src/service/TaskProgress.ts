import type { SyncEvent } from '../streams/SyncEvent.ts';

/** A running task's progress as reported to the control plane, folded from its SyncEvents. */
export interface ProgressReport {
  taskId: string;
  vm: string;
  state: 'running';
  /** Bytes of the disks' capacities and of what is done (read, or skipped as unchanged). */
  totalBytes: number;
  doneBytes: number;
  percent: number;
  storedBytes: number;
  disks: Array<{ id: string; capacity: number; doneBytes: number; state: 'waiting' | 'running' | 'done' | 'failed' }>;
  at: string;
}

export class TaskProgress {
  private readonly _disks = new Map<string, ProgressReport['disks'][number]>();
  private _stored = 0;

  constructor(
    readonly taskId: string,
    readonly vm: string,
  ) {}

  onEvent(e: SyncEvent): void {
    if (e.type === 'snapshot') for (const d of e.disks) this._disks.set(d.id, { id: d.id, capacity: d.capacity, doneBytes: 0, state: 'waiting' });
    else if (e.type === 'disk-start') this._disk(e.disk, e.capacity).state = 'running';
    else if (e.type === 'block') {
      const d = this._disk(e.disk);
      d.doneBytes = Math.min(d.capacity, Math.max(d.doneBytes, e.offset + e.bytes));
      if (e.stored) this._stored += e.bytes;
    } else if (e.type === 'disk-done') Object.assign(this._disk(e.disk), { state: 'done', doneBytes: e.manifest.capacity });
    else if (e.type === 'disk-failed') this._disk(e.disk).state = 'failed';
  }

  private _disk(id: string, capacity = 0) {
    let d = this._disks.get(id);
    if (!d) this._disks.set(id, (d = { id, capacity, doneBytes: 0, state: 'waiting' }));
    if (capacity) d.capacity = capacity;
    return d;
  }

  report(now = new Date()): ProgressReport {
    const disks = [...this._disks.values()].map((d) => ({ ...d }));
    const totalBytes = disks.reduce((a, d) => a + d.capacity, 0);
    const doneBytes = disks.reduce((a, d) => a + d.doneBytes, 0);
    return {
      taskId: this.taskId,
      vm: this.vm,
      state: 'running',
      totalBytes,
      doneBytes,
      percent: totalBytes ? Math.floor((doneBytes / totalBytes) * 1000) / 10 : 0,
      storedBytes: this._stored,
      disks,
      at: now.toISOString(),
    };
  }
}
