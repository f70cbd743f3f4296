import { createHash } from 'node:crypto';
import { HamalError, NotFoundError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import { HttpJson } from '../http/HttpJson.ts';

export interface FcClientOptions {
  /** `https://fc-vrm:7443`. */
  url: string;
  username: string;
  password: string;
  caFile?: string;
  /** One call's limit. @default 600 s */
  timeoutMs?: number;
  /** REST API version in the Accept header. @default '6.5' */
  apiVersion?: string;
}

/** TaskInfo (eSDK model TaskInfo; nova taskops.py): waiting | running | success | failed | cancelling. */
export interface FcTask {
  status: string;
  progress?: number;
  /** An error code. */
  reason?: string;
  /** The error's text. */
  reasonDes?: string;
  [k: string]: unknown;
}

/** Items per page of a list: the most the VRM gives (eSDK QueryVmsReq: "limit at most 100"). */
export const PAGE_LIMIT = 100;

/**
 * A resource's uri from its urn, as nova-fusioncompute's utils.generate_uri_from_urn builds
 * it: `urn:sites:4D9D0815:volumes:12` -> `/service/sites/4D9D0815/volumes/12`. A urn
 * of other characters is refused: it becomes a request path.
 */
export function uriOf(urn: string): string {
  if (!/^urn:sites(:[A-Za-z0-9_.-]+)+$/.test(urn) || urn.split(':').includes('..')) {
    throw new HamalError('FC_BAD_URN', `FusionCompute answered a malformed urn ${JSON.stringify(urn.slice(0, 200))}`, { subject: urn });
  }
  return `/service${urn.slice('urn'.length).replace(/:/g, '/')}`;
}

/**
 * FusionCompute's REST API as Huawei's own clients call it (docs/fusion_compute.md):
 * a session from POST /service/session (X-Auth-User, X-Auth-Key = the lowercase hex
 * SHA-256 of the password, X-Auth-UserType 2; eSDK RestletClient and SHA256Utils,
 * nova fcclient.py), the token in the X-Auth-Token answer header, JSON with a versioned
 * Accept header, resources addressed by uri, asynchronous operations answered with a task
 * to poll. A 401 logs in once more.
 */
export class FcClient {
  private readonly _http: HttpJson;
  private readonly _base: string;
  private _token?: string;

  constructor(private readonly _o: FcClientOptions) {
    this._http = new HttpJson(_o.caFile, _o.timeoutMs ?? 600_000);
    this._base = _o.url.replace(/\/+$/, '');
    log.addSecret(_o.password);
  }

  private get _accept(): string {
    return `application/json;version=${this._o.apiVersion ?? '6.5'};charset=UTF-8`;
  }

  async login(): Promise<void> {
    // The VRM takes the password's SHA-256, never the password (plaintext only with
    // X-ENCRIPT-ALGORITHM: 1, which hamal does not send). The hash is as good as the password.
    const key = createHash('sha256').update(this._o.password, 'utf8').digest('hex');
    log.addSecret(key);
    const res = await this._http.request('POST', `${this._base}/service/session`, {
      Accept: this._accept,
      'X-Auth-User': this._o.username,
      'X-Auth-Key': key,
      'X-Auth-UserType': '2',
    });
    const token = res.headers['x-auth-token'];
    if (res.status === 401 || res.status === 403) {
      throw new HamalError('FC_LOGIN_FAILED', `login to FusionCompute ${this._base} as ${this._o.username} failed: wrong user name or password`, { subject: this._base });
    }
    if (res.status >= 300 || typeof token !== 'string') {
      throw new HamalError('FC_LOGIN_FAILED', `login to FusionCompute ${this._base} failed: HTTP ${res.status}`, { subject: this._base, retryable: res.status >= 500 });
    }
    log.addSecret(token);
    this._token = token;
  }

  /** Calls `path` (a resource uri); the parsed JSON answer. `what` names the object in errors. */
  async call(method: string, path: string, what: string, body?: unknown, relogin = true): Promise<Record<string, unknown>> {
    if (!this._token) await this.login();
    const res = await this._http.request(method, `${this._base}${path}`, { Accept: this._accept, 'X-Auth-Token': this._token! }, body);
    if (res.status === 401 && relogin) {
      await this.login();
      return this.call(method, path, what, body, false);
    }
    if (res.status === 404) throw new NotFoundError('FC_NOT_FOUND', `${what} not found on ${this._base}`, { subject: what });
    if (res.status >= 300) {
      const b = res.body as { errorCode?: string; errorDes?: string } | undefined;
      throw new HamalError('FC_FAILED', `${what}: HTTP ${res.status}${b?.errorCode ? ` ${b.errorCode}` : ''}${b?.errorDes ? `: ${b.errorDes}` : ''}`, {
        subject: what,
        retryable: res.status >= 500,
      });
    }
    return (res.body ?? {}) as Record<string, unknown>;
  }

  /** Every item of a paged list (`limit` at most 100, `offset`, `total`; nova fcinstance.py pages so). */
  async *pages<T>(path: string, key: string, what: string, query: Record<string, string> = {}): AsyncGenerator<T> {
    let first: string | undefined;
    for (let offset = 0; ; ) {
      const q = new URLSearchParams({ ...query, limit: String(PAGE_LIMIT), offset: String(offset) });
      const page = await this.call('GET', `${path}?${q}`, what);
      const items = (page[key] ?? []) as T[];
      // QueryVmsReq: a VRM that cannot page a query answers its first page again.
      const head = JSON.stringify(items[0] ?? null);
      if (offset > 0 && head === first) throw new HamalError('FC_PAGING', `${what}: the VRM answered the first page again at offset ${offset}; give the VM's urn`, { subject: path });
      first ??= head;
      for (const item of items) yield item;
      offset += items.length;
      if (!items.length || offset >= Number(page.total ?? 0)) return;
    }
  }

  /** Polls a task until it succeeds (its body), fails or outlasts `timeoutMs` (both errors naming `what`). */
  async waitTask(taskUri: string, what: string, timeoutMs: number): Promise<FcTask> {
    const deadline = Date.now() + timeoutMs;
    for (let delay = 100; ; delay = Math.min(delay * 2, 3000)) {
      const t = (await this.call('GET', taskUri, `task of ${what}`)) as FcTask;
      if (t.status === 'success') return t;
      if (t.status === 'failed' || t.status === 'cancelling' || t.status === 'cancelled') {
        const why = [t.reasonDes, t.reason && `code ${t.reason}`].filter(Boolean).join(', ') || t.status;
        throw new HamalError('FC_TASK_FAILED', `${what} ${t.status === 'failed' ? 'failed' : 'was cancelled'} on FusionCompute: ${why}`, { subject: taskUri });
      }
      if (Date.now() + delay > deadline) {
        throw new HamalError('FC_TASK_TIMEOUT', `${what} did not finish within ${timeoutMs / 1000} s (task ${taskUri}, ${t.status} ${t.progress ?? 0}%)`, { subject: taskUri, retryable: true });
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async logout(): Promise<void> {
    if (this._token) await this.call('DELETE', '/service/session', 'session', undefined, false).catch(() => {});
    this._token = undefined;
    this._http.close();
  }
}
