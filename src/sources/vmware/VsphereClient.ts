import type http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { readFileSync } from 'node:fs';
import * as soap from 'soap';
import { VIM25_WSDL } from './vim25Wsdl.ts';
import { parseSoapReply } from './SoapReply.ts';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { copyBytes } from '../../copyBytes.ts';

/** A managed object reference: `{ type: 'VirtualMachine', value: 'vm-42' }`. */
export interface Mor {
  type: string;
  value: string;
}

export interface VsphereOptions {
  /** `https://vcenter/sdk`. */
  url: string;
  username: string;
  password: string;
  /** SHA-256 (or SHA-1) fingerprint of the server certificate to pin, `AA:BB:...`. */
  thumbprint?: string;
  /** PEM bundle that signs the server certificate. Without it or a thumbprint, the system CAs. */
  caFile?: string;
  /** One SOAP call's limit. @default 600 s (the seed's default_request_timeout) */
  timeoutMs?: number;
}


/** A SOAP fault the server answered: `faultType` is the vim25 fault (InvalidArgument, FileFault, ...). */
export class VsphereFault extends HamalError {
  constructor(
    message: string,
    readonly faultType: string | undefined,
    subject: string,
  ) {
    super('VSPHERE_FAULT', message, { subject });
  }
}

/** Arguments of a vim25 call as `soap` takes them; a reference is `ref(mor)`. */
export type Args = Record<string, unknown>;

/** A managed object reference as a `soap` argument (the `type` attribute and the id as text). */
export function ref(m: Mor): Args {
  return { attributes: { type: m.type }, $value: m.value };
}

/** The largest SOAP reply read into memory (a big inventory is a few MiB). */
const MAX_REPLY_BYTES = 256 * 1024 * 1024;

/** How often an idle session is touched (vCenter drops sessions idle for 30 minutes by default). */
const KEEPALIVE_MS = 10 * 60_000;

/**
 * vSphere Web Services calls. Requests are written by `soap` from a hand-written subset of
 * the vim25 WSDL (vim25Wsdl.ts): it escapes text and qualifies elements. Replies are read
 * from the raw XML with fast-xml-parser, because property values are `xsd:anyType` and
 * polymorphic (`xsi:type`), which a WSDL subset cannot describe and `soap` would flatten
 * into strings. The session cookie is kept and sent with every call and every datastore
 * read, touched every 10 minutes while connected; a call answered NotAuthenticated logs
 * in once more and is retried.
 */
export class VsphereClient {
  readonly url: URL;
  private readonly _options: VsphereOptions;
  private readonly _agent: https.Agent;
  private readonly _soap: soap.Client;
  private _cookie = '';
  private _keepAlive?: ReturnType<typeof setInterval>;
  /** RetrieveServiceContent's answer: rootFolder, propertyCollector, viewManager, sessionManager... */
  content: Record<string, unknown> = {};

  private constructor(options: VsphereOptions, agent: https.Agent, client: soap.Client) {
    this._options = options;
    this.url = new URL(options.url);
    this._agent = agent;
    this._soap = client;
  }

  static async connect(options: VsphereOptions): Promise<VsphereClient> {
    log.addSecret(options.password);
    const url = new URL(options.url);
    const agent = tlsAgent(url, options);
    const client = new VsphereClient(options, agent, await soap.createClientAsync(VIM25_WSDL, {}, url.href));
    const [content] = await client.call('RetrieveServiceContent', { type: 'ServiceInstance', value: 'ServiceInstance' });
    client.content = content as Record<string, unknown>;
    await client._login();
    client._keepAlive = setInterval(() => {
      client.call('CurrentTime', { type: 'ServiceInstance', value: 'ServiceInstance' }).catch((err) => log.child('vmware').warn(`keep-alive of the session on ${url.host} failed: ${(err as Error).message}`));
    }, KEEPALIVE_MS);
    client._keepAlive.unref?.();
    return client;
  }

  /** Logs in again (after a NotAuthenticated answer). */
  relogin(): Promise<void> {
    return this._login();
  }

  private async _login(): Promise<void> {
    try {
      await this.call('Login', this.mor('sessionManager'), { userName: this._options.username, password: this._options.password }, false);
    } catch (err) {
      if ((err as HamalError).code === 'VSPHERE_FAULT' && /InvalidLogin/.test((err as Error).message)) {
        throw new HamalError('VSPHERE_LOGIN_FAILED', `login to ${this.url.host} as ${this._options.username} failed: wrong user name or password`, {
          subject: this.url.host,
        });
      }
      throw err;
    }
  }

