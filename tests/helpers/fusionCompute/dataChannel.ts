// The data host a backup resource names (hostIP:hostPort). No public source describes its
// wire protocol, so it keeps the earlier stand-in's exactly: any path, the resource's token
// in an X-Auth-Token header, one `Range: bytes=a-b`; 206 with the bytes and
// `Content-Range: bytes a-b/*`; 403 without a live token, 416 without a Range.
// It serves the frozen content of the resource's snapUrn2 volume snapshot.
import http from 'node:http';
import https from 'node:https';
import { openSync, readSync, closeSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { FcState } from './state.ts';
import { byToken } from './backupResources.ts';

export class DataChannel {
  port = 0;
  maxOpen = 0;
  private _open = 0;
  private _server?: http.Server | https.Server;

  constructor(
    private readonly _st: FcState,
    private readonly _tls?: { key: string; cert: string },
  ) {}

  async start(): Promise<void> {
    const handler = (q: http.IncomingMessage, s: http.ServerResponse) => this._serve(q, s);
    this._server = this._tls ? https.createServer(this._tls, handler) : http.createServer(handler);
    this._server.on('connection', (sock) => {
      this._open++;
      this.maxOpen = Math.max(this.maxOpen, this._open);
      sock.on('close', () => this._open--);
    });
    await new Promise<void>((r) => this._server!.listen(0, '127.0.0.1', r));
    this.port = (this._server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this._server?.closeAllConnections();
    await new Promise((r) => (this._server ? this._server.close(r) : r(undefined)));
  }

  private _serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const r = byToken(this._st, String(req.headers['x-auth-token']));
    const file = r?.snap.vols.get(r.volume.urn)?.file;
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
