// What a guest does to its disks, through the vcsim launcher's test-control endpoints
// (tests/vcsim): the launcher writes into whatever the running disk is (the flat extent,
// or the newest snapshot delta), so tests need not know ESXi's layout.
import https from 'node:https';
import { createHash } from 'node:crypto';

export class VcsimControl {
  constructor(
    private readonly _sdkUrl: string,
    private readonly _ca: string,
  ) {}

  /** One request to a /hamal/ endpoint; resolves with the body, rejects on a status >= 300. */
  request(method: 'GET' | 'POST', path: string, query: Record<string, string | number>, body?: Buffer): Promise<Buffer> {
    const url = new URL(path, this._sdkUrl);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, String(v));
    return new Promise((resolve, reject) => {
      const req = https.request(url, { method, ca: this._ca, headers: body ? { 'Content-Length': body.length } : {} }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          const out = Buffer.concat(parts);
          if ((res.statusCode ?? 0) >= 300) reject(new Error(`${method} ${url.pathname}: HTTP ${res.statusCode}: ${out.toString().slice(0, 200)}`));
          else resolve(out);
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  /** The guest writes `data` at `offset` of disk `key` of VM `vm` (a moref). */
  async write(vm: string, key: number, offset: number, data: Buffer): Promise<void> {
    // In pieces, so a 40 MiB pattern is not one request body.
    const piece = 8 * 1024 * 1024;
    for (let at = 0; at < data.length; at += piece) {
      await this.request('POST', '/hamal/guest-write', { vm, disk: key, offset: offset + at }, data.subarray(at, at + piece));
    }
  }

  /** What the guest sees on disk `key` now, whole. */
  read(vm: string, key: number): Promise<Buffer> {
    return this.request('GET', '/hamal/guest-read', { vm, disk: key });
  }

  async sha256(vm: string, key: number): Promise<string> {
    return createHash('sha256').update(await this.read(vm, key)).digest('hex');
  }
}
