import { defer, from, mergeMap, type Observable } from 'rxjs';
import { tmpdir } from 'node:os';
import type { DiskInfo, Snapshot, SnapshotOptions, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { VsphereClient, type Mor, type VsphereOptions } from './VsphereClient.ts';
import { findVm, listObjects, objectProps, vmDisks, type VmDisk } from './inventory.ts';
import { SNAPSHOT_PREFIX, createSnapshot, ensureChangeTracking, listSnapshots, removeSnapshot } from './snapshots.ts';
import { changedAreas, changeIdEpoch, queryChangedAreas, type CbtDisk } from './changedAreas.ts';
import { FlatDisk } from './FlatDisk.ts';
import { VsphereFault } from './VsphereClient.ts';
import { NbdkitExport, VDDK_TEMPLATE } from './NbdkitExport.ts';
import type { NbdServerProcess } from '../nbd/NbdServerProcess.ts';
import { PerDisk } from '../PerDisk.ts';

/** Faults of QueryChangedDiskAreas that mean the host no longer knows a changeId (vSphere API reference: FileFault, InvalidArgument). */
const CBT_LOST = /\b(FileFault|InvalidArgument)\b|changeId/i;

export interface VmwareSourceOptions {
  connection: VsphereOptions;
  /** Datacenter of the VM's datastores; found when the inventory has one. */
  datacenter?: string;
  /**
   * False (the seed's default): disks smaller than `diskFlagSizeMb` are flag disks and are
   * not synced. True: every disk is synced.
   * @default false
   */
  skipDiskFlag?: boolean;
  /** @default 48 */
  diskFlagSizeMb?: number;
  /** Quiesce the guest file systems for the snapshot (needs VMware Tools). @default false */
  quiesce?: boolean;
  /** Longest wait for a snapshot task (seed: create/delete_snap_task_timeout). @default 3600 s */
  taskTimeoutMs?: number;
  /** Largest read request (seed: `max_read_blocks` x 512 bytes). @default 512 KiB */
  maxReadBytes?: number;
  /**
   * How disk data is read: `https` (the datastore's /folder, no extra software) or `nbd`
   * (an nbdkit per disk, normally `nbdkit vddk` with VMware's VDDK).
   * @default 'https'
   */
  transport?: 'https' | 'nbd';
  /** The nbdkit command for `nbd` (see NbdkitExport). @default VDDK_TEMPLATE */
  nbdkitTemplate?: string;
  /** Where nbdkit sockets and password files live (hamal_lib_dir). @default os.tmpdir() */
  workDir?: string;
}

/**
 * VMware vCenter or ESXi: snapshot (our name prefix, leftovers of a crashed run removed
 * first), change tracking turned on when off, changed areas from QueryChangedDiskAreas,
 * data from the snapshot's frozen disk files over HTTPS (`/folder`) or NBD (nbdkit).
 */
export class VmwareSource implements Source {
  readonly platform = 'vmware';
  private readonly _options: VmwareSourceOptions;

  constructor(options: VmwareSourceOptions) {
    this._options = options;
  }

  async snapshot(selector: string, options: SnapshotOptions = {}): Promise<Snapshot> {
    const o = this._options;
    const timeoutMs = o.taskTimeoutMs ?? 3600_000;
    const client = await VsphereClient.connect(o.connection);
    try {
      const vm = await findVm(client, selector);
      // A leftover an interrupted sync's journal names is reused (the sync resumes);
      // every other leftover of ours goes.
      const reuse = new Set(options.reuse ?? []);
      const ours = (await listSnapshots(client, vm.mor)).filter((s) => s.name.startsWith(SNAPSHOT_PREFIX));
      const kept = ours.find((s) => reuse.has(`${s.mor.value}:${s.name}`));
      for (const s of ours) {
        if (s === kept) continue;
        await removeSnapshot(client, s.mor, timeoutMs);
        log.child('vmware').warn(`VM ${vm.name}: removed snapshot ${s.name} left by an interrupted sync`);
      }
      if (!kept && (await ensureChangeTracking(client, vm.mor, timeoutMs))) log.child('vmware').info(`VM ${vm.name}: change tracking turned on`);
      const datacenter = o.datacenter ?? (await onlyDatacenter(client));
      const name = kept?.name ?? `${SNAPSHOT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '')}`;
      if (kept) log.child('vmware').info(`VM ${vm.name}: resuming with snapshot ${name} of the interrupted sync`);
      const snap = kept?.mor ?? (await createSnapshot(client, vm.mor, name, { quiesce: o.quiesce, timeoutMs }));
      try {
        // Disks as the snapshot has them: frozen backing files, changeIds, capacities.
        const flagBytes = (o.diskFlagSizeMb ?? 48) * 1024 * 1024;
        const skipped: string[] = [];
        const disks = (await vmDisks(client, snap)).filter((d) => {
          if (d.notSyncable) skipped.push(`${d.label}: ${d.notSyncable}, cannot be snapshotted`);
          else if (!o.skipDiskFlag && d.capacity < flagBytes) skipped.push(`${d.label}: flag disk (smaller than ${o.diskFlagSizeMb ?? 48} MB)`);
          else return true;
          return false;
        });
        for (const s of skipped) log.child('vmware').warn(`VM ${vm.name}: disk ${s}; not synced`);
        const nics = await guestNics(client, vm.mor);
        return new VmwareSnapshot(client, vm, snap, name, datacenter, disks, skipped, nics, o, timeoutMs);
      } catch (err) {
        await removeSnapshot(client, snap, timeoutMs).catch(() => {});
        throw err;
      }
    } catch (err) {
      await client.logout();
      throw err;
    }
  }
}

export interface GuestNic {
  mac: string;
  network?: string;
  ips: string[];
}

/** The NICs and their IPs as VMware Tools report them (empty without Tools); metadata and ip_mapping.backup keep them. */
async function guestNics(client: VsphereClient, vm: Mor): Promise<GuestNic[]> {
  try {
    const p = await objectProps(client, vm, ['guest.net']);
    const raw = (p['guest.net'] as Record<string, unknown> | undefined)?.GuestNicInfo;
    const list = (Array.isArray(raw) ? raw : raw ? [raw] : []) as Array<Record<string, unknown>>;
    return list.map((n) => {
      const ips = n.ipAddress === undefined ? [] : Array.isArray(n.ipAddress) ? n.ipAddress : [n.ipAddress];
      return { mac: String(n.macAddress ?? ''), network: n.network === undefined ? undefined : String(n.network), ips: ips.map(String) };
    });
  } catch (err) {
    log.child('vmware').warn(`guest NICs of ${vm.value} not available: ${(err as Error).message}`);
    return [];
  }
}

async function onlyDatacenter(client: VsphereClient): Promise<string> {
  const dcs = await listObjects(client, 'Datacenter', ['name']);
  if (dcs.length !== 1) {
    throw new HamalError('VSPHERE_DATACENTER', `${client.url.host} has ${dcs.length} datacenters: name the VM's datacenter in the task`, { subject: client.url.host });
  }
  return String(dcs[0]!.props.name);
}

class VmwareSnapshot implements Snapshot {
  readonly platform = 'vmware';
  readonly vm: { id: string; name: string };
  readonly id: string;
  readonly disks: readonly DiskInfo[];
  readonly info: Record<string, unknown>;
  private readonly _vmDisks = new Map<string, VmDisk>();
  private readonly _flat = new PerDisk<FlatDisk>();
  private readonly _exports = new PerDisk<NbdServerProcess>();
  /** First pages of QueryChangedDiskAreas asked by checkSince, by disk id and changeId. */
  private readonly _probed = new Map<string, unknown>();
  private _released = false;
  private readonly _datacenter: string;

  constructor(
    private readonly _client: VsphereClient,
    private readonly _vm: { mor: Mor; name: string; instanceUuid?: string },
    private readonly _snap: Mor,
    name: string,
    datacenter: string,
    disks: VmDisk[],
    skipped: string[],
    nics: GuestNic[],
    private readonly _options: VmwareSourceOptions,
    private readonly _timeoutMs: number,
  ) {
    this.vm = { id: _vm.instanceUuid ?? _vm.mor.value, name: _vm.name };
    this.id = `${_snap.value}:${name}`;
    this.disks = disks.map((d) => ({ id: `disk-${d.key}`, label: d.label, capacity: d.capacity, changeId: d.changeId }));
    for (const d of disks) this._vmDisks.set(`disk-${d.key}`, d);
    this._datacenter = datacenter;
    this.info = { moref: _vm.mor.value, host: _client.url.host, datacenter, notSynced: skipped, nics };
  }

  private _disk(disk: DiskInfo): VmDisk {
    const d = this._vmDisks.get(disk.id);
    if (!d || this._released) throw new HamalError('DISK_CLOSED', `disk ${disk.id} is not in snapshot ${this.id}`);
    return d;
  }

  private _cbt(d: VmDisk): CbtDisk {
    return { vm: this._vm.mor, snapshot: this._snap, deviceKey: d.key, capacity: d.capacity };
  }

  /**
   * A changeId of an earlier tracking epoch cannot be diffed against; one the host
   * refuses (InvalidArgument, FileFault: it lost or reset its change tracking although
   * the epoch looks the same) neither. Both make a full sync, as backup tools do after a
   * CBT reset. The first page asked here is kept for `changes`.
   */
  async checkSince(disk: DiskInfo, since: ChangeId): Promise<string | null> {
    if (!disk.changeId) return 'the disk has no changeId in this snapshot';
    if (changeIdEpoch(disk.changeId) !== changeIdEpoch(since)) return `change tracking was reset (changeId ${since} -> ${disk.changeId})`;
    try {
      this._probed.set(`${disk.id}\0${since}`, await queryChangedAreas(this._client, this._cbt(this._disk(disk)), 0, since));
    } catch (err) {
      const fault = (err as HamalError).cause;
      // Only the faults that mean the host lost this changeId; NoPermission, a host not
      // connected and the like fail the disk as they are, not as a costly full read.
      if (!(fault instanceof VsphereFault) || !CBT_LOST.test(`${fault.faultType ?? ''} ${fault.message}`)) throw err;
      return `QueryChangedDiskAreas refused changeId ${since} (${fault.faultType ?? 'fault'}: change tracking lost or reset on the host)`;
    }
    return null;
  }

  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent> {
    const d = this._disk(disk);
    const key = `${disk.id}\0${since ?? '*'}`;
    const first = this._probed.get(key);
    this._probed.delete(key);
    const areas = changedAreas(this._client, this._cbt(d), since ?? '*', first);
    // https: the disk's layout is checked before its first area is asked for, so a disk
    // that cannot be read byte-exact fails before anything of it is stored.
    if (this._options.transport === 'nbd') return areas;
    return defer(() => from(this._flatDisk(disk, d))).pipe(mergeMap(() => areas));
  }

  private _flatDisk(disk: DiskInfo, d: VmDisk): Promise<FlatDisk> {
    return this._flat.get(disk.id, () => FlatDisk.open(this._client, this._datacenter, d));
  }

  private _export(disk: DiskInfo, d: VmDisk): Promise<NbdServerProcess> {
    return this._exports.get(disk.id, () => {
      const m = /^\[([^\]]+)\]\s*(.+)$/.exec(d.fileName);
      const c = this._options.connection;
      return NbdkitExport.start(
        this._options.nbdkitTemplate ?? VDDK_TEMPLATE,
        {
          server: this._client.url.hostname,
          user: c.username,
          thumbprint: c.thumbprint ?? '',
          moref: this._vm.mor.value,
          snapshot: this._snap.value,
          file: d.fileName,
          datastore: m?.[1] ?? '',
          path: m?.[2] ?? d.fileName,
        },
        c.password,
        this._options.workDir ?? tmpdir(),
        this._options.maxReadBytes ?? 512 * 1024,
      );
    });
  }

  async read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const d = this._disk(disk);
    if (this._options.transport === 'nbd') return (await this._export(disk, d)).client.read(offset, length, into);
    const buf = into && into.length >= length ? into : Buffer.allocUnsafe(length);
    return (await this._flatDisk(disk, d)).read(offset, length, buf, this._options.maxReadBytes ?? 512 * 1024);
  }

  async release(): Promise<void> {
    if (this._released) return;
    this._released = true;
    try {
      await this._exports.stopAll((e) => e.stop());
      await removeSnapshot(this._client, this._snap, this._timeoutMs);
    } finally {
      await this._client.logout();
    }
  }
}

