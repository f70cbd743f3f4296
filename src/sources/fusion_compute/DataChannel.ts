import http from 'node:http';
import https from 'node:https';
import { HamalError } from '../../errors.ts';
import { Slots } from '../../streams/Slots.ts';
import { copyBytes } from '../../copyBytes.ts';

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
  /** The volume's name, for errors. */
  volume: string;
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
    this._slots = hostSlots(`${info.host}:${info.port}`, maxConnections);
    this._agent = hostAgent(`${_transfer}://${info.host}:${info.port}`, maxConnections, _transfer, ca);
  }

  read(offset: number, length: number, into: Buffer): Promise<Buffer> {
    const where = `data channel ${this.info.host}:${this.info.port} of volume ${this.info.volume}`;
    const fail = (why: string, retryable = true, cause?: Error) => new HamalError('FC_DATA_CHANNEL', `${where}: ${why}`, { subject: this.info.volume, retryable, cause });
    return this._slots.use(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          const lib = this._transfer === 'lanssl' ? https : http;
          const req = lib.request(
            { host: this.info.host, port: this.info.port, path: this.info.url, method: 'GET', agent: this._agent, timeout: this._timeoutMs, headers: { 'X-Auth-Token': this.info.token, Range: `bytes=${offset}-${offset + length - 1}` } },
            (res) => {
              // Only the part asked for, at its offset: anything else would be stored shifted.
              const start = /^bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''))?.[1];
              const why =
                res.statusCode !== 206 ? `answered HTTP ${res.statusCode} for ${length} bytes at ${offset}${res.statusCode === 200 ? ' (the whole resource: Range ignored)' : ''}` : start !== undefined && Number(start) !== offset ? `answered the part at ${start} for ${length} bytes at ${offset}` : undefined;
              if (why) {
                res.destroy();
                return reject(fail(why, res.statusCode !== 200));
              }
              let got = 0;
              res.on('data', (d: Buffer) => {
                if (got + d.length > length) {
                  res.destroy();
                  return reject(fail(`sent more than the ${length} bytes asked for at ${offset}`));
                }
                copyBytes(d, into, got);
                got += d.length;
              });
              res.on('end', () => (got === length ? resolve(into.subarray(0, length)) : reject(fail(`sent ${got} of ${length} bytes at ${offset}`))));
              res.on('error', (err) => reject(fail(err.message, true, err)));
            },
          );
          req.on('timeout', () => req.destroy(new Error('timed out')));
          req.on('error', (err) => reject(fail(err.message, true, err)));
          req.end();
        }),
    );
  }

  /** Sockets belong to the host's shared agent: nothing of this channel's to close. */
  async close(): Promise<void> {}
}

/**
 * One cap per data-channel host, shared by every disk and task of the process
 * (`max_socket_connections_per_host`), and one keep-alive agent per host and CA that never
 * opens more sockets than the cap: the slots make readers wait for one.
 */
const slotsPerHost = new Map<string, Slots>();
const agents = new Map<string, http.Agent>();

function hostSlots(host: string, max: number): Slots {
  let slots = slotsPerHost.get(host);
  if (!slots || slots.size !== max) slotsPerHost.set(host, (slots = new Slots(max, 'max_socket_connections_per_host')));
  return slots;
}

function hostAgent(host: string, max: number, transfer: 'lanssl' | 'lan', ca: string | undefined): http.Agent {
  const key = `${host} ${max} ${ca ?? ''}`;
  let agent = agents.get(key);
  if (!agent) {
    const o = { keepAlive: true, maxSockets: max, maxTotalSockets: max };
    // A host whose certificate changed (a new caCert) replaces its agent.
    for (const [k, a] of agents) if (k.startsWith(`${host} `)) (a.destroy(), agents.delete(k));
    agents.set(key, (agent = transfer === 'lanssl' ? new https.Agent({ ...o, ca }) : new http.Agent(o)));
  }
  return agent;
}
