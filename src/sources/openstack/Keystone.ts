import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import type { HttpJson } from '../http/HttpJson.ts';

/** Who the proxy is to Keystone v3: a user with a project scope, or an application credential. */
export type KeystoneCredentials =
  | { kind: 'password'; username: string; userDomainName?: string; projectName: string; projectDomainName?: string; password: string }
  | { kind: 'application_credential'; id: string; secret: string };

export interface KeystoneOptions {
  /** `https://keystone:5000/v3`. */
  authUrl: string;
  credentials: KeystoneCredentials;
  /** Catalog endpoints of this region; the first one when absent. */
  region?: string;
  /** @default 'public' */
  interface?: 'public' | 'internal' | 'admin';
}

interface CatalogEntry {
  type: string;
  endpoints: Array<{ interface: string; region?: string; region_id?: string; url: string }>;
}

/** A token is renewed this long before it expires, so no call starts with a token about to lapse. */
const RENEW_BEFORE_MS = 5 * 60_000;

/**
 * Keystone v3 tokens: issued once, reused for every call, renewed before expiry, and once
 * more when a service answers 401 (revoked or expired early). The service catalog gives
 * the endpoints of Nova (`compute`) and Cinder (`volumev3`).
 */
export class Keystone {
  private _token?: { value: string; expiresAt: number; catalog: CatalogEntry[] };
  private _issuing?: Promise<void>;

  constructor(
    private readonly _http: HttpJson,
    private readonly _o: KeystoneOptions,
  ) {
    const c = _o.credentials;
    log.addSecret(c.kind === 'password' ? c.password : c.secret);
  }

  private get _who(): string {
    const c = this._o.credentials;
    return c.kind === 'password' ? `user ${c.username} (project ${c.projectName})` : `application credential ${c.id}`;
  }

  async token(): Promise<string> {
    if (!this._token || this._token.expiresAt - Date.now() < RENEW_BEFORE_MS) await this.renew();
    return this._token!.value;
  }

  /** Issues a new token (concurrent callers share one request). */
  renew(): Promise<void> {
    this._issuing ??= this._issue().finally(() => (this._issuing = undefined));
    return this._issuing;
  }

  private async _issue(): Promise<void> {
    const c = this._o.credentials;
    const identity =
      c.kind === 'password'
        ? { methods: ['password'], password: { user: { name: c.username, domain: { name: c.userDomainName ?? 'Default' }, password: c.password } } }
        : { methods: ['application_credential'], application_credential: { id: c.id, secret: c.secret } };
    const scope = c.kind === 'password' ? { project: { name: c.projectName, domain: { name: c.projectDomainName ?? 'Default' } } } : undefined;
    const url = `${this._o.authUrl.replace(/\/+$/, '')}/auth/tokens`;
    const res = await this._http.request('POST', url, {}, { auth: { identity, ...(scope ? { scope } : {}) } });
    if (res.status === 401) {
      throw new HamalError('OPENSTACK_AUTH_FAILED', `Keystone at ${this._o.authUrl} refused ${this._who}: wrong name, password or secret`, { subject: this._o.authUrl });
    }
    const value = res.headers['x-subject-token'];
    const token = (res.body as { token?: { expires_at?: string; catalog?: CatalogEntry[] } } | undefined)?.token;
    if (res.status >= 300 || typeof value !== 'string' || !token) {
      throw new HamalError('OPENSTACK_AUTH_FAILED', `Keystone at ${this._o.authUrl} did not issue a token for ${this._who}: HTTP ${res.status}`, { subject: this._o.authUrl, retryable: res.status >= 500 });
    }
    log.addSecret(value);
    this._token = { value, expiresAt: Date.parse(token.expires_at ?? '') || Date.now() + 3600_000, catalog: token.catalog ?? [] };
  }

  /** The URL of a service from the catalog (`compute`, `volumev3`). */
  async endpoint(type: string): Promise<string> {
    await this.token();
    const entry = this._token!.catalog.find((e) => e.type === type);
    const iface = this._o.interface ?? 'public';
    const ep = entry?.endpoints.find((e) => e.interface === iface && (!this._o.region || e.region === this._o.region || e.region_id === this._o.region));
    if (!ep) {
      throw new HamalError('OPENSTACK_NO_ENDPOINT', `the catalog of ${this._o.authUrl} has no ${iface} ${type} endpoint${this._o.region ? ` in region ${this._o.region}` : ''}`, { subject: type });
    }
    return ep.url.replace(/\/+$/, '');
  }
}
