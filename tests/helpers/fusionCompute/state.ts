// The stand-in's world and the operations on it that routes and test hooks share.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { promises as fsp } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { BLOCK, SITE_ID, SITE_URI, SITE_URN, cbtKey, fcTime, type BackupRes, type Snap, type Task, type Vm, type Volume } from './model.ts';

const run = promisify(execFile);

export class FcState {
  readonly vms: Vm[] = [];
  readonly volumes: Volume[] = [];
  readonly snaps: Snap[] = [];
  readonly tasks = new Map<string, Task>();
  readonly resources: BackupRes[] = [];
  readonly tokens = new Set<string>();
  /** Polls a task answers waiting/running before it ends (0: ends at once). */
  taskPolls = 2;
  hangSnapshots = false;
  shortBitmap = false;
  failSnapshots?: { reason: string; reasonDes: string };
  private _gen = 0;
  private _clockOffset = 0;
  private _vmSeq = 0;
  private _volSeq = 393;
  private _snapSeq = 1687;
  private _taskSeq = 4961;
  private _lastCreateTime = '';

  constructor(readonly dir: string) {}

  now(): number {
    return Date.now() + this._clockOffset;
  }
  advance(seconds: number): void {
    this._clockOffset += seconds * 1000;
  }

  newVm(name: string): Vm {
    const id = `i-${String(++this._vmSeq).padStart(8, '0')}`;
    return { id, urn: `${SITE_URN}:vms:${id}`, uri: `${SITE_URI}/vms/${id}`, uuid: randomUUID(), name };
  }

  /** A CBT creation time distinct from every earlier one (the format has whole seconds). */
  private _createTime(): string {
    let ms = this.now();
    while (fcTime(ms) <= this._lastCreateTime) ms += 1000;
    return (this._lastCreateTime = fcTime(ms));
  }

  async newVolume(name: string, quantityGB: number, vm: Vm): Promise<Volume> {
    const id = String(++this._volSeq);
    const uuid = randomUUID();
    const file = join(this.dir, `fc-vol-${id}.img`);
    await fsp.writeFile(file, '');
    await fsp.truncate(file, quantityGB * 1024 ** 3);
    const urn = `${SITE_URN}:volumes:${id}`;
    const v: Volume = { id, uuid, urn, uri: `${SITE_URI}/volumes/${id}`, name, file, quantityGB, vm, cbt: { createTime: this._createTime(), restart: 0, chg: 0 }, writes: new Map(), chgHistory: new Map() };
    this.volumes.push(v);
    return v;
  }

  async write(v: Volume, offset: number, data: Buffer): Promise<void> {
    const fh = await fsp.open(v.file, 'r+');
    try {
      await fh.write(data, 0, data.length, offset);
    } finally {
      await fh.close();
    }
    const gen = ++this._gen;
    for (let b = Math.floor(offset / BLOCK); b * BLOCK < offset + data.length; b++) v.writes.set(b, gen);
  }

  /** Host reboot: same createTime, the chgID counter starts again from 0. */
  restartCbt(v: Volume): void {
    v.cbt = { createTime: v.cbt.createTime, restart: v.cbt.restart + 1, chg: 0 };
  }
  /** CBT re-created: a new createTime. */
  resetCbt(v: Volume): void {
    v.cbt = { createTime: this._createTime(), restart: 0, chg: 0 };
  }

  newTask(type: string, entityUrn: string, opts: { hang?: boolean; fail?: Task['fail']; onSuccess?: () => void } = {}): Task {
    const id = String(++this._taskSeq);
    const t: Task = { id, urn: `${SITE_URN}:tasks:${id}`, uri: `${SITE_URI}/tasks/${id}`, type, entityUrn, startTime: String(this.now()), polls: 0, hang: !!opts.hang, fail: opts.fail, finished: false, onSuccess: opts.onSuccess };
    this.tasks.set(id, t);
    if (this.taskPolls === 0) this.pollTask(t, false);
    return t;
  }

  /** TaskInfo.status after one more look: waiting, running ..., then success or failed. */
  pollTask(t: Task, count = true): { status: string; progress: number } {
    if (count) t.polls++;
    if (t.hang) return { status: 'running', progress: 50 };
    if (t.polls <= this.taskPolls && !t.finished) return { status: t.polls <= 1 ? 'waiting' : 'running', progress: t.polls <= 1 ? 0 : 50 };
    if (!t.finished) {
      t.finished = true;
      if (!t.fail) t.onSuccess?.();
    }
    return t.fail ? { status: 'failed', progress: 100 } : { status: 'success', progress: 100 };
  }

  /** A VM snapshot: frozen copies of the VM's volumes, child of the VM's current snapshot. */
  async newSnapshot(vm: Vm, name: string, type: string, description = '', parent = this.current(vm)): Promise<Snap> {
    const id = String(++this._snapSeq);
    const snap: Snap = { id, name, description, type, vm, status: 'creating', parent, createTime: fcTime(this.now()), urn: `${vm.urn}:snapshots:${id}`, uri: `${vm.uri}/snapshots/${id}`, vols: new Map() };
    for (const v of this.volumes.filter((x) => x.vm === vm)) {
      const file = `${v.file}.snap-${id}`;
      await run('cp', ['--sparse=always', v.file, file]);
      let cbt;
      if (type === 'CBTbackup') {
        const chgID = String(++v.cbt.chg);
        v.chgHistory.set(cbtKey(v.cbt.createTime, v.cbt.restart, chgID), this._gen);
        cbt = { createTime: v.cbt.createTime, restart: v.cbt.restart, chgID };
      }
      snap.vols.set(v.urn, { volume: v, file, snapUuid: randomUUID(), cbt, gen: this._gen });
    }
    this.snaps.push(snap);
    return snap;
  }

  /** The VM's current snapshot: the last one made (QueryVmSnapshotResp.currentSnapshot). */
  current(vm: Vm): Snap | undefined {
    return this.snaps.filter((s) => s.vm === vm).at(-1);
  }

  /** Removes a snapshot; its children move up to its parent. */
  async dropSnapshot(s: Snap): Promise<void> {
    this.snaps.splice(this.snaps.indexOf(s), 1);
    for (const c of this.snaps) if (c.parent === s) c.parent = s.parent;
    for (const v of s.vols.values()) await fsp.rm(v.file, { force: true });
  }

  openResources(): BackupRes[] {
    const now = this.now();
    return this.resources.filter((r) => !r.deleted && r.expiresAt > now);
  }
}

export { SITE_ID };
