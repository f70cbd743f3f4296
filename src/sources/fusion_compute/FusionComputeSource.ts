import { Observable } from 'rxjs';
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type { DiskInfo, Snapshot, SnapshotOptions, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { FcClient, type FcClientOptions } from './FcClient.ts';
import { bitmapExtents, type CbtPage } from './cbtBitmap.ts';
import { DataChannel, type VolumeReader } from './DataChannel.ts';
import { DataChannelCommand } from './DataChannelCommand.ts';
import { BackupResource } from './BackupResource.ts';
import { findVm, listSnapshots, vmDisks, type FcSnapshotRef, type FcVm } from './fcInventory.ts';
import { PerDisk } from '../PerDisk.ts';

export interface FusionComputeSourceOptions {
  client: FcClientOptions;
  /** `[fusion_compute] local_host_ip`: the IP data channels are opened for; found from the route to FusionCompute when empty. */
  localHostIp?: string;
  /** `lanssl` (TLS, verified; the default) or `lan` (plain, only when configured). */
  transfer?: 'lanssl' | 'lan';
  /** CA of the data channels' certificates, trusted beside the caCert each backup resource gives. */
  dataCaFile?: string;
  /** `[fusion_compute] max_socket_connections_per_host`. @default 8 */
  maxConnectionsPerHost?: number;
  /**
   * `[fusion_compute] parallel_volumes`: volumes of one VM read at once. The disks of a VM
   * share one data channel port in the evidence, so one at a time. @default 1
   */
  parallelVolumes?: number;
  /**
   * `[fusion_compute] data_channel_command`: a program serving one volume over NBD from
   * the channel's parameters (DataChannelCommand); empty = the built-in HTTP reader.
   */
  dataChannelCommand?: string;
  /** Where data_channel_command's socket and files go (private 0700 directories). @default os.tmpdir() */
  workDir?: string;
  /** `create_snap_task_timeout`. @default 3600 s */
  createSnapTimeoutMs?: number;
  /** `delete_snap_task_timeout`. @default 3600 s */
  deleteSnapTimeoutMs?: number;
  /** `task_timeout`: backup resources and other tasks. @default 3600 s */
  taskTimeoutMs?: number;
  /** Blocks asked per getcbt call (a multiple of 8). @default 65536 */
  pageBlocks?: number;
}

/** Snapshots hamal takes carry this prefix, so leftovers are recognised and swept. */
export const FC_SNAPSHOT_PREFIX = 'hamal-';

interface FcVolume {
  info: DiskInfo;
  urn: string;
  uri: string;
  name: string;
  snapUuid: string;
  /** The snapshot's CBT identity of the volume (eSDK model Volsnapshots); empty when it has none. */
  cbtCreateTime: string;
  chgID: string;
}

/**
 * Huawei FusionCompute, as Huawei's own clients call it (docs/fusion_compute.md): a
 * CBTbackup snapshot of the VM, the changed-block bitmap of each volume (getcbt) turned
 * into extents, its data through a backup resource (a leased data channel), released when
 * the volume is done, the snapshot deleted at the end. A disk's changeId is
 * `<volCBTCreateTime>/<chgID>` from the snapshot's volsnapshots: another creation time, or
 * a chgID that went back (tracking restarted after a host reboot), is a full sync.
 */
export class FusionComputeSource implements Source {
  readonly platform = 'fusion_compute';
  constructor(private readonly _o: FusionComputeSourceOptions) {}

  async snapshot(selector: string, options: SnapshotOptions = {}): Promise<Snapshot> {
    const o = this._o;
    const fc = new FcClient(o.client);
    try {
      await fc.login();
      const vm = await findVm(fc, selector);
      const disks = await vmDisks(fc, vm);
      const snap = await this._snapshotOf(fc, vm, options.reuse ?? []);
      try {
        const sdetail = await fc.call('GET', snap.uri, `snapshot ${snap.name}`);
        const volsnaps = (sdetail.volsnapshots ?? []) as Array<{ volumeUrn: string; snapUuid: string; volCBTCreateTime?: unknown; chgID?: unknown }>;
        const volumes: FcVolume[] = [];
        for (const d of disks) {
          const v = await fc.call('GET', d.volumeUri, `volume ${d.volumeUrn}`);
          const vs = volsnaps.find((x) => x.volumeUrn === d.volumeUrn);
          if (!vs?.snapUuid) throw new HamalError('FC_SNAPSHOT', `snapshot ${snap.name} has no volume snapshot of ${d.volumeUrn}`, { subject: d.volumeUrn });
          const id = `volume-${String(v.uuid ?? d.volumeUrn.split(':').pop())}`;
          const name = String(v.name ?? id);
          const cbtCreateTime = vs.volCBTCreateTime == null ? '' : String(vs.volCBTCreateTime);
          const chgID = vs.chgID == null ? '' : String(vs.chgID);
          const capacity = Math.round(Number(v.quantityGB) * 1024 ** 3);
          if (!(capacity > 0)) throw new HamalError('FC_BAD_REPLY', `volume ${name}: quantityGB ${String(v.quantityGB)} is not a size`, { subject: d.volumeUrn });
          volumes.push({
            info: { id, label: `${name} (#${d.sequenceNum ?? volumes.length + 1})`, capacity, changeId: cbtCreateTime && chgID ? `${cbtCreateTime}/${chgID}` : null },
            urn: d.volumeUrn,
            uri: d.volumeUri,
            name,
            snapUuid: vs.snapUuid,
            cbtCreateTime,
            chgID,
          });
        }
        const ip = o.localHostIp || (await localIpTowards(new URL(o.client.url).hostname));
        return new FcSnapshot(fc, vm, snap, volumes, ip, o);
      } catch (err) {
        await deleteSnapshot(fc, snap, o.deleteSnapTimeoutMs ?? 3600_000).catch(() => {});
        throw err;
      }
    } catch (err) {
      await fc.logout();
      throw err;
    }
  }

  /**
   * Sweeps leftovers of ours anywhere in the VM's snapshot tree, except one an interrupted
   * sync's journal names (reused), and takes a new CBTbackup snapshot otherwise.
   */
  private async _snapshotOf(fc: FcClient, vm: FcVm, reuse: readonly string[]): Promise<FcSnapshotRef> {
    const o = this._o;
    const sub = log.child('fusion_compute');
    let kept: FcSnapshotRef | undefined;
    // Children first: deleting a parent moves its children up, the tree stays walkable.
    for (const s of (await listSnapshots(fc, vm)).filter((x) => x.name.startsWith(FC_SNAPSHOT_PREFIX)).reverse()) {
      if (!kept && reuse.includes(s.name) && (s.status ?? 'ready') === 'ready') {
        kept = s;
        continue;
      }
      // One a crashed run's lease still holds is refused until the lease lapses: the next run sweeps it.
      await deleteSnapshot(fc, s, o.deleteSnapTimeoutMs ?? 3600_000).then(
        () => sub.warn(`VM ${vm.name}: removed snapshot ${s.name} left by an interrupted sync`),
        (err: Error) => sub.warn(`VM ${vm.name}: snapshot ${s.name} left by an interrupted sync not removed yet: ${err.message}`),
      );
    }
    if (kept) {
      sub.info(`VM ${vm.name}: resuming with snapshot ${kept.name} of the interrupted sync`);
      return kept;
    }
    const name = `${FC_SNAPSHOT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '')}`;
    // eSDK CreateVmSnapshotReq; only a CBTbackup snapshot carries volCBTCreateTime and chgID.
    const created = await fc.call('POST', `${vm.uri}/snapshots`, `snapshot of VM ${vm.name}`, { name, description: 'hamal sync', needMemoryShot: false, isConsistent: false, type: 'CBTbackup' });
    let snap: FcSnapshotRef | undefined = created.uri && created.urn ? { name, uri: String(created.uri), urn: String(created.urn) } : undefined;
    // VRMTask: uri and urn are absent from some replies; the tree then names the snapshot.
    const found = async () => (snap ??= (await listSnapshots(fc, vm)).find((x) => x.name === name));
    try {
      await fc.waitTask(String(created.taskUri ?? ''), `snapshot ${name} of VM ${vm.name}`, o.createSnapTimeoutMs ?? 3600_000);
    } catch (err) {
      // A snapshot that did not finish in time is deleted now, or swept by the next run.
      const s = await found().catch(() => undefined);
      if (s) await deleteSnapshot(fc, s, o.deleteSnapTimeoutMs ?? 3600_000).catch(() => sub.warn(`snapshot ${name} of VM ${vm.name} left for the next run to sweep`));
      throw err;
    }
    const made = await found();
    if (!made) throw new HamalError('FC_SNAPSHOT', `snapshot ${name} of VM ${vm.name} finished but is not in its snapshot tree`, { subject: vm.urn });
    return made;
  }
}

async function deleteSnapshot(fc: FcClient, snap: FcSnapshotRef, timeoutMs: number): Promise<void> {
  const t = await fc.call('DELETE', snap.uri, `snapshot ${snap.name}`);
  if (t.taskUri) await fc.waitTask(String(t.taskUri), `deletion of snapshot ${snap.name}`, timeoutMs);
}

/** The local address the kernel would use to reach `host` (no packet is sent). */
function localIpTowards(host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket(isIP(host) === 6 ? 'udp6' : 'udp4');
    s.connect(9, host, () => {
      const a = s.address().address;
      s.close();
      resolve(a);
    });
    s.on('error', (err) => {
      s.close();
      reject(new HamalError('FC_LOCAL_IP', `cannot find the local IP towards ${host}; set [fusion_compute] local_host_ip: ${err.message}`, { subject: 'local_host_ip' }));
    });
  });
}

