// A fault-injecting TCP proxy between the S3 client and radosgw (test tool, no public
// equivalent fits): drops connections in the middle of chunk PUTs, answers bursts of
// 503 SlowDown, or stalls a request. Requests are recognised by a request line at the
// start of a read from the client, which is how the SDK's writes arrive on loopback.
import net from 'node:net';

export interface Faults {
  /** The next N chunk PUTs lose their connection after part of the body. */
  dropPuts?: number;
  /** The next N requests get 503 SlowDown without reaching the server. */
  slowDowns?: number;
  /** The next request is held this long before it is forwarded. */
  stallMs?: number;
}

export class FaultProxy {
  readonly faults: Faults = {};
  injected = { drops: 0, slowDowns: 0, stalls: 0 };
  private readonly _server: net.Server;
  private readonly _sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {
    this._server = net.createServer((client) => this._handle(client));
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this._server.listen(0, '127.0.0.1', resolve));
    this.port = (this._server.address() as net.AddressInfo).port;
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    for (const s of this._sockets) s.destroy();
    await new Promise((resolve) => this._server.close(resolve));
  }

  private _handle(client: net.Socket): void {
    const upstream = net.connect(this.target.port, this.target.host);
    this._sockets.add(client).add(upstream);
    const kill = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', kill).on('error', kill);
    upstream.on('close', kill).on('error', kill);
    upstream.pipe(client);
    let held: Promise<void> = Promise.resolve();
    client.on('data', (data: Buffer) => {
      const head = data.subarray(0, 200).toString('latin1');
      const request = /^(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP\/1\.1/.exec(head);
      const f = this.faults;
      if (request && f.slowDowns) {
        f.slowDowns--;
        this.injected.slowDowns++;
        const body = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';
        client.end(`HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
        upstream.destroy();
        return;
      }
      if (request && request[1] === 'PUT' && request[2]!.includes('/chunks/') && f.dropPuts) {
        f.dropPuts--;
        this.injected.drops++;
        upstream.write(data.subarray(0, Math.min(data.length, 1000)));
        setTimeout(kill, 5);
        return;
      }
      if (request && f.stallMs) {
        const ms = f.stallMs;
        f.stallMs = 0;
        this.injected.stalls++;
        held = held.then(() => new Promise((r) => setTimeout(r, ms)));
      }
      client.pause();
      void held.then(() => {
        if (!upstream.destroyed) upstream.write(data);
        client.resume();
      });
    });
  }
}
