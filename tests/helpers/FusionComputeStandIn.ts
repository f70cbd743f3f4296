// A STAND-IN for Huawei FusionCompute, for tests only. Huawei publishes no runnable
// FusionCompute, so this serves what hamal calls, written from the public REST reference
// as docs/fusion_compute.md reads it (each route cites the part it follows). The same
// reading wrote the client: agreement here proves only that the two agree, not that
// FusionCompute behaves so.
// Volumes are sparse image files; the stand-in tracks written blocks itself, as a
// hypervisor's CBT does, so tests write through `write()`.
import http from 'node:http';
import https from 'node:https';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { promises as fsp, openSync, readSync, closeSync } from 'node:fs';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

const run = promisify(execFile);
const SECTORS_PER_BLOCK = 128; // 64 KiB CBT blocks
const BLOCK = SECTORS_PER_BLOCK * 512;

interface Volume {
  uuid: string;
  urn: string;
  name: string;
  file: string;
  quantityGB: number;
  cbtCreateTime: string;
  /** Write generation of each block ever written. */
  writes: Map<number, number>;
}
interface Snap {
  name: string;
  urn: string;
  uri: string;
  gen: number;
  /** volume urn -> frozen copy, snapUuid, changeId */
  vols: Map<string, { file: string; snapUuid: string; changeId: string }>;
}

export class FusionComputeStandIn {
  url = '';
  dataPort = 0;
  readonly volumes: Volume[] = [];
  readonly snaps: Snap[] = [];
  readonly vm = { urn: 'urn:sites:1:vms:i-00000001', uri: '/service/sites/1/vms/i-00000001', uuid: randomUUID(), name: 'fc-vm-1' };
  /** Snapshot tasks stay "running" for ever. */
  hangSnapshots = false;
  /** getcbt answers one byte short. */
  shortBitmap = false;
  /** The most data-channel connections open at once (asserted by tests). */
  maxOpenDataConnections = 0;
  private _openData = 0;
  private _gen = 0;
  private readonly _tasks = new Map<string, { status: string; result?: unknown }>();
  private readonly _tokens = new Set<string>();
  private readonly _channels = new Map<string, string>(); // token -> frozen file
  private _api?: http.Server;
  private _data?: http.Server | https.Server;

  constructor(
    private readonly _dir: string,
    private readonly _user: string,
    private readonly _password: string,
    /** Serve data channels over TLS (lanssl) with this key and certificate. */
    private readonly _tls?: { key: string; cert: string },
  ) {}

  async addVolume(name: string, quantityGB: number): Promise<Volume> {
    const uuid = randomUUID();
    const file = join(this._dir, `${uuid}.img`);
    await fsp.writeFile(file, '');
    await fsp.truncate(file, quantityGB * 1024 ** 3);
    const v: Volume = { uuid, urn: `urn:sites:1:volumes:${uuid}`, name, file, quantityGB, cbtCreateTime: new Date().toISOString(), writes: new Map() };
    this.volumes.push(v);
    return v;
  }

  /** A guest write: the data lands in the image, its blocks are marked changed. */
  async write(v: Volume, offset: number, data: Buffer): Promise<void> {
    const fh = await fsp.open(v.file, 'r+');
    await fh.write(data, 0, data.length, offset);
    await fh.close();
    const gen = ++this._gen;
    for (let b = Math.floor(offset / BLOCK); b * BLOCK < offset + data.length; b++) v.writes.set(b, gen);
  }

