// A STAND-IN for OpenStack, for tests only: no OpenStack runs here, so this serves the
// documented subset hamal calls, from the API references (Keystone v3 "Password
// authentication with scoped authorization" and "Authenticating with an Application
// Credential", POST /v3/auth/tokens; Nova "Show Server Details" GET /servers/{id}, "List
// Servers Detailed" GET /servers/detail?name=, "List volume attachments for an instance"
// GET /servers/{id}/os-volume_attachments; Cinder "Show a volume's details"
// GET /v3/{project}/volumes/{id}, "List attachments with details" GET /attachments/detail
// (3.27)). The disks behind it are real RBD images on the test Ceph cluster.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';

export interface StandInServer {
  id: string;
  name: string;
  /** Booted from an image (root = vms/<id>_disk) or from a volume. */
  image: { id: string } | '';
  volumes: Array<{ id: string; name: string; sizeGb: number; device: string }>;
  addresses?: Record<string, Array<{ addr: string; 'OS-EXT-IPS-MAC:mac_addr': string; version: number }>>;
}

export class OpenStackStandIn {
  url = '';
  readonly servers: StandInServer[] = [];
  /** Tokens live this long; `expireAll()` revokes every token issued so far. */
  tokenTtlMs = 3600_000;
  /** connection_info with the RBD name in attachment records (as an admin would see it). */
  exposeConnectionInfo = false;
  readonly tokensIssued: string[] = [];
  readonly calls: string[] = [];
  private readonly _valid = new Map<string, number>();
  private _server?: http.Server;

  constructor(
    readonly users: Record<string, string>,
    readonly appCredentials: Record<string, string> = {},
  ) {}

  async start(): Promise<void> {
    this._server = http.createServer((req, res) => void this._handle(req, res));
    await new Promise<void>((r) => this._server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this._server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    return new Promise((r) => this._server?.close(() => r()) ?? r());
  }

  expireAll(): void {
    this._valid.clear();
  }

  private _json(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  }

  private async _handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let text = '';
    for await (const c of req) text += c;
    const url = new URL(req.url!, this.url);
    this.calls.push(`${req.method} ${url.pathname}`);
    if (req.method === 'POST' && url.pathname === '/identity/v3/auth/tokens') {
      const auth = JSON.parse(text).auth;
      const id = auth.identity;
      const ok =
        (id.methods[0] === 'password' && this.users[id.password.user.name] === id.password.user.password && auth.scope?.project?.name) ||
        (id.methods[0] === 'application_credential' && this.appCredentials[id.application_credential.id] === id.application_credential.secret);
      if (!ok) return this._json(res, 401, { error: { code: 401, title: 'Unauthorized', message: 'The request you have made requires authentication.' } });
      const token = `gAAAA${randomBytes(24).toString('hex')}`;
      this._valid.set(token, Date.now() + this.tokenTtlMs);
      this.tokensIssued.push(token);
      const catalog = [
        { type: 'compute', name: 'nova', endpoints: [{ interface: 'public', region: 'RegionOne', url: `${this.url}/compute/v2.1` }] },
        { type: 'volumev3', name: 'cinderv3', endpoints: [{ interface: 'public', region: 'RegionOne', url: `${this.url}/volume/v3/p1` }] },
      ];
      return this._json(res, 201, { token: { expires_at: new Date(Date.now() + this.tokenTtlMs).toISOString(), catalog, project: { id: 'p1' } } }, { 'X-Subject-Token': token });
    }
    if (!((this._valid.get(String(req.headers['x-auth-token'])) ?? 0) > Date.now())) return this._json(res, 401, { error: { code: 401, message: 'The request you have made requires authentication.' } });
    let m: RegExpExecArray | null;
    if ((m = /^\/compute\/v2\.1\/servers\/([^/]+)$/.exec(url.pathname)) && m[1] !== 'detail') {
      const s = this.servers.find((x) => x.id === m![1]);
      return s ? this._json(res, 200, { server: this._server_(s) }) : this._json(res, 404, { itemNotFound: { code: 404, message: `Instance ${m[1]} could not be found.` } });
    }
    if (url.pathname === '/compute/v2.1/servers/detail') {
      const re = new RegExp(url.searchParams.get('name') ?? '.*');
      return this._json(res, 200, { servers: this.servers.filter((s) => re.test(s.name)).map((s) => this._server_(s)) });
    }
    if ((m = /^\/compute\/v2\.1\/servers\/([^/]+)\/os-volume_attachments$/.exec(url.pathname))) {
      const s = this.servers.find((x) => x.id === m![1]);
      if (!s) return this._json(res, 404, {});
      return this._json(res, 200, { volumeAttachments: s.volumes.map((v) => ({ id: v.id, serverId: s.id, volumeId: v.id, device: v.device })) });
    }
    if ((m = /^\/volume\/v3\/p1\/volumes\/([^/]+)$/.exec(url.pathname))) {
      const v = this.servers.flatMap((s) => s.volumes).find((x) => x.id === m![1]);
      return v ? this._json(res, 200, { volume: { id: v.id, name: v.name, size: v.sizeGb, bootable: 'false', status: 'in-use' } }) : this._json(res, 404, {});
    }
    if (url.pathname === '/volume/v3/p1/attachments/detail') {
      if (req.headers['openstack-api-version'] !== 'volume 3.27') return this._json(res, 404, {});
      const s = this.servers.find((x) => x.id === url.searchParams.get('instance_id'));
      const attachments = (s?.volumes ?? []).map((v) => ({
        id: `att-${v.id}`,
        volume_id: v.id,
        instance: s!.id,
        connection_info: this.exposeConnectionInfo ? { driver_volume_type: 'rbd', data: { name: `volumes/volume-${v.id}` } } : null,
      }));
      return this._json(res, 200, { attachments });
    }
    this._json(res, 404, { error: `no such path in the stand-in: ${url.pathname}` });
  }

  private _server_(s: StandInServer) {
    return { id: s.id, name: s.name, status: 'ACTIVE', image: s.image, addresses: s.addresses ?? {}, flavor: { original_name: 'm1.small' } };
  }
}
