import https from 'node:https';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { XMLParser } from 'fast-xml-parser';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';

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

const ARRAYS = new Set(['objects', 'propSet', 'device', 'returnval', 'changedArea', 'missingSet']);
const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', isArray: (name) => ARRAYS.has(name.replace(/^.*:/, '')) });

/**
 * vSphere Web Services (SOAP) calls hamal makes, as hand-built document/literal envelopes
 * read back with fast-xml-parser: the WSDL is tens of thousands of lines and vcsim serves
 * none, the calls are few, and raw envelopes were 4x faster per call than `soap` with a
 * hand-written WSDL subset (FACTS). The session cookie is kept and sent with every call;
 * a call answered NotAuthenticated logs in once more and is retried.
 */
export class VsphereClient {
  readonly url: URL;
  private readonly _options: VsphereOptions;
  private readonly _agent: https.Agent;
  private _cookie = '';
  /** RetrieveServiceContent's answer: rootFolder, propertyCollector, viewManager, sessionManager... */
  content: Record<string, unknown> = {};

  private constructor(options: VsphereOptions, agent: https.Agent) {
    this._options = options;
    this.url = new URL(options.url);
    this._agent = agent;
  }

  static async connect(options: VsphereOptions): Promise<VsphereClient> {
    log.addSecret(options.password);
    const url = new URL(options.url);
    const agent = await tlsAgent(url, options);
    const client = new VsphereClient(options, agent);
    const [content] = await client.call('RetrieveServiceContent', { type: 'ServiceInstance', value: 'ServiceInstance' }, '');
    client.content = content as Record<string, unknown>;
    await client._login();
    return client;
  }

  /** Logs in again (after a NotAuthenticated answer). */
  relogin(): Promise<void> {
    return this._login();
  }

  private async _login(): Promise<void> {
    try {
      await this.call(
        'Login',
        this.mor('sessionManager'),
        `<userName>${xml(this._options.username)}</userName><password>${xml(this._options.password)}</password>`,
        false,
      );
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

  /** Calls `method` on `target` with `body` (XML of its parameters); returns the parsed `returnval` elements. */
  async call(method: string, target: Mor, body: string, relogin = true): Promise<unknown[]> {
    const envelope =
      '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ' +
      'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>' +
      `<${method} xmlns="urn:vim25"><_this type="${xml(target.type)}">${xml(target.value)}</_this>${body}</${method}>` +
      '</soapenv:Body></soapenv:Envelope>';
    const { status, text, cookie } = await this._post(envelope);
    if (cookie) {
      this._cookie = cookie;
      log.addSecret(cookie.slice(cookie.indexOf('=') + 1));
    }
    const doc = parser.parse(text);
    const envelopeKey = Object.keys(doc).find((k) => k.endsWith('Envelope'))!;
    const bodyKey = Object.keys(doc[envelopeKey]).find((k) => k.endsWith('Body'))!;
    const out = doc[envelopeKey][bodyKey];
    const faultKey = Object.keys(out).find((k) => k.endsWith('Fault'));
    if (faultKey || status >= 400) {
      const fault = faultKey ? out[faultKey] : {};
      const detail = JSON.stringify(fault.detail ?? {});
      const kind = /NotAuthenticated/.test(detail) ? 'NotAuthenticated' : /InvalidLogin/.test(detail) ? 'InvalidLogin' : '';
      if (kind === 'NotAuthenticated' && relogin) {
        await this._login();
        return this.call(method, target, body, false);
      }
      throw new HamalError('VSPHERE_FAULT', `${method} on ${this.url.host} failed: ${kind || fault.faultstring || `HTTP ${status}`}`, {
        subject: `${target.type}:${target.value}`,
      });
    }
    const response = out[Object.keys(out).find((k) => k.endsWith(`${method}Response`))!] ?? {};
    return (response.returnval as unknown[] | undefined) ?? [];
  }

  private _post(envelope: string): Promise<{ status: number; text: string; cookie?: string }> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        this.url,
        {
          method: 'POST',
          agent: this._agent,
          timeout: this._options.timeoutMs ?? 600_000,
          headers: {
            'Content-Type': 'text/xml; charset=utf-8',
            SOAPAction: '"urn:vim25/6.5"',
            ...(this._cookie ? { Cookie: this._cookie } : {}),
          },
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('end', () => {
            const set = res.headers['set-cookie']?.find((c) => c.startsWith('vmware_soap_session'));
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8'), cookie: set?.split(';')[0] });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) =>
        reject(
          new HamalError('VSPHERE_UNREACHABLE', `cannot reach ${this.url.host}: ${(err as Error).message}`, { subject: this.url.host, cause: err, retryable: true }),
        ),
      );
      req.end(envelope);
    });
  }

  /**
   * A GET with the session (datastore `/folder` reads): `range` as [offset, length].
   * Resolves with the status and the body written into `into` when given.
   */
  get(path: string, range?: [number, number], into?: Buffer): Promise<{ status: number; body: Buffer }> {
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
          res.on('data', (d: Buffer) => {
            if (into && got + d.length <= into.length) d.copy(into, got);
            else parts.push(d);
            got += d.length;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: into && !parts.length ? into.subarray(0, got) : Buffer.concat(parts) }));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) => reject(new HamalError('VSPHERE_UNREACHABLE', `cannot reach ${this.url.host}: ${err.message}`, { subject: this.url.host, cause: err, retryable: true })));
      req.end();
    });
  }

  async logout(): Promise<void> {
    await this.call('Logout', this.mor('sessionManager'), '', false).catch(() => {});
    this._agent.destroy();
  }
}

/** XML text escaping: names and passwords go into envelopes as text. */
export function xml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/**
 * TLS is always verified: by the pinned thumbprint (the certificate whose fingerprint
 * matches becomes the only trusted one), by a CA file, or by the system CAs.
 */
async function tlsAgent(url: URL, options: VsphereOptions): Promise<https.Agent> {
  const port = Number(url.port || 443);
  if (options.thumbprint) {
    const want = options.thumbprint.toUpperCase();
    const cert = await new Promise<tls.PeerCertificate>((resolve, reject) => {
      const servername = isIP(url.hostname) ? undefined : url.hostname;
      const socket = tls.connect({ host: url.hostname, port, servername, rejectUnauthorized: false }, () => {
        resolve(socket.getPeerCertificate());
        socket.end();
      });
      socket.on('error', (err) => reject(new HamalError('VSPHERE_UNREACHABLE', `cannot reach ${url.host}: ${err.message}`, { subject: url.host, cause: err, retryable: true })));
    });
    if (cert.fingerprint256 !== want && cert.fingerprint !== want) {
      throw new HamalError('TLS_THUMBPRINT_MISMATCH', `the certificate of ${url.host} (SHA-256 ${cert.fingerprint256}) does not match the pinned thumbprint`, {
        subject: url.host,
      });
    }
    const pem = `-----BEGIN CERTIFICATE-----\n${cert.raw.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
    // Trust exactly that certificate; its host name is whatever the operator pinned.
    return new https.Agent({ keepAlive: true, ca: pem, checkServerIdentity: () => undefined });
  }
  return new https.Agent({ keepAlive: true, ca: options.caFile ? readFileSync(options.caFile) : undefined });
}