/** A volume's data channel: the lease and what reads through it. */
interface Channel {
  resource: BackupResource;
  reader: VolumeReader;
}

class FcSnapshot implements Snapshot {
  readonly platform = 'fusion_compute';
  readonly vm: { id: string; name: string };
  readonly id: string;
  readonly disks: readonly DiskInfo[];
  readonly info: Record<string, unknown>;
  readonly parallelDisks: number;
  private readonly _byId: Map<string, FcVolume>;
  private readonly _channels = new PerDisk<Channel>();
  private _released = false;

  constructor(
    private readonly _fc: FcClient,
    vm: FcVm,
    private readonly _snap: FcSnapshotRef,
    volumes: FcVolume[],
    private readonly _ip: string,
    private readonly _o: FusionComputeSourceOptions,
  ) {
    this.vm = { id: vm.uuid ?? vm.urn, name: vm.name };
    this.id = _snap.name;
    this.disks = volumes.map((v) => v.info);
    this.parallelDisks = _o.parallelVolumes ?? 1;
    this._byId = new Map(volumes.map((v) => [v.info.id, v]));
    this.info = { urn: vm.urn, snapshot: _snap.urn, localHostIp: _ip };
  }

  private _vol(disk: DiskInfo): FcVolume {
    const v = this._byId.get(disk.id);
    if (!v || this._released) throw new HamalError('DISK_CLOSED', `disk ${disk.id} is not in snapshot ${this.id}`);
    return v;
  }

