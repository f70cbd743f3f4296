import { Observable } from 'rxjs';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import type { DiskInfo, Snapshot, SnapshotOptions, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { NbdClient } from '../nbd/NbdClient.ts';
import { Virsh, type VirshOptions } from './Virsh.ts';
import { parseDomainXml, type DomainDisk } from './domainXml.ts';
import { BackupJob, type JobDisk } from './BackupJob.ts';

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

  async snapshot(selector: string, options: SnapshotOptions = {}): Promise<Snapshot> {
    const workDir = this._o.workDir ?? tmpdir();
    const virsh = new Virsh({ ...this._o.connection, workDir });
    try {
      const info = await virsh.run(['dominfo', selector], `domain ${selector}`);
      const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(info)?.[1]?.trim();
      const name = field('Name') ?? selector;
      if (field('Persistent') === 'no') throw new HamalError('LIBVIRT_TRANSIENT', `domain ${name} is transient: checkpoints need a persistent domain (virsh define it)`, { subject: name });
      if (field('State') !== 'running') throw new HamalError('LIBVIRT_NOT_RUNNING', `domain ${name} is ${field('State') ?? 'not running'}: hamal backs up running domains only (start it, or sync its images with the local platform)`, { subject: name });
      const dom = parseDomainXml(await virsh.run(['dumpxml', name], `XML of domain ${name}`), `domain ${name}`);
      const disks = dom.disks.filter((d) => !d.notSyncable);
      const skipped = dom.disks.filter((d) => d.notSyncable);
      if (await BackupJob.abort(virsh, name)) log.child('libvirt').warn(`domain ${name}: ended the backup job an interrupted sync left`);
      const checkpoints = (await virsh.run(['checkpoint-list', name, '--name'], `checkpoints of domain ${name}`)).split('\n').map((l) => l.trim()).filter(Boolean);
      const plan: JobDisk[] = disks.map((disk) => {
        const since = options.since?.[disk.target];
        return { disk, incremental: since && checkpoints.includes(since) ? since : undefined };
      });
      const checkpoint = `${CHECKPOINT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '')}`;
      const owner = await fsp.stat(disks[0]?.source ?? '/').then((s) => ({ uid: s.uid, gid: s.gid }), () => undefined);
      const job = await BackupJob.begin(virsh, name, plan, skipped, checkpoint, workDir, owner);
      try {
        const clients = new Map<string, NbdClient>();
        for (const p of plan) {
          const contexts = ['base:allocation', ...(p.incremental ? [`qemu:dirty-bitmap:backup-${p.disk.target}`] : [])];
          clients.set(p.disk.target, await NbdClient.connect(job.socket, { exportName: p.disk.target, metaContexts: contexts, maxRequestBytes: this._o.maxReadBytes }));
        }
        return new LibvirtSnapshot(virsh, dom.uuid || name, name, job, plan, clients, checkpoints, checkpoint, skipped, options.since ?? {});
      } catch (err) {
        await job.end().catch(() => {});
        await deleteCheckpoint(virsh, name, checkpoint).catch(() => {});
        throw err;
      }
    } catch (err) {
      await virsh.close();
      throw err;
    }
  }
}

function deleteCheckpoint(virsh: Virsh, domain: string, name: string): Promise<string> {
  return virsh.run(['checkpoint-delete', domain, name], `deletion of checkpoint ${name} of domain ${domain}`);
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
    private readonly _checkpoint: string,
    skipped: DomainDisk[],
    private readonly _since: Readonly<Record<string, ChangeId>>,
  ) {
    this.vm = { id: uuid, name: _domain };
    this.id = _checkpoint;
    this.disks = plan.map((p) => ({ id: p.disk.target, label: `${p.disk.target} (${p.disk.source})`, capacity: _clients.get(p.disk.target)!.size, changeId: _checkpoint }));
    for (const p of plan) this._plan.set(p.disk.target, p);
    this.info = { domain: _domain, uuid, checkpoint: _checkpoint, notSynced: skipped.map((d) => `${d.target}: ${d.notSyncable}`) };
  }

  private _client(disk: DiskInfo): NbdClient {
    const c = this._clients.get(disk.id);
    if (!c || this._released) throw new HamalError('DISK_CLOSED', `disk ${disk.id} is not in backup ${this.id} of domain ${this._domain}${this._released ? ' (released)' : ''}`);
    return c;
  }

  async checkSince(disk: DiskInfo, since: ChangeId): Promise<string | null> {
    const from = this._plan.get(disk.id)?.incremental;
    if (from === since) return null;
    return this._before.includes(since)
      ? `the backup job started disk ${disk.id} from checkpoint ${from ?? 'none'}, not ${since}`
      : `checkpoint ${since} of domain ${this._domain} no longer exists (deleted, the domain redefined, or its bitmap lost)`;
  }

  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent> {
    const client = this._client(disk);
    const incremental = since !== null && since === this._plan.get(disk.id)?.incremental;
    // Incremental: QEMU's dirty bitmap since the checkpoint (flag 1 = dirty); full: what is allocated.
    const context = incremental ? `qemu:dirty-bitmap:backup-${disk.id}` : 'base:allocation';
    const wanted = incremental ? (f: number) => (f & 1) !== 0 : (f: number) => (f & 1) === 0;
    return new Observable<Extent>((subscriber) => {
      let stopped = false;
      (async () => {
        for (let at = 0; at < disk.capacity && !stopped; ) {
          const extents = await client.blockStatusOf(at, Math.min(STATUS_SPAN, disk.capacity - at), context);
          if (!extents.length) throw new HamalError('NBD_BAD_REPLY', `block status of disk ${disk.id} at ${at} (${context}) answered nothing`, { subject: disk.id });
          for (const e of extents) {
            const length = Math.min(e.length, disk.capacity - e.offset);
            if (length > 0 && wanted(e.flags)) subscriber.next({ offset: e.offset, length });
          }
          const last = extents[extents.length - 1]!;
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
