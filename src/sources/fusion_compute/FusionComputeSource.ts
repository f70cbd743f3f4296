import { Observable } from 'rxjs';
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import type { DiskInfo, Snapshot, SnapshotOptions, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { FcClient, type FcClientOptions } from './FcClient.ts';
import { bitmapExtents, type CbtPage } from './cbtBitmap.ts';
import { DataChannel, type DataChannelInfo } from './DataChannel.ts';
import { PerDisk } from '../PerDisk.ts';

export interface FusionComputeSourceOptions {
  client: FcClientOptions;
  /** `[fusion_compute] local_host_ip`: the IP data channels are opened for; found from the route to FusionCompute when empty. */
  localHostIp?: string;
  /** `lanssl` (TLS, verified; the default) or `lan` (plain, only when configured). */
  transfer?: 'lanssl' | 'lan';
  /** CA of the data channels' certificates; the API's caFile when absent. */
  dataCaFile?: string;
  /** `[fusion_compute] max_socket_connections_per_host`. @default 8 */
  maxConnectionsPerHost?: number;
  /** `create_snap_task_timeout`. @default 3600 s */
  createSnapTimeoutMs?: number;
  /** `delete_snap_task_timeout`. @default 3600 s */
  deleteSnapTimeoutMs?: number;
  /** `task_timeout`: backupresources and other tasks. @default 3600 s */
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
  cbtCreateTime: string;
  snapUuid: string;
  changeId: string;
}

/**
 * Huawei FusionCompute, from its public REST reference (docs/fusion_compute.md): a CBT
 * backup snapshot of the VM, the changed-block bitmap of each volume (getcbt) turned into
 * extents, data through one data channel per volume (backupresources), the snapshot
 * deleted at the end. A disk's changeId is `<cbt creation time>/<change id>`: a different
 * creation time means tracking was reset, and the disk is synced in full.
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
      const detail = await fc.call('GET', vm.uri, `VM ${vm.name}`);
      const disks = ((detail.vmConfig as { disks?: Array<{ volumeUrn: string; volumeUri: string; sequenceNum?: number }> } | undefined)?.disks ?? []).slice();
      const sub = log.child('fusion_compute');

      // Leftovers of ours from a crashed run go, except one an interrupted sync's journal names.
      const reuse = new Set(options.reuse ?? []);
      const snaps = ((await fc.call('GET', `${vm.uri}/snapshots`, `snapshots of VM ${vm.name}`)).snapshots ?? []) as Array<{ name: string; uri: string; urn: string }>;
      let kept: { name: string; uri: string; urn: string } | undefined;
      for (const s of snaps.filter((x) => x.name.startsWith(FC_SNAPSHOT_PREFIX))) {
        if (!kept && reuse.has(s.name)) {
          kept = s;
          continue;
        }
        await deleteSnapshot(fc, s.uri, s.name, o.deleteSnapTimeoutMs ?? 3600_000);
        sub.warn(`VM ${vm.name}: removed snapshot ${s.name} left by an interrupted sync`);
      }
      let snap = kept;
      if (!snap) {
        const name = `${FC_SNAPSHOT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '')}`;
        const created = await fc.call('POST', `${vm.uri}/snapshots`, `snapshot of VM ${vm.name}`, {
          name,
          description: 'hamal sync',
          needMemoryShot: false,
          isConsistent: false,
          type: 'CBTbackup',
        });
        try {
          await fc.waitTask(String(created.taskUri), `snapshot ${name} of VM ${vm.name}`, o.createSnapTimeoutMs ?? 3600_000);
        } catch (err) {
          // A snapshot that did not finish in time is deleted now, or swept by the next run.
          if (created.uri) await deleteSnapshot(fc, String(created.uri), name, o.deleteSnapTimeoutMs ?? 3600_000).catch(() => sub.warn(`snapshot ${name} of VM ${vm.name} left for the next run to sweep`));
          throw err;
        }
        snap = { name, uri: String(created.uri), urn: String(created.urn) };
      } else sub.info(`VM ${vm.name}: resuming with snapshot ${snap.name} of the interrupted sync`);
      try {
        const sdetail = await fc.call('GET', snap.uri, `snapshot ${snap.name}`);
        const volsnaps = (sdetail.volsnapshots ?? []) as Array<{ volumeUrn: string; snapUuid: string; changeId?: string }>;
        const volumes: FcVolume[] = [];
        for (const d of disks) {
          const v = await fc.call('GET', d.volumeUri, `volume ${d.volumeUrn}`);
          const vs = volsnaps.find((x) => x.volumeUrn === d.volumeUrn);
          if (!vs) throw new HamalError('FC_SNAPSHOT', `snapshot ${snap.name} has no volume snapshot of ${d.volumeUrn}`, { subject: d.volumeUrn });
          const capacity = Math.round(Number(v.quantityGB) * 1024 ** 3);
          const id = `volume-${String(v.uuid ?? d.volumeUrn.split(':').pop())}`;
          const cbtCreateTime = String(v.cbtCreateTime ?? '');
          volumes.push({
            info: { id, label: `${String(v.name ?? id)} (#${d.sequenceNum ?? volumes.length + 1})`, capacity, changeId: `${cbtCreateTime}/${vs.changeId ?? vs.snapUuid}` },
            urn: d.volumeUrn,
            uri: d.volumeUri,
            name: String(v.name ?? id),
            cbtCreateTime,
            snapUuid: vs.snapUuid,
            changeId: vs.changeId ?? vs.snapUuid,
          });
        }
        const ip = o.localHostIp || (await localIpTowards(new URL(o.client.url).hostname));
        return new FcSnapshot(fc, vm, snap, volumes, ip, o);
      } catch (err) {
        await deleteSnapshot(fc, snap.uri, snap.name, o.deleteSnapTimeoutMs ?? 3600_000).catch(() => {});
        throw err;
      }
    } catch (err) {
      await fc.logout();
      throw err;
    }
  }
}

async function findVm(fc: FcClient, selector: string): Promise<{ urn: string; uri: string; name: string; uuid?: string }> {
  const sites = ((await fc.call('GET', '/service/sites', 'sites')).sites ?? []) as Array<{ uri: string; name: string }>;
  const all: Array<{ urn: string; uri: string; name: string; uuid?: string }> = [];
  for (const site of sites) all.push(...(((await fc.call('GET', `${site.uri}/vms`, `VMs of site ${site.name}`)).vms ?? []) as typeof all));
  const byId = all.filter((v) => v.urn === selector || v.uuid === selector || v.uri === selector);
  const found = byId.length ? byId : all.filter((v) => v.name === selector);
  if (found.length === 1) return found[0]!;
  if (!found.length) throw new HamalError('VM_NOT_FOUND', `no VM ${selector} on FusionCompute (by URN, UUID or name)`, { subject: selector });
  throw new HamalError('VM_AMBIGUOUS', `${found.length} VMs are named ${selector}: ${found.map((v) => v.urn).join(', ')}; give the URN`, { subject: selector });
}

async function deleteSnapshot(fc: FcClient, uri: string, name: string, timeoutMs: number): Promise<void> {
  const t = await fc.call('DELETE', uri, `snapshot ${name}`);
  if (t.taskUri) await fc.waitTask(String(t.taskUri), `deletion of snapshot ${name}`, timeoutMs);
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

class FcSnapshot implements Snapshot {
  readonly platform = 'fusion_compute';
  readonly vm: { id: string; name: string };
  readonly id: string;
  readonly disks: readonly DiskInfo[];
  readonly info: Record<string, unknown>;
  private readonly _byId: Map<string, FcVolume>;
  private readonly _channels = new PerDisk<DataChannel>();
  private _released = false;

  constructor(
    private readonly _fc: FcClient,
    vm: { urn: string; name: string; uuid?: string },
    private readonly _snap: { name: string; uri: string; urn: string },
    volumes: FcVolume[],
    private readonly _ip: string,
    private readonly _o: FusionComputeSourceOptions,
  ) {
    this.vm = { id: vm.uuid ?? vm.urn, name: vm.name };
    this.id = _snap.name;
    this.disks = volumes.map((v) => v.info);
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
    const epoch = since.slice(0, since.lastIndexOf('/'));
    return epoch === v.cbtCreateTime ? null : `change tracking of volume ${v.name} was recreated (CBT creation time ${epoch} -> ${v.cbtCreateTime})`;
  }

  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent> {
    const v = this._vol(disk);
    const page = this._o.pageBlocks ?? 65536;
    return new Observable<Extent>((subscriber) => {
      let stopped = false;
      (async () => {
        let blockBytes = 0;
        for (let start = 0; !stopped && (blockBytes === 0 || start * blockBytes < disk.capacity); start += page) {
          const asked = { startBlock: start, blockCount: page };
          const reply = (await this._fc.call('POST', `${v.uri}/getcbt`, `changed blocks of volume ${v.name}`, {
            snapUuid: v.snapUuid,
            volCbtCreateTime: v.cbtCreateTime,
            ...(since ? { changeId: since.slice(since.lastIndexOf('/') + 1) } : {}),
            startBlock: asked.startBlock,
            blockCount: asked.blockCount,
          })) as unknown as CbtPage;
          blockBytes = reply.sectorsPerBlock * 512;
          // bitmapExtents refuses an answer without a whole positive sectorsPerBlock.
          for (const e of bitmapExtents(reply, asked, disk.capacity, v.name)) subscriber.next(e);
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

  private _channel(v: FcVolume): Promise<DataChannel> {
    return this._channels.get(v.info.id, async () => {
      const transfer = this._o.transfer ?? 'lanssl';
      const t = await this._fc.call('POST', `${v.uri}/backupresources`, `data channel of volume ${v.name}`, {
        taskType: 'CBTBackup',
        ip: this._ip,
        snapUrns: [this._snap.urn],
        transferType: transfer,
      });
      const done = await this._fc.waitTask(String(t.taskUri), `data channel of volume ${v.name}`, this._o.taskTimeoutMs ?? 3600_000);
      const r = (done.result ?? done) as Partial<DataChannelInfo>;
      if (!r.host || !r.port || !r.token || !r.url) throw new HamalError('FC_DATA_CHANNEL', `the data channel task of volume ${v.name} gave no host, port, token and url`, { subject: v.urn });
      return new DataChannel({ host: r.host, port: Number(r.port), token: r.token, url: r.url }, transfer, this._o.maxConnectionsPerHost ?? 8, this._o.dataCaFile ?? this._o.client.caFile, this._o.client.timeoutMs ?? 600_000);
    });
  }

  async read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into : Buffer.allocUnsafe(length);
    return (await this._channel(this._vol(disk))).read(offset, length, buf);
  }

  async release(): Promise<void> {
    if (this._released) return;
    this._released = true;
    // Channels share their host's agent and cap: nothing of theirs to stop.
    await this._channels.stopAll(() => undefined);
    try {
      await deleteSnapshot(this._fc, this._snap.uri, this._snap.name, this._o.deleteSnapTimeoutMs ?? 3600_000);
    } catch (err) {
      log.child('fusion_compute').warn(`snapshot ${this._snap.name} not deleted (${(err as Error).message}); the next sync of ${this.vm.name} sweeps it`);
    } finally {
      await this._fc.logout();
    }
  }
}
