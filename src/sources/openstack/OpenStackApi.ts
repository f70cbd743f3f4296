import { HamalError, NotFoundError } from '../../errors.ts';
import type { HttpJson } from '../http/HttpJson.ts';
import type { Keystone } from './Keystone.ts';

export interface Server {
  id: string;
  name: string;
  status: string;
  /** The image a server booted from; empty when it boots from a volume. */
  image: { id?: string } | string;
  addresses: Record<string, Array<{ addr: string; version?: number; 'OS-EXT-IPS-MAC:mac_addr'?: string }>>;
  flavor?: unknown;
}

export interface VolumeAttachment {
  volumeId: string;
  device: string;
}

export interface Volume {
  id: string;
  name: string | null;
  size: number;
  bootable?: string;
}

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/**
 * The documented subset of Nova (compute API v2.1) and Cinder (block storage v3) that
 * finds a server's disks. Calls carry the Keystone token; a 401 renews it once.
 */
export class OpenStackApi {
  constructor(
    private readonly _http: HttpJson,
    private readonly _keystone: Keystone,
  ) {}

  private async _get(service: 'compute' | 'volumev3', path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
    const url = `${await this._keystone.endpoint(service)}${path}`;
    let res = await this._http.request('GET', url, { 'X-Auth-Token': await this._keystone.token(), ...headers });
    if (res.status === 401) {
      await this._keystone.renew();
      res = await this._http.request('GET', url, { 'X-Auth-Token': await this._keystone.token(), ...headers });
      if (res.status === 401) {
        throw new HamalError('OPENSTACK_TOKEN_REFUSED', `${service} at ${new URL(url).origin} refused a fresh token (expired or revoked at once: check the clocks and the Keystone of this cloud)`, {
          subject: service,
        });
      }
    }
    return res;
  }

  private async _json(service: 'compute' | 'volumev3', path: string, what: string): Promise<unknown> {
    const res = await this._get(service, path);
    if (res.status === 404) throw new NotFoundError('OPENSTACK_NOT_FOUND', `${what} not found`, { subject: what });
    if (res.status >= 300) {
      throw new HamalError('OPENSTACK_FAILED', `${what}: HTTP ${res.status} from ${service}`, { subject: what, retryable: res.status >= 500 || res.status === 429 });
    }
    return res.body;
  }

  /** A server by id or by exact name; a name several servers have is an error listing them. */
  async findServer(selector: string): Promise<Server> {
    if (UUID.test(selector)) {
      try {
        return ((await this._json('compute', `/servers/${encodeURIComponent(selector)}`, `server ${selector}`)) as { server: Server }).server;
      } catch (err) {
        if (!(err instanceof NotFoundError)) throw err;
      }
    }
    const name = selector.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const list = ((await this._json('compute', `/servers/detail?name=${encodeURIComponent(`^${name}$`)}`, `servers named ${selector}`)) as { servers: Server[] }).servers.filter(
      (s) => s.name === selector,
    );
    if (list.length === 1) return list[0]!;
    if (!list.length) throw new NotFoundError('VM_NOT_FOUND', `no server ${selector} in this project (by id or name)`, { subject: selector });
    throw new HamalError('VM_AMBIGUOUS', `${list.length} servers are named ${selector}: ${list.map((s) => s.id).join(', ')}; give the id`, { subject: selector });
  }

  async attachments(serverId: string): Promise<VolumeAttachment[]> {
    const body = (await this._json('compute', `/servers/${serverId}/os-volume_attachments`, `volume attachments of server ${serverId}`)) as { volumeAttachments: VolumeAttachment[] };
    return body.volumeAttachments ?? [];
  }

  async volume(id: string): Promise<Volume> {
    return ((await this._json('volumev3', `/volumes/${id}`, `volume ${id}`)) as { volume: Volume }).volume;
  }

  /**
   * RBD image names of the server's volumes from Cinder's attachment records (API 3.27+),
   * which carry `connection_info` when the credentials may see it (usually admin);
   * an empty map otherwise, and the caller falls back to pool naming.
   */
  async rbdNames(serverId: string): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const res = await this._get('volumev3', `/attachments/detail?instance_id=${serverId}`, { 'OpenStack-API-Version': 'volume 3.27' });
    if (res.status >= 300) return out;
    for (const a of (res.body as { attachments?: Array<{ volume_id: string; connection_info?: { driver_volume_type?: string; data?: { name?: string } } }> })?.attachments ?? []) {
      const ci = a.connection_info;
      if (ci?.driver_volume_type === 'rbd' && ci.data?.name) out.set(a.volume_id, ci.data.name);
    }
    return out;
  }
}
