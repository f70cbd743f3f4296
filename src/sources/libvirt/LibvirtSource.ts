import { EMPTY, Observable } from 'rxjs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DiskInfo, Snapshot, SnapshotOptions, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { NbdClient } from '../../nbd/NbdClient.ts';
import { Virsh, type VirshOptions } from './Virsh.ts';
import { parseDomainXml, type DomainDisk } from './domainXml.ts';
import { BackupJob, jobKey, type JobDisk } from './BackupJob.ts';

export interface LibvirtSourceOptions {
  connection: Omit<VirshOptions, 'workDir'>;
  /** Private directories (NBD socket, scratch files, auth file) go here: hamal_lib_dir. @default os.tmpdir() */
  workDir?: string;
  /** Largest NBD read. @default 4 MiB */
  maxReadBytes?: number;
}

/** Checkpoints hamal makes carry this prefix; the others are the operator's and never touched. */
export const CHECKPOINT_PREFIX = 'hamal-';

/** How far one block status request reaches; QEMU may answer for less. */
const STATUS_SPAN = 1 << 30;

/**
 * KVM domains through libvirt's backup API: each sync is a pull-mode backup job (NBD
 * exports of the disks as they were at its start) with a new checkpoint made atomically
 * with it; a disk whose newest version names a checkpoint the domain still has is read
 * incrementally, through QEMU's dirty bitmap since that checkpoint, the others in full
 * through base:allocation. A disk's changeId is the checkpoint of its version. Checkpoints
 * no version needs any more are deleted at the end: one chain per domain, not unbounded.
 * Running, persistent domains only: a shut-off one has no QEMU to serve it (refused).
 */
export class LibvirtSource implements Source {
  readonly platform = 'libvirt';
  constructor(private readonly _o: LibvirtSourceOptions) {}

  /** syncVm gives `since` (each disk's newest changeId): the backup job is planned from it. */
  readonly needsSince = true;

  async snapshot(selector: string, options: SnapshotOptions = {}): Promise<Snapshot> {
    const workDir = this._o.workDir ?? tmpdir();
    const uri = this._o.connection.uri;
    // The NBD socket and scratch files are on this host: QEMU must run here too.
    if (!/^[a-z0-9+]+:\/\/\/[^/]/.test(uri)) throw new HamalError('LIBVIRT_REMOTE', `libvirt URI ${uri} names another host: hamal reads a domain's backup on the host it runs on (install it beside libvirtd, URI qemu:///system)`, { subject: 'source.connection.uri' });
    const virsh = new Virsh({ ...this._o.connection, workDir });
    const sub = log.child('libvirt');
    try {
      const info = await virsh.run(['dominfo', '--domain', selector], `domain ${selector}`);
      const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(info)?.[1]?.trim();
      const name = field('Name') ?? selector;
      if (field('Persistent') === 'no') throw new HamalError('LIBVIRT_TRANSIENT', `domain ${name} is transient: checkpoints need a persistent domain (virsh define it)`, { subject: name });
      if (field('State') !== 'running') throw new HamalError('LIBVIRT_NOT_RUNNING', `domain ${name} is ${field('State') ?? 'not running'}: hamal backs up running domains only (start it, or sync its images with the local platform)`, { subject: name });
      const dom = parseDomainXml(await virsh.run(['dumpxml', '--domain', name], `XML of domain ${name}`), `domain ${name}`);
      const disks = dom.disks.filter((d) => !d.notSyncable);
      for (const d of dom.disks.filter((x) => x.notSyncable)) sub.warn(`domain ${name}: disk ${d.target || '?'}: ${d.notSyncable}; not synced`);
      if (!disks.length) throw new HamalError('LIBVIRT_NO_DISKS', `domain ${name} has no disk hamal can back up`, { subject: name });
      if (!dom.qemuUser) throw new HamalError('LIBVIRT_NO_DAC', `domain ${name}: its live XML names no DAC seclabel, so hamal cannot tell which user QEMU runs as`, { subject: name });
      const checkpoints = (await virsh.run(['checkpoint-list', '--domain', name, '--name'], `checkpoints of domain ${name}`)).split('\n').map((l) => l.trim()).filter(Boolean);
      const skipped = [...dom.disks.filter((d) => d.notSyncable).map((d) => d.target).filter(Boolean), ...dom.others];
      const wanted = planDisks(disks, checkpoints, options.since ?? {});
      const { job, plan, broken } = await this._jobFor(virsh, name, jobKey(dom.uuid || name), wanted, skipped, checkpoints, options, workDir, dom.qemuUser);
      const clients = new Map<string, NbdClient>();
      try {
        for (const p of plan) {
          const contexts = ['base:allocation', ...(p.incremental ? [`qemu:dirty-bitmap:backup-${p.disk.target}`] : [])];
          clients.set(p.disk.target, await NbdClient.connect(job.socket, { exportName: p.disk.target, metaContexts: contexts, maxRequestBytes: this._o.maxReadBytes }));
        }
        return new LibvirtSnapshot(virsh, dom.uuid || name, name, job, plan, clients, checkpoints, skipped, options.since ?? {}, broken);
      } catch (err) {
        await Promise.allSettled([...clients.values()].map((c) => c.close()));
        await job.end().catch(() => {});
        await deleteCheckpoint(virsh, name, job.checkpoint).catch(() => {});
        throw err;
      }
    } catch (err) {
      await virsh.close();
      throw err;
    }
  }