  /** A reference from the service content, e.g. `mor('propertyCollector')`. */
  mor(name: string): Mor {
    const m = this.content[name] as { '#text': string; '@type': string } | undefined;
    if (!m) throw new HamalError('VSPHERE_FAULT', `${this.url.host} has no ${name}`);
    return { type: m['@type'], value: m['#text'] };
  }

  /** Calls `method` on `target` with `args` (in the order the WSDL declares them); returns the parsed `returnval` elements. */
  async call(method: string, target: Mor, args: Args = {}, relogin = true): Promise<unknown[]> {
    const fn = (this._soap as unknown as Record<string, (a: Args, o: object) => Promise<[unknown, string]>>)[`${method}Async`];
    if (!fn) throw new HamalError('VSPHERE_FAULT', `${method} is not in hamal's vim25 WSDL subset`);
    let text: string;
    let status = 200;
    try {
      if (this._cookie) {
        this._soap.clearHttpHeaders();
        this._soap.addHttpHeader('Cookie', this._cookie);
      }
      [, text] = await fn.call(this._soap, { _this: ref(target), ...args }, { httpsAgent: this._agent, timeout: this._options.timeoutMs ?? 600_000, maxContentLength: MAX_REPLY_BYTES });
    } catch (err) {
      const e = err as { body?: string; response?: { status?: number; data?: unknown }; message?: string };
      const body = e.body ?? (typeof e.response?.data === 'string' ? e.response.data : undefined);
      status = e.response?.status ?? 0;
      const ours = ownError(err);
      if (ours) throw ours;
      if (!body || !body.includes('Envelope')) throw httpError(this.url.host, method, status, body, err);
      text = body;
      status ||= 500;
    }
    const set = (this._soap.lastResponseHeaders?.['set-cookie'] as string[] | undefined)?.find((c) => c.startsWith('vmware_soap_session'));
    if (set) {
      this._cookie = set.split(';')[0]!;
      log.addSecret(this._cookie.slice(this._cookie.indexOf('=') + 1));
    }
    const reply = parseSoapReply(text, method, this.url.host, status);
    if (reply.fault) {
      if (reply.fault.kind === 'NotAuthenticated' && relogin) {
        await this._login();
        return this.call(method, target, args, false);
      }
      throw new VsphereFault(`${method} on ${this.url.host} failed: ${reply.fault.message}`, reply.fault.type, `${target.type}:${target.value}`);
    }
    return reply.returnval;
  }

  /**
   * A GET with the session (datastore `/folder` reads): `range` as [offset, length]. The
   * body goes into `into` when given (more than it holds is an error, never a shifted
   * copy), else is kept up to `limit` bytes, past which the reply is cut off: a server
   * that ignores Range never makes hamal buffer a whole disk.
   */
  get(path: string, o: { range?: [number, number]; into?: Buffer; limit?: number } = {}): Promise<{ status: number; body: Buffer; contentRange?: string }> {
    const { range, limit = 1 << 20 } = o;
    return new Promise((resolve, reject) => {
      const req = https.request(
        new URL(path, this.url),
        {
          method: 'GET',
          agent: this._agent,
          timeout: this._options.timeoutMs ?? 600_000,
          headers: { Cookie: this._cookie, ...(range ? { Range: `bytes=${range[0]}-${range[0] + range[1] - 1}` } : {}) },
        },
        (res) => {
          const parts: Buffer[] = [];
          let got = 0;
          // Only a part answered (206) goes into `into`; anything else is an error page or a whole file.
          const into = res.statusCode === 206 ? o.into : undefined;
          const done = () => resolve({ status: res.statusCode ?? 0, body: into ? into.subarray(0, got) : Buffer.concat(parts).subarray(0, limit), contentRange: res.headers['content-range'] });
          res.on('data', (d: Buffer) => {
            if (into && got + d.length > into.length) {
              res.destroy();
              return reject(new HamalError('DATASTORE_READ_FAILED', `${path.replace(/\?.*/, '')} on ${this.url.host} sent more than the ${into.length} bytes asked for (HTTP ${res.statusCode})`, { subject: path, retryable: true }));
            }
            if (into) copyBytes(d, into, got);
            else parts.push(d);
            got += d.length;
            if (!into && got > limit) {
              res.destroy();
              done();
            }
          });
          res.on('end', done);
          res.on('error', (err) => reject(new HamalError('VSPHERE_UNREACHABLE', `reading ${path.replace(/\?.*/, '')} from ${this.url.host}: ${err.message || (err as NodeJS.ErrnoException).code}`, { subject: this.url.host, retryable: true })));
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) => reject(ownError(err) ?? new HamalError('VSPHERE_UNREACHABLE', `cannot reach ${this.url.host}: ${err.message || (err as NodeJS.ErrnoException).code}`, { subject: this.url.host, cause: err, retryable: true })));
      req.end();
    });
  }

