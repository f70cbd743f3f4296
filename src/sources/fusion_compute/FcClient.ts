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

export interface FcTask {
  status: string;
  progress?: number;
  reason?: string;
  [k: string]: unknown;
}

/**
 * FusionCompute's REST API as its public reference describes it (docs/fusion_compute.md):
 * a session from POST /service/session (X-Auth-User / X-Auth-Key headers, token in the
 * X-Auth-Token answer header), JSON with a versioned Accept header, resources addressed by
 * their `uri`, asynchronous operations answered with a task URI to poll. A 401 logs in
 * once more.
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
    const res = await this._http.request('POST', `${this._base}/service/session`, {
      Accept: this._accept,
      'X-Auth-User': this._o.username,
      'X-Auth-Key': this._o.password,
      'X-Auth-UserType': '2',
      'X-Auth-AuthType': '0',
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

  /** Polls a task until it succeeds (its body), fails or outlasts `timeoutMs` (both errors naming `what`). */
  async waitTask(taskUri: string, what: string, timeoutMs: number): Promise<FcTask> {
    const deadline = Date.now() + timeoutMs;
    for (let delay = 100; ; delay = Math.min(delay * 2, 3000)) {
      const t = (await this.call('GET', taskUri, `task of ${what}`)) as FcTask;
      if (t.status === 'success') return t;
      if (t.status === 'failed' || t.status === 'cancelled') {
        throw new HamalError('FC_TASK_FAILED', `${what} failed on FusionCompute: ${t.reason ?? t.status}`, { subject: taskUri });
      }
      if (Date.now() + delay > deadline) {
        throw new HamalError('FC_TASK_TIMEOUT', `${what} did not finish within ${timeoutMs / 1000} s (task ${taskUri})`, { subject: taskUri, retryable: true });
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