  /**
   * The backup job this sync reads: the one a killed run left when it reads what this sync
   * would (its checkpoint one an interrupted sync's journal names; each disk from the same
   * starting checkpoint, or already committed from it), so the journal resumes block for
   * block; otherwise
   * a leftover job of ours is ended, what killed runs left in hamal_lib_dir removed, and a
   * new job started.
   */
  private async _jobFor(virsh: Virsh, name: string, key: string, plan: JobDisk[], skipped: string[], checkpoints: string[], options: SnapshotOptions, workDir: string, owner: { uid: number; gid: number }): Promise<{ job: BackupJob; plan: JobDisk[]; broken?: string }> {
    const sub = log.child('libvirt');
    const ours = join(workDir, 'libvirt');
    const left = await BackupJob.leftover(virsh, name, key, ours, owner);
    const ck = left?.job.checkpoint ?? '';
    if (left?.reusable && options.reuse?.includes(ck) && checkpoints.includes(ck) && readsAsPlanned(left.disks, plan, ck, options.since ?? {})) {
      await BackupJob.sweep(ours, key, left.job.dir);
      sub.info(`domain ${name}: reading the backup job an interrupted sync left (checkpoint ${ck}) again`);
      return { job: left.job, plan: plan.map((p) => ({ disk: p.disk, incremental: left.disks.get(p.disk.target) ?? undefined })) };
    }
    if (left) {
      await left.job.end();
      sub.warn(`domain ${name}: ended the backup job an interrupted sync left (checkpoint ${left.job.checkpoint})`);
    }
    const swept = await BackupJob.sweep(ours, key);
    if (swept) sub.info(`domain ${name}: removed ${swept} directories interrupted syncs left in ${ours}`);
    return this._begin(virsh, name, key, plan, skipped, workDir, owner);
  }

  /**
   * Starts the job. A checkpoint whose bitmap is lost or broken (a host crash, an
   * image replaced) makes libvirt refuse the job: it is then started with every disk full,
   * and the reason kept for those disks' notes.
   */
  private async _begin(virsh: Virsh, name: string, key: string, plan: JobDisk[], skipped: string[], workDir: string, owner: { uid: number; gid: number }): Promise<{ job: BackupJob; plan: JobDisk[]; broken?: string }> {
    const checkpoint = () => `${CHECKPOINT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '')}`;
    try {
      return { job: await BackupJob.begin(virsh, name, key, plan, skipped, checkpoint(), workDir, owner), plan, broken: undefined };
    } catch (err) {
      if (!plan.some((p) => p.incremental) || !/checkpoint|bitmap/i.test((err as Error).message)) throw err;
      const full: JobDisk[] = plan.map((p) => ({ disk: p.disk }));
      const job = await BackupJob.begin(virsh, name, key, full, skipped, checkpoint(), workDir, owner);
      return { job, plan: full, broken: `libvirt refused an incremental backup (${(err as Error).message.replace(/^[^:]*: /, '')})` };
    }
  }
}

/** Each qcow2 disk from the checkpoint its newest version names when the domain still has it; the others full. */
function planDisks(disks: DomainDisk[], checkpoints: string[], since: Readonly<Record<string, ChangeId>>): JobDisk[] {
  return disks.map((disk) => {
    const from = since[disk.target];
    return { disk, incremental: !disk.fullOnly && from && checkpoints.includes(from) ? from : undefined };
  });
}

/**
 * Whether a job exporting `disks` (made with `checkpoint`) serves what `plan` needs: the
 * same disks, each from the same starting checkpoint or already committed from this job.
 */
function readsAsPlanned(disks: Map<string, string | null>, plan: JobDisk[], checkpoint: string, since: Readonly<Record<string, ChangeId>>): boolean {
  return disks.size === plan.length && plan.every((p) => disks.has(p.disk.target) && (disks.get(p.disk.target) === (p.incremental ?? null) || since[p.disk.target] === checkpoint));
}

function deleteCheckpoint(virsh: Virsh, domain: string, name: string): Promise<string> {
  return virsh.run(['checkpoint-delete', '--domain', domain, '--checkpointname', name], `deletion of checkpoint ${name} of domain ${domain}`);
}

class LibvirtSnapshot implements Snapshot {
  readonly platform = 'libvirt';
  readonly vm: { id: string; name: string };
  readonly id: string;
  readonly disks: readonly DiskInfo[];
  readonly info: Record<string, unknown>;
  private readonly _plan = new Map<string, JobDisk>();
  private _released = false;

