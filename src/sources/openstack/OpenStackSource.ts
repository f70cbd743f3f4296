import { defer, from, mergeMap, type Observable } from 'rxjs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import type { DiskInfo, Snapshot, SnapshotOptions, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { Rbd, type CephAccess } from '../../ceph/Rbd.ts';
import { NbdServerProcess } from '../nbd/NbdServerProcess.ts';
import { PerDisk } from '../PerDisk.ts';
import { HttpJson } from '../http/HttpJson.ts';
import { Keystone, type KeystoneOptions } from './Keystone.ts';
import { OpenStackApi, type Server } from './OpenStackApi.ts';

export interface OpenStackSourceOptions {
  keystone: KeystoneOptions;
  /** CA bundle for the OpenStack APIs; the system CAs otherwise. */
  caFile?: string;
  ceph: CephAccess;
  /** Pool of Cinder volumes (`volume-<id>`), when the API does not say. @default 'volumes' */
  volumesPool?: string;
  /** Pool of Nova ephemeral disks (`<server id>_disk`). @default 'vms' */
  vmsPool?: string;
  /** As `[openstack_ceph] skip_disk_flag`. @default false */
  skipDiskFlag?: boolean;
  /** @default 48 */
  diskFlagSizeMb?: number;
  /** Largest NBD read request. @default 4 MiB */
  maxReadBytes?: number;
  /** Connections qemu-nbd accepts per disk (the readers of one disk). @default 4 */
  readers?: number;
  /** Where qemu-nbd sockets live. @default os.tmpdir() */
  workDir?: string;
  /** One API call's limit. @default 600 s */
  timeoutMs?: number;
}

/** Snapshots hamal takes carry this prefix; the newest one of each image is the base of the next diff. */
export const RBD_SNAPSHOT_PREFIX = 'hamal-';

interface OsDisk {
  info: DiskInfo;
  /** `pool/image`. */
  image: string;
}

/**
 * OpenStack with Ceph RBD (docs/openstack.md): Keystone, Nova and Cinder find the server's
 * disks (its volumes, and its ephemeral root when it booted from an image); `rbd` takes a
 * snapshot of each image and lists what changed since the previous one (`rbd diff
 * --from-snap`); qemu-nbd serves each snapshot for random-access reads of whole blocks.
 * The changeId of a disk is the name of its snapshot.
 */
export class OpenStackSource implements Source {
  readonly platform = 'openstack_ceph';
  constructor(private readonly _o: OpenStackSourceOptions) {}

  async snapshot(selector: string, options: SnapshotOptions = {}): Promise<Snapshot> {
    const o = this._o;
    const http = new HttpJson(o.caFile, o.timeoutMs ?? 600_000);
    try {
      const api = new OpenStackApi(http, new Keystone(http, o.keystone));
      const server = await api.findServer(selector);
      const rbd = new Rbd(o.ceph);
      const found: Array<{ id: string; label: string; image: string }> = [];
      const imageBooted = typeof server.image === 'object' && !!server.image?.id;
      if (imageBooted) found.push({ id: 'root', label: 'root (ephemeral)', image: `${o.vmsPool ?? 'vms'}/${server.id}_disk` });
      const attachments = await api.attachments(server.id);
      const names = attachments.length ? await api.rbdNames(server.id) : new Map<string, string>();
      for (const a of attachments) {
        const v = await api.volume(a.volumeId);
        found.push({ id: `volume-${v.id}`, label: `${a.device} (${v.name || v.id})`, image: names.get(v.id) ?? `${o.volumesPool ?? 'volumes'}/volume-${v.id}` });
      }
      const flagBytes = (o.diskFlagSizeMb ?? 48) * 1024 * 1024;
      const disks: Array<{ id: string; label: string; image: string; capacity: number }> = [];
      const skipped: string[] = [];
      // One rbd call costs 0.1-0.2 s: the images are asked in parallel, and their snapshots
      // (the resume check, the base check and the cleanup use them) with their sizes.
      const listed = Promise.all(found.map(async (d) => [d.image, (await rbd.snapshots(d.image)).map((x) => x.name)] as const));
      listed.catch(() => {}); // awaited below, unless the sizes fail first
      const sizes = await Promise.all(found.map((d) => rbd.info(d.image)));
      found.forEach((d, i) => {
        const size = sizes[i]!.size;
        if (!o.skipDiskFlag && size < flagBytes) skipped.push(`${d.label}: flag disk (smaller than ${o.diskFlagSizeMb ?? 48} MB)`);
        else disks.push({ ...d, capacity: size });
      });
      const existing = new Map(await listed);
      for (const s of skipped) log.child('openstack').warn(`server ${server.name}: disk ${s}; not synced`);

      // The snapshot an interrupted sync's journal names is reused when every image still has it.
      const reuse = new Set(options.reuse ?? []);
      let name: string | undefined;
      for (const candidate of reuse) {
        if (!candidate.startsWith(RBD_SNAPSHOT_PREFIX)) continue;
        if (disks.every((d) => existing.get(d.image)!.includes(candidate))) name = candidate;
      }
      if (name) log.child('openstack').info(`server ${server.name}: resuming with snapshot ${name} of the interrupted sync`);
      else {
        name = `${RBD_SNAPSHOT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '')}`;
        const made = await Promise.allSettled(disks.map((d) => rbd.createSnapshot(d.image, name!)));
        const failed = made.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) {
          await Promise.allSettled(disks.filter((_, i) => made[i]!.status === 'fulfilled').map((d) => rbd.removeSnapshot(d.image, name!)));
          throw failed.reason;
        }
      }
      const osDisks = disks.map((d) => ({ image: d.image, info: { id: d.id, label: d.label, capacity: d.capacity, changeId: name! } }));
      return new RbdSnapshot(server, name, osDisks, skipped, rbd, o, existing);
    } finally {
      http.close();
    }
  }
}