  async start(): Promise<void> {
    this._api = http.createServer((q, s) => void this._handle(q, s).catch((e) => this._json(s, 500, { errorCode: 'standin', errorDes: String(e) })));
    await new Promise<void>((r) => this._api!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this._api.address() as AddressInfo).port}`;
    this._data = this._tls ? https.createServer(this._tls, (q, s) => this._serveData(q, s)) : http.createServer((q, s) => this._serveData(q, s));
    this._data.on('connection', (sock) => {
      this._openData++;
      this.maxOpenDataConnections = Math.max(this.maxOpenDataConnections, this._openData);
      sock.on('close', () => this._openData--);
    });
    await new Promise<void>((r) => this._data!.listen(0, '127.0.0.1', r));
    this.dataPort = (this._data.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this._data?.closeAllConnections();
    await Promise.all([this._api, this._data].map((s) => new Promise((r) => s?.close(r) ?? r(undefined))));
  }

  private _json(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    res.writeHead(status, { 'Content-Type': 'application/json;charset=UTF-8', ...headers });
    res.end(JSON.stringify(body));
  }

  private _task(status: string, result?: unknown): string {
    const id = randomBytes(6).toString('hex');
    this._tasks.set(id, { status, result });
    return `/service/sites/1/tasks/${id}`;
  }

  private async _handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let text = '';
    for await (const c of req) text += c;
    const body = text ? JSON.parse(text) : {};
    const path = new URL(req.url!, this.url).pathname;
    // Reference "Logging In to the System": POST /service/session, X-Auth-User / X-Auth-Key, token in X-Auth-Token.
    if (req.method === 'POST' && path === '/service/session') {
      if (req.headers['x-auth-user'] !== this._user || req.headers['x-auth-key'] !== this._password) return this._json(res, 401, { errorCode: '10000040', errorDes: 'Authentication failed.' });
      const token = randomBytes(16).toString('hex');
      this._tokens.add(token);
      return this._json(res, 200, {}, { 'X-Auth-Token': token });
    }
    if (!this._tokens.has(String(req.headers['x-auth-token']))) return this._json(res, 401, { errorCode: '10000005', errorDes: 'Not logged in.' });
    if (req.method === 'DELETE' && path === '/service/session') return this._json(res, 200, {});
    // "Querying Site Information": GET /service/sites.
    if (path === '/service/sites') return this._json(res, 200, { sites: [{ urn: 'urn:sites:1', uri: '/service/sites/1', name: 'site1' }] });
    // "Querying VMs": GET {site uri}/vms.
    if (path === '/service/sites/1/vms') return this._json(res, 200, { vms: [{ urn: this.vm.urn, uri: this.vm.uri, uuid: this.vm.uuid, name: this.vm.name, status: 'running' }] });
    // "Querying VM Details": vmConfig.disks with volumeUrn / volumeUri / sequenceNum.
    if (req.method === 'GET' && path === this.vm.uri) {
      return this._json(res, 200, {
        ...this.vm,
        vmConfig: { disks: this.volumes.map((v, i) => ({ volumeUrn: v.urn, volumeUri: `/service/sites/1/volumes/${v.uuid}`, sequenceNum: i + 1, quantityGB: v.quantityGB })) },
      });
    }
    // "Querying Snapshots of a VM" / "Creating a VM Snapshot" (type CBTbackup) -> a task.
    if (path === `${this.vm.uri}/snapshots`) {
      if (req.method === 'GET') return this._json(res, 200, { snapshots: this.snaps.map((s) => ({ name: s.name, urn: s.urn, uri: s.uri })) });
      if (body.type !== 'CBTbackup') return this._json(res, 400, { errorCode: 'standin', errorDes: 'type must be CBTbackup' });
      const id = randomBytes(4).toString('hex');
      const snap: Snap = { name: body.name, urn: `urn:sites:1:vms:i-00000001:snapshots:${id}`, uri: `${this.vm.uri}/snapshots/${id}`, gen: this._gen, vols: new Map() };
      for (const v of this.volumes) {
        const frozen = `${v.file}.${id}`;
        await run('cp', ['--sparse=always', v.file, frozen]);
        snap.vols.set(v.urn, { file: frozen, snapUuid: randomUUID(), changeId: String(this._gen) });
      }
      this.snaps.push(snap);
      return this._json(res, 200, { taskUrn: 'urn:task', taskUri: this._task(this.hangSnapshots ? 'running' : 'success'), urn: snap.urn, uri: snap.uri });
    }
    const snap = this.snaps.find((s) => s.uri === path);
    if (snap) {
      if (req.method === 'DELETE') {
        this.snaps.splice(this.snaps.indexOf(snap), 1);
        for (const v of snap.vols.values()) await fsp.rm(v.file, { force: true });
        return this._json(res, 200, { taskUri: this._task('success') });
      }
      return this._json(res, 200, {
        name: snap.name,
        urn: snap.urn,
        uri: snap.uri,
        type: 'CBTbackup',
        volsnapshots: [...snap.vols].map(([volumeUrn, s]) => ({ volumeUrn, snapUuid: s.snapUuid, changeId: s.changeId })),
      });
    }
    const task = /^\/service\/sites\/1\/tasks\/(\w+)$/.exec(path);
    if (task) {
      const t = this._tasks.get(task[1]!);
      return t ? this._json(res, 200, { status: t.status, progress: t.status === 'success' ? 100 : 10, result: t.result }) : this._json(res, 404, {});
    }
    const vol = /^\/service\/sites\/1\/volumes\/([^/]+)(\/getcbt|\/backupresources)?$/.exec(path);
    const v = vol && this.volumes.find((x) => x.uuid === vol[1]);
    if (vol && v) {
      // "Querying a Volume": quantityGB, and the CBT creation time this reading assumes.
      if (!vol[2]) return this._json(res, 200, { urn: v.urn, uuid: v.uuid, name: v.name, quantityGB: v.quantityGB, cbtCreateTime: v.cbtCreateTime });
      if (vol[2] === '/getcbt') {
        // "Querying CBT bitmaps": snapUuid, volCbtCreateTime, optional changeId, startBlock and blockCount (multiples of 8).
        if (body.startBlock % 8 || body.blockCount % 8) return this._json(res, 400, { errorCode: 'standin', errorDes: 'startBlock and blockCount must be multiples of 8' });
        const s = this.snaps.find((x) => [...x.vols.values()].some((y) => y.snapUuid === body.snapUuid));
        if (!s || body.volCbtCreateTime !== v.cbtCreateTime) return this._json(res, 400, { errorCode: 'standin', errorDes: 'unknown snapshot or CBT creation time' });
        const since = body.changeId === undefined ? -1 : Number(body.changeId);
        const bits = Buffer.alloc(body.blockCount / 8 - (this.shortBitmap ? 1 : 0));
        for (const [b, gen] of v.writes) {
          const i = b - body.startBlock;
          if (i >= 0 && i < bits.length * 8 && gen > since && gen <= s.gen) bits[i >> 3]! |= 1 << (i & 7);
        }
        return this._json(res, 200, { startBlock: body.startBlock, blockCount: body.blockCount, sectorsPerBlock: SECTORS_PER_BLOCK, bitCount: body.blockCount, bitmap: bits.toString('base64') });
      }
      // "Creating backup resources" (taskType CBTBackup, ip, snapUrns, transferType) -> task with host, port, token, url.
      const s = this.snaps.find((x) => x.urn === body.snapUrns?.[0]);
      if (!s || body.taskType !== 'CBTBackup' || !body.ip) return this._json(res, 400, { errorCode: 'standin', errorDes: 'bad backupresources request' });
      const token = randomBytes(12).toString('hex');
      this._channels.set(token, s.vols.get(v.urn)!.file);
      return this._json(res, 200, { taskUri: this._task('success', { host: '127.0.0.1', port: this.dataPort, token, url: `/data/${v.uuid}` }) });
    }
    this._json(res, 404, { errorCode: 'standin', errorDes: `no route ${req.method} ${path}` });
  }

  /** The data channel as docs/fusion_compute.md reads it: Range GETs with the token. */
  private _serveData(req: http.IncomingMessage, res: http.ServerResponse): void {
    const file = this._channels.get(String(req.headers['x-auth-token']));
    const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range));
    if (!file || !m) return void res.writeHead(file ? 416 : 403).end();
    const start = Number(m[1]);
    const len = Number(m[2]) - start + 1;
    const buf = Buffer.alloc(len);
    const fd = openSync(file, 'r');
    try {
      readSync(fd, buf, 0, len, start);
    } finally {
      closeSync(fd);
    }
    res.writeHead(206, { 'Content-Length': String(len), 'Content-Range': `bytes ${start}-${start + len - 1}/*` });
    res.end(buf);
  }
}