  constructor(
    private readonly _virsh: Virsh,
    uuid: string,
    private readonly _domain: string,
    private readonly _job: BackupJob,
    plan: JobDisk[],
    private readonly _clients: Map<string, NbdClient>,
    private readonly _before: string[],
    skipped: string[],
    private readonly _since: Readonly<Record<string, ChangeId>>,
    private readonly _broken: string | undefined,
  ) {
    this._checkpoint = _job.checkpoint;
    this.vm = { id: uuid, name: _domain };
    this.id = this._checkpoint;
    // A raw disk has no bitmap: no changeId, so each of its syncs is full.
    this.disks = plan.map((p) => ({ id: p.disk.target, label: `${p.disk.target} (${p.disk.source})`, capacity: _clients.get(p.disk.target)!.size, changeId: p.disk.fullOnly ? null : this._checkpoint }));
    for (const p of plan) this._plan.set(p.disk.target, p);
    this.info = { domain: _domain, uuid, checkpoint: this._checkpoint, notSynced: skipped };
  }

  private readonly _checkpoint: string;

  private _client(disk: DiskInfo): NbdClient {
    const c = this._clients.get(disk.id);
    if (!c || this._released) throw new HamalError('DISK_CLOSED', `disk ${disk.id} is not in backup ${this.id} of domain ${this._domain}${this._released ? ' (released)' : ''}`);
    return c;
  }

  async checkSince(disk: DiskInfo, since: ChangeId): Promise<string | null> {
    const p = this._plan.get(disk.id);
    if (p?.disk.fullOnly) return `disk ${disk.id} is ${p.disk.fullOnly}`;
    if (since === this._checkpoint) return null;
    if (p?.incremental === since) {
      return this._client(disk).hasContext(`qemu:dirty-bitmap:backup-${disk.id}`) ? null : `QEMU offers no dirty bitmap for disk ${disk.id}`;
    }
    if (this._broken && this._before.includes(since)) return this._broken;
    return this._before.includes(since)
      ? `the backup job started disk ${disk.id} from checkpoint ${p?.incremental ?? 'none'}, not ${since}`
      : `checkpoint ${since} of domain ${this._domain} no longer exists (deleted, the domain redefined, or its bitmap lost)`;
  }

  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent> {
    const client = this._client(disk);
    // Committed from this very job (a killed run's, read again): nothing changed since.
    if (since === this._checkpoint) return EMPTY;
    if (since !== null && since !== this._plan.get(disk.id)?.incremental) {
      // checkSince said so first; asked anyway, the answer would call holes "unchanged".
      throw new HamalError('LIBVIRT_NO_BITMAP', `disk ${disk.id}: the backup job has no dirty bitmap since ${since}`, { subject: disk.id });
    }
    // Incremental: QEMU's dirty bitmap since the checkpoint (flag 1 = dirty). Full: all but
    // what base:allocation says reads as zeros (NBD_STATE_ZERO, flag 2; a hole alone may not).
    const context = since !== null ? `qemu:dirty-bitmap:backup-${disk.id}` : 'base:allocation';
    const wanted = since !== null ? (f: number) => (f & 1) !== 0 : (f: number) => (f & 2) === 0;
    return new Observable<Extent>((subscriber) => {
      let stopped = false;
      (async () => {
        for (let at = 0; at < disk.capacity && !stopped; ) {
          const extents = await client.blockStatusOf(at, Math.min(STATUS_SPAN, disk.capacity - at), context);
          const last = extents[extents.length - 1];
          if (!last || last.offset + last.length <= at) throw new HamalError('NBD_BAD_REPLY', `block status of disk ${disk.id} at ${at} (${context}) did not move forward`, { subject: disk.id });
          for (const e of extents) {
            const length = Math.min(e.length, disk.capacity - e.offset);
            if (length > 0 && wanted(e.flags)) subscriber.next({ offset: e.offset, length });
          }
          at = last.offset + last.length;
        }
      })().then(
        () => subscriber.complete(),
        (err) => subscriber.error(err),
      );
      return () => {
        stopped = true;
      };
    });
  }

  read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this._client(disk).read(offset, length, into);
  }

  /**
   * Ends the job, then keeps the checkpoints versions still need: the new one when a disk
   * was committed from it, and the starting point of each disk that was not (its newest
   * version still names it). The other checkpoints of hamal go.
   */
  async release(committed: readonly string[] = []): Promise<void> {
    if (this._released) return;
    this._released = true;
    const sub = log.child('libvirt');
    try {
      await Promise.allSettled([...this._clients.values()].map((c) => c.close()));
      await this._job.end().catch((err: Error) => sub.warn(`domain ${this._domain}: backup job not ended: ${err.message}`));
      const keep = new Set<string>(committed.length ? [this._checkpoint] : []);
      for (const d of this.disks) if (!committed.includes(d.id) && this._since[d.id]) keep.add(this._since[d.id]!);
      for (const name of [...this._before, this._checkpoint].filter((n) => n.startsWith(CHECKPOINT_PREFIX) && !keep.has(n))) {
        await deleteCheckpoint(this._virsh, this._domain, name).catch((err: Error) => sub.warn(`domain ${this._domain}: checkpoint ${name} not deleted: ${err.message}`));
      }
    } finally {
      await this._virsh.close();
    }
  }
}