function nicsOf(server: Server) {
  const byMac = new Map<string, { mac: string; network: string; ips: string[] }>();
  for (const [network, addrs] of Object.entries(server.addresses ?? {})) {
    for (const a of addrs) {
      const mac = a['OS-EXT-IPS-MAC:mac_addr'] ?? '';
      const key = `${network}/${mac}`;
      if (!byMac.has(key)) byMac.set(key, { mac, network, ips: [] });
      byMac.get(key)!.ips.push(a.addr);
    }
  }
  return [...byMac.values()];
}

class RbdSnapshot implements Snapshot {
  readonly platform = 'openstack_ceph';
  readonly vm: { id: string; name: string };
  readonly id: string;
  readonly disks: readonly DiskInfo[];
  readonly info: Record<string, unknown>;
  private readonly _byId: Map<string, OsDisk>;
  private readonly _exports = new PerDisk<NbdServerProcess>();
  private _released = false;

  constructor(
    server: Server,
    private readonly _name: string,
    disks: OsDisk[],
    skipped: string[],
    private readonly _rbd: Rbd,
    private readonly _o: OpenStackSourceOptions,
    /** Snapshots of each image before this one was taken. */
    private readonly _before: Map<string, string[]>,
  ) {
    this.vm = { id: server.id, name: server.name };
    this.id = _name;
    this.disks = disks.map((d) => d.info);
    this._byId = new Map(disks.map((d) => [d.info.id, d]));
    this.info = { serverId: server.id, status: server.status, images: disks.map((d) => `${d.image}@${_name}`), notSynced: skipped, nics: nicsOf(server) };
  }

  private _disk(disk: DiskInfo): OsDisk {
    const d = this._byId.get(disk.id);
    if (!d || this._released) throw new HamalError('DISK_CLOSED', `disk ${disk.id} is not in snapshot ${this.id}`);
    return d;
  }

  async checkSince(disk: DiskInfo, since: ChangeId): Promise<string | null> {
    const d = this._disk(disk);
    if (since === this._name) return null;
    if (!this._before.get(d.image)?.includes(since)) return `snapshot ${since} of the last sync is gone from ${d.image} (removed outside hamal)`;
    return null;
  }

  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent> {
    const d = this._disk(disk);
    return defer(() => {
      // qemu-nbd starts (and connects to Ceph) while rbd diff runs: reads follow at once.
      this._export(d).catch(() => {}); // its failure reaches the first read
      return from(this._rbd.diff(d.image, this._name, since ?? undefined));
    }).pipe(
      // Discarded areas (exists false) changed too: their blocks are read again, as zeros.
      mergeMap((extents) => extents.sort((a, b) => a.offset - b.offset).map((e) => ({ offset: e.offset, length: e.length }))),
    );
  }

  private _export(disk: OsDisk): Promise<NbdServerProcess> {
    return this._exports.get(disk.info.id, async () => {
      const a = this._rbd.access;
      for (const [what, v] of [['ceph.conf', a.conf], ['keyring', a.keyring]] as const) {
        if (/[:@]/.test(v)) throw new HamalError('CEPH_PATH', `the ${what} path ${v} holds ':' or '@', which qemu's rbd: syntax cannot carry`, { subject: v });
      }
      const dir = await NbdServerProcess.privateDir(this._o.workDir ?? tmpdir(), 'qemu-nbd');
      const socket = join(dir, 'nbd.sock');
      const id = a.user.replace(/^client\./, '');
      const argv = [
        'qemu-nbd',
        '--read-only',
        '--persistent',
        `--shared=${this._o.readers ?? 4}`,
        '--format=raw',
        `--socket=${socket}`,
        `rbd:${disk.image}@${this._name}:conf=${a.conf}:id=${id}:keyring=${a.keyring}`,
      ];
      return NbdServerProcess.start(argv, dir, socket, `${disk.image}@${this._name}`, this._o.maxReadBytes ?? 4 * 1024 * 1024);
    });
  }

  async read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return (await this._export(this._disk(disk))).client.read(offset, length, into);
  }

  async release(committed: readonly string[] = []): Promise<void> {
    if (this._released) return;
    this._released = true;
    await this._exports.stopAll((e) => e.stop());
    const done = new Set(committed);
    const sub = log.child('openstack');
    // Committed: this snapshot is the base of the next diff, older ones of ours (and
    // leftovers) go. Not committed (stopped, failed): it stays, so the next run reuses it
    // and resumes from the journal, which no other snapshot could give (an RBD diff needs
    // both ends); that run's commit removes it, as it removes every older one of ours.
    // An RBD snapshot costs only the space of what changes after it. Images in parallel.
    const removals = [...this._byId.values()].flatMap((d) =>
      (done.has(d.info.id) ? (this._before.get(d.image) ?? []).filter((n) => n.startsWith(RBD_SNAPSHOT_PREFIX) && n !== this._name) : []).map((name) => ({ image: d.image, name })),
    );
    const kept = [...this._byId.values()].filter((d) => !done.has(d.info.id));
    if (kept.length) sub.info(`snapshot ${this._name} kept on ${kept.map((d) => d.image).join(', ')} (not committed): the next sync resumes from it`);
    await Promise.all(
      removals.map(({ image, name }) => this._rbd.removeSnapshot(image, name).catch((err: Error) => sub.warn(`snapshot ${name} of ${image} not removed: ${err.message}`))),
    );
  }
}