  async logout(): Promise<void> {
    clearInterval(this._keepAlive);
    await this.call('Logout', this.mor('sessionManager'), {}, false).catch(() => {});
    this._agent.destroy();
  }
}

/** A HamalError raised under an HTTP client (the pin check), however deep it sits. */
function ownError(err: unknown): HamalError | undefined {
  for (let e = err, i = 0; e && i < 4; e = (e as { cause?: unknown }).cause, i++) if (e instanceof HamalError) return e;
  return undefined;
}

/**
 * A call that got no SOAP reply: an HTTP error page (a proxy's 502/503, a login portal)
 * is reported with its status and the start of its text, a failed connection with its
 * cause; never "undefined".
 */
function httpError(host: string, method: string, status: number, body: string | undefined, err: unknown): HamalError {
  // Only what says why: the client's error object carries the request (Login's body holds
  // the password, every request the session cookie), which nothing may keep.
  const e0 = err as { message?: string; code?: string; cause?: { message?: string } };
  const cause = Object.assign(new Error(e0.message || e0.code || 'request failed'), { code: e0.code });
  if (status) {
    const text = (body ?? '').replace(/<(script|style)\b[\s\S]*?<\/\1>/gi, ' ').replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 160);
    return new HamalError('VSPHERE_HTTP_ERROR', `${method} on ${host}: HTTP ${status}, not a SOAP reply${text ? `: ${JSON.stringify(text)}` : ' (empty body)'}`, {
      subject: host,
      cause,
      retryable: status >= 500 || status === 429,
    });
  }
  const why = e0.message || e0.code || e0.cause?.message || String(err);
  return new HamalError('VSPHERE_UNREACHABLE', `cannot reach ${host}: ${why}`, { subject: host, cause, retryable: true });
}

/**
 * TLS is always verified: by the pinned thumbprint, by a CA file, or by the system CAs.
 * A pin is checked against the leaf certificate the server presents, whoever signed it
 * (vCenter and ESXi certificates are signed by VMCA, vCenter's own CA, by default), and
 * then only that certificate is trusted: no CA, no host name.
 */
function tlsAgent(url: URL, options: VsphereOptions): https.Agent {
  if (options.thumbprint) return new PinnedAgent(url.host, options.thumbprint);
  return new https.Agent({ keepAlive: true, ca: options.caFile ? readFileSync(options.caFile) : undefined });
}

/**
 * An agent whose connections are handed to a request only once the server's leaf
 * certificate matched the pin (SHA-256, or SHA-1 as vSphere shows it), so nothing (no
 * password, no cookie) is written to a server that is not the pinned one.
 */
class PinnedAgent extends https.Agent {
  private readonly _want: string;

  constructor(
    private readonly _host: string,
    thumbprint: string,
    private readonly _handshakeMs = 30_000,
  ) {
    super({ keepAlive: true });
    this._want = thumbprint.toUpperCase();
  }

  override createConnection(options: http.RequestOptions, done?: (err: Error | null, socket: Duplex) => void): Duplex | undefined {
    const socket = tls.connect({ ...(options as tls.ConnectionOptions), rejectUnauthorized: false, checkServerIdentity: () => undefined });
    const fail = (err: Error) => done?.(err, socket);
    socket.once('error', fail);
    // No request holds the socket yet, so no request timeout covers a stalled handshake.
    socket.setTimeout(this._handshakeMs, () => socket.destroy(new HamalError('VSPHERE_UNREACHABLE', `TLS handshake with ${this._host} did not finish within ${this._handshakeMs / 1000} s`, { subject: this._host, retryable: true })));
    socket.once('secureConnect', () => {
      socket.setTimeout(0);
      socket.off('error', fail);
      const cert = socket.getPeerCertificate();
      if (cert.fingerprint256 === this._want || cert.fingerprint === this._want) {
        done?.(null, socket);
        return;
      }
      socket.destroy();
      done?.(
        new HamalError('TLS_THUMBPRINT_MISMATCH', `the certificate of ${this._host} does not match the pinned thumbprint: expected ${this._want}, the server presented ${cert.fingerprint256 ? `SHA-256 ${cert.fingerprint256} (SHA-1 ${cert.fingerprint})` : 'no certificate'}`, {
          subject: this._host,
        }),
        socket,
      );
    });
    return undefined;
  }
}