  async checkSince(disk: DiskInfo, since: ChangeId): Promise<string | null> {
    const v = this._vol(disk);
    const at = since.lastIndexOf('/');
    const [epoch, chg] = [since.slice(0, at), since.slice(at + 1)];
    if (!v.cbtCreateTime || !v.chgID) return `snapshot ${this.id} gives volume ${v.name} no CBT identity`;
    if (epoch !== v.cbtCreateTime) return `change tracking of volume ${v.name} was recreated (volCBTCreateTime ${epoch} -> ${v.cbtCreateTime})`;
    // Assumed (no source says so): chgID counts up per snapshot, so one that did not move
    // forward means tracking restarted (reported after host reboots). Numbers compared as such.
    const numeric = /^\d+$/.test(chg) && /^\d+$/.test(v.chgID);
    if (numeric ? BigInt(v.chgID) <= BigInt(chg) : v.chgID === chg) return `change tracking of volume ${v.name} restarted (chgID ${chg} -> ${v.chgID} under volCBTCreateTime ${epoch})`;
    // The VRM's own word: a chgID it no longer knows is refused (4xx), as after a CBT reset.
    try {
      await this._cbtPage(v, since, 0, 8);
    } catch (err) {
      const e = err as HamalError;
      if (e.code !== 'FC_FAILED' || e.retryable) throw err;
      return `getcbt refused chgID ${chg} of volume ${v.name} (${e.message.replace(/^[^:]*: /, '')})`;
    }
    return null;
  }

  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent> {
    const v = this._vol(disk);
    // A volume the snapshot gives no CBT identity has no bitmap to ask for: all of it is read.
    if (!v.cbtCreateTime) return new Observable<Extent>((s) => (s.next({ offset: 0, length: disk.capacity }), s.complete()));
    const blockNum = this._o.pageBlocks ?? 65536;
    return new Observable<Extent>((subscriber) => {
      let stopped = false;
      (async () => {
        let sectorOfBlock: number | undefined;
        for (let startBlock = 0; !stopped; startBlock += blockNum) {
          const page = await this._cbtPage(v, since, startBlock, blockNum);
          sectorOfBlock ??= page.sectorOfBlock;
          const bad = (why: string) => new HamalError('FC_BAD_BITMAP', `changed-block bitmap of volume ${v.name}: ${why}`, { subject: v.urn });
          if (page.sectorOfBlock !== sectorOfBlock) throw bad(`sectorOfBlock changed from ${sectorOfBlock} to ${String(page.sectorOfBlock)} at block ${startBlock}`);
          for (const e of bitmapExtents(page, { startBlock, blockNum }, disk.capacity, v.name)) subscriber.next(e);
          const end = (startBlock + page.bitNum) * sectorOfBlock * 512;
          if (end >= disk.capacity) break;
          // Fewer bits than asked mean the volume ends in this page (VMVolumeCBT); before its capacity, blocks would go unread.
          if (page.bitNum < blockNum) throw bad(`the answer for blocks from ${startBlock} ends at byte ${end}, before the capacity ${disk.capacity}`);
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

  /** One getcbt page (eSDK QueryVMVolumeCBTReq); no chgID asks for every block written (a full sync). */
  private async _cbtPage(v: FcVolume, since: ChangeId | null, startBlock: number, blockNum: number): Promise<CbtPage> {
    return (await this._fc.call('POST', `${v.uri}/getcbt`, `changed blocks of volume ${v.name}`, {
      type: 'DiffBitmapAndBit1Num',
      snapUuid: v.snapUuid,
      volCBTCreateTime: v.cbtCreateTime,
      ...(since ? { chgID: since.slice(since.lastIndexOf('/') + 1) } : {}),
      startBlock,
      blockNum,
    })) as unknown as CbtPage;
  }

  private _channel(v: FcVolume): Promise<Channel> {
    return this._channels.get(v.info.id, async () => {
      const transfer = this._o.transfer ?? 'lanssl';
      const resource = await BackupResource.open(this._fc, v, { snapUrn: this._snap.urn, volCBTCreateTime: v.cbtCreateTime || undefined, ip: this._ip, transMode: transfer, timeoutMs: this._o.taskTimeoutMs ?? 3600_000 });
      try {
        const info = resource.info;
        // The task's CA file and the resource's own caCert both: the CNA host may be signed by either.
        const ca = transfer === 'lanssl' ? [this._o.dataCaFile && (await readFile(this._o.dataCaFile, 'utf8')), info.caCert].filter(Boolean).join('\n') || undefined : undefined;
        const reader: VolumeReader = this._o.dataChannelCommand
          ? await DataChannelCommand.start(this._o.dataChannelCommand, info, { transfer, size: v.info.capacity, ca, workDir: this._o.workDir ?? tmpdir(), maxRequestBytes: 4 * 1024 * 1024, volume: v.name })
          : new DataChannel({ host: info.hostIP, port: info.hostPort, token: info.token, url: info.resourceUrl, volume: v.name }, transfer, this._o.maxConnectionsPerHost ?? 8, ca, this._o.client.timeoutMs ?? 600_000);
        return { resource, reader };
      } catch (err) {
        await resource.close();
        throw err;
      }
    });
  }

  async read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into : Buffer.allocUnsafe(length);
    return (await this._channel(this._vol(disk))).reader.read(offset, length, buf);
  }

  /** The volume is done: its channel is released now, not when the VM is. */
  async diskDone(disk: DiskInfo): Promise<void> {
    await this._channels.stop(disk.id, closeChannel);
  }

  async release(): Promise<void> {
    if (this._released) return;
    this._released = true;
    // The VRM refuses to delete a snapshot a backup resource still reads.
    await this._channels.stopAll(closeChannel);
    try {
      await deleteSnapshot(this._fc, this._snap, this._o.deleteSnapTimeoutMs ?? 3600_000);
    } catch (err) {
      log.child('fusion_compute').warn(`snapshot ${this._snap.name} not deleted (${(err as Error).message}); the next sync of ${this.vm.name} sweeps it`);
    } finally {
      await this._fc.logout();
    }
  }
}

async function closeChannel(c: Channel): Promise<void> {
  await c.reader.close().catch(() => {});
  await c.resource.close();
}
