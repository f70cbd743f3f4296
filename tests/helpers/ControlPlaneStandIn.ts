// A STAND-IN for the control plane, for tests only: the commercial one is not public, so
// this implements hamal's own protocol (docs/control-plane.md) from that document, and
// nothing more. It signs tasks with an Ed25519 key of its own, records what the proxy
// reports, and can be taken "down" (HTTP 503) to test retries.
import http from 'node:http';
import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { canonicalJson } from '../../src/canonicalJson.ts';

export const AUTH_KEY = 'ab#cd-auth-key-for-tests';

export class ControlPlaneStandIn {
  readonly heartbeats: Array<Record<string, unknown>> = [];
  readonly progress: Array<Record<string, unknown>> = [];
  readonly results: Array<Record<string, unknown>> = [];
  readonly unauthorized: string[] = [];
  /** Signed tasks handed out at the next polls, per proxy, until a result for them arrives. */
  readonly queue = new Map<string, unknown[]>();
  down = false;
  /** Results answered 503 (retried by the proxy, docs/control-plane.md) while polls are answered. */
  refuseResults = false;
  /** Leased tasks (docs/control-plane.md, Leases), by task id. */
  readonly leases = new Map<string, { task: unknown; epoch: number; holder: string; expiresAt: number; ttlSeconds: number; candidates: string[]; done: boolean }>();
  /** Results of an older lease epoch than the task's current one: ignored. */
  readonly staleResults: Array<Record<string, unknown>> = [];
  /** Lease renewals refused (proxy, epoch). */
  readonly refusedRenewals: string[] = [];
  readonly publicKeyPem: string;
  private readonly _privateKey: KeyObject;
  private _server?: http.Server;
  url = '';

  constructor() {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    this.publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    this._privateKey = privateKey;
  }

  /** Listens on `port` (default: any free one; give the old one to come back where proxies look). */
  async start(port = 0): Promise<void> {
    this._server = http.createServer((req, res) => void this._handle(req, res));
    await new Promise<void>((r) => this._server!.listen(port, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this._server.address() as AddressInfo).port}`;
  }

  /** Goes down: stops listening and drops every connection (kept-alive ones too). */
  stop(): Promise<void> {
    return new Promise((r) => {
      if (!this._server) return r();
      this._server.close(() => r());
      this._server.closeAllConnections();
    });
  }

  /** Signs a task for `proxyId` (docs/control-plane.md, "Signed tasks"); `key` forges it with another key. */
  signed(id: string, proxyId: string, task: unknown, o: { expiresInMs?: number; nonce?: string; key?: KeyObject } = {}) {
    const now = Date.now();
    const envelope = {
      id,
      proxyId,
      issuedAt: new Date(now).toISOString(),
      expiresAt: new Date(now + (o.expiresInMs ?? 3600_000)).toISOString(),
      nonce: o.nonce ?? randomBytes(16).toString('hex'),
      task,
    };
    return { envelope, signature: sign(null, Buffer.from(canonicalJson(envelope)), o.key ?? this._privateKey).toString('base64') };
  }

  enqueue(proxyId: string, signedTask: unknown): void {
    this.queue.set(proxyId, [...(this.queue.get(proxyId) ?? []), signedTask]);
  }

  /**
   * A task several proxies may run: handed to `candidates[0]` under epoch 1; once its
   * lease expires without renewal, handed to the next candidate that polls, epoch + 1.
   */
  leased(id: string, task: unknown, candidates: string[], ttlSeconds: number): void {
    this.leases.set(id, { task, epoch: 1, holder: candidates[0]!, expiresAt: Date.now() + ttlSeconds * 1000, ttlSeconds, candidates, done: false });
  }

  private _leasedFor(proxy: string): unknown[] {
    const out: unknown[] = [];
    for (const [id, l] of this.leases) {
      if (l.done || !l.candidates.includes(proxy)) continue;
      if (l.holder !== proxy) {
        if (Date.now() < l.expiresAt) continue;
        l.epoch++;
        l.holder = proxy;
        l.expiresAt = Date.now() + l.ttlSeconds * 1000;
      }
      const signed = this.signed(id, proxy, l.task);
      const envelope = { ...signed.envelope, lease: { epoch: l.epoch, ttlSeconds: l.ttlSeconds } };
      out.push({ envelope, signature: sign(null, Buffer.from(canonicalJson(envelope)), this._privateKey).toString('base64') });
    }
    return out;
  }

  private async _handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let body = '';
    for await (const chunk of req) body += chunk;
    if (this.down) return void res.writeHead(503).end('down for the test');
    if (req.headers.authorization !== `Bearer ${AUTH_KEY}`) {
      this.unauthorized.push(`${req.method} ${req.url}`);
      return void res.writeHead(401).end('{"error":"unauthorized"}');
    }
    const json = body ? JSON.parse(body) : undefined;
    let m: RegExpExecArray | null;
    if ((m = /^\/v1\/proxies\/([^/]+)\/heartbeat$/.exec(req.url!)) && req.method === 'POST') {
      this.heartbeats.push(json);
      return void res.writeHead(204).end();
    }
    if ((m = /^\/v1\/proxies\/([^/]+)\/tasks$/.exec(req.url!)) && req.method === 'GET') {
      const proxy = decodeURIComponent(m[1]!);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return void res.end(JSON.stringify({ tasks: [...(this.queue.get(proxy) ?? []), ...this._leasedFor(proxy)] }));
    }
    if ((m = /^\/v1\/tasks\/([^/]+)\/lease$/.exec(req.url!)) && req.method === 'POST') {
      const l = this.leases.get(decodeURIComponent(m[1]!));
      if (!l || l.done || l.holder !== json.proxyId || l.epoch !== json.epoch) {
        this.refusedRenewals.push(`${json.proxyId}@${json.epoch}`);
        return void res.writeHead(409, { 'Content-Type': 'application/json' }).end('{"error":"lease held by another proxy"}');
      }
      l.expiresAt = Date.now() + l.ttlSeconds * 1000;
      return void res.writeHead(204).end();
    }
    if ((m = /^\/v1\/tasks\/([^/]+)\/(progress|result)$/.exec(req.url!)) && req.method === 'POST') {
      const taskId = decodeURIComponent(m[1]!);
      if (this.refuseResults && m[2] === 'result') return void res.writeHead(503).end('results refused for the test');
      const l = this.leases.get(taskId);
      if (l && m[2] === 'result' && json.epoch !== l.epoch) {
        this.staleResults.push(json);
        return void res.writeHead(204).end();
      }
      if (l && m[2] === 'result') l.done = true;
      (m[2] === 'progress' ? this.progress : this.results).push(json);
      if (m[2] === 'result') {
        for (const [p, list] of this.queue) this.queue.set(p, list.filter((t) => (t as { envelope?: { id?: string } }).envelope?.id !== taskId));
      }
      return void res.writeHead(204).end();
    }
    res.writeHead(404).end();
  }
}
