import http from 'node:http';
import https from 'node:https';
import { HamalError } from '../../errors.ts';
import { Slots } from '../../streams/Slots.ts';

/** What reads one volume snapshot from its data channel: the built-in reader, or a command's NBD export. */
export interface VolumeReader {
  read(offset: number, length: number, into: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

/** Where a volume's data is read from, as a backup resource names it. */
export interface DataChannelInfo {
  host: string;
  port: number;
  token: string;
  /** Path of the resource on that host. */
  url: string;
}

/**
 * The built-in reader of a volume snapshot's data channel. UNVERIFIED against a VRM: no
 * public source describes the wire protocol past the backup resource's answer, so this is
 * the most likely reading (docs/fusion_compute.md): HTTP Range GETs of the resource URL on
 * host:port, the token in X-Auth-Token, TLS (verified) for `lanssl`, plain HTTP for `lan`.
 * `[fusion_compute] data_channel_command` replaces it with an operator's own program.
 */
export class DataChannel implements VolumeReader {
  private readonly _agent: http.Agent;
  private readonly _slots: Slots;

  constructor(
    readonly info: DataChannelInfo,
    private readonly _transfer: 'lanssl' | 'lan',
    maxConnections: number,
    /** PEM the channel's certificate is verified with (the task's CA file, or the resource's caCert); system CAs when absent. */
    ca: string | undefined,
    private readonly _timeoutMs: number,
  ) {
    const h = hostConnections(`${_transfer}://${info.host}:${info.port}`, maxConnections, _transfer, ca);
    this._agent = h.agent;
    this._slots = h.slots;
  }

  read(offset: number, length: number, into: Buffer): Promise<Buffer> {
    return this._slots.use(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          const lib = this._transfer === 'lanssl' ? https : http;
          const req = lib.request(
            { host: this.info.host, port: this.info.port, path: this.info.url, method: 'GET', agent: this._agent, timeout: this._timeoutMs, headers: { 'X-Auth-Token': this.info.token, Range: `bytes=${offset}-${offset + length - 1}` } },
            (res) => {
              if (res.statusCode !== 206 && res.statusCode !== 200) {
                res.resume();
                return reject(new HamalError('FC_DATA_CHANNEL', `data channel ${this.info.host}:${this.info.port} answered HTTP ${res.statusCode} for ${length} bytes at ${offset}`, { subject: this.info.url, retryable: true }));
              }
              let got = 0;
              res.on('data', (d: Buffer) => {
                if (got + d.length <= length) d.copy(into, got);
                got += d.length;
              });
              res.on('end', () =>
                got === length
                  ? resolve(into.subarray(0, length))
                  : reject(new HamalError('FC_DATA_CHANNEL', `data channel ${this.info.host}:${this.info.port} sent ${got} of ${length} bytes at ${offset}`, { subject: this.info.url, retryable: true })),
              );
              res.on('error', reject);
            },
          );
          req.on('timeout', () => req.destroy(new Error('timed out')));
          req.on('error', (err) => reject(new HamalError('FC_DATA_CHANNEL', `data channel ${this.info.host}:${this.info.port}: ${err.message}`, { subject: this.info.url, cause: err, retryable: true })));
          req.end();
        }),
    );
  }

  /** Sockets belong to the host's shared agent: nothing of this channel's to close. */
  async close(): Promise<void> {}
}

/**
 * One agent and one cap per data-channel host, shared by every disk and task of the
 * process: the agent never opens more sockets than the cap (idle keep-alive ones
 * included), the slots make readers wait for one.
 */
const perHost = new Map<string, { slots: Slots; agent: http.Agent }>();
function hostConnections(host: string, max: number, transfer: 'lanssl' | 'lan', ca: string | undefined) {
  // A host whose certificate changed (a new caCert) gets an agent, and a cap, of its own.
  const key = `${host} ${ca ?? ''}`;
  let h = perHost.get(key);
  if (!h || h.slots.size !== max) {
    const o = { keepAlive: true, maxSockets: max, maxTotalSockets: max };
    h?.agent.destroy();
    h = { slots: new Slots(max, 'max_socket_connections_per_host'), agent: transfer === 'lanssl' ? new https.Agent({ ...o, ca }) : new http.Agent(o) };
    perHost.set(key, h);
  }
  return h;
}
