import type { KeyObject } from 'node:crypto';
import { HamalError } from '../errors.ts';
import { HttpJson } from '../sources/http/HttpJson.ts';
import { log } from '../log/Logger.ts';
import type { Heartbeat, Report, Reporter, ResultReport, TaskFeed } from './ControlPlane.ts';
import { acceptTask, TaskElsewhere, TaskRejected, type PolledTask } from './SignedTask.ts';
import type { TaskLedger } from './TaskLedger.ts';

export interface HttpControlPlaneOptions {
  /** [mass] mass_endpoint, e.g. `https://mass.example/api`. */
  endpoint: string;
  /** [mass] auth_key: sent as a bearer token, never logged. */
  authKey: string;
  /** [mass] hyper_exporter_id. */
  proxyId: string;
  /** [mass] default_request_timeout. */
  timeoutMs: number;
  publicKey: KeyObject;
  /** Accepted tasks and their results (hamal_lib_dir/service/tasks). */
  ledger: TaskLedger;
}

/**
 * The control plane over HTTP(S), as docs/control-plane.md defines it. TLS is verified by
 * the system CAs (NODE_EXTRA_CA_CERTS adds a private CA). Statuses 401, 403, 408, 429 and
 * 5xx and network errors are retryable; other 4xx are not (the report is dropped with an error).
 */
export class HttpControlPlane implements TaskFeed, Reporter {
  private readonly _base: string;
  private readonly _http: HttpJson;
  /** Tasks already said to run in another process (said once each). */
  private readonly _elsewhere = new Set<string>();

  constructor(private readonly _o: HttpControlPlaneOptions) {
    // The seed's endpoint ends in /v1 (`.../hypermotion/v1`) and every path starts with it:
    // both forms name the same API.
    this._base = _o.endpoint.replace(/\/+$/, '').replace(/\/v1$/, '');
    this._http = new HttpJson(undefined, _o.timeoutMs);
    log.addSecret(_o.authKey);
  }

  heartbeat(h: Heartbeat): Promise<void> {
    return this._request('POST', `/v1/proxies/${encodeURIComponent(this._o.proxyId)}/heartbeat`, h).then(() => undefined);
  }

  async poll(): Promise<PolledTask[]> {
    const url = `/v1/proxies/${encodeURIComponent(this._o.proxyId)}/tasks`;
    const out: PolledTask[] = [];
    for (const signed of tasksOf(await this._request('GET', url), `${this._base}${url}`)) {
      try {
        const t = await acceptTask(signed, this._o.publicKey, this._o.proxyId, this._o.ledger);
        if (!(t instanceof TaskElsewhere)) out.push(t);
        else if (!this._elsewhere.has(t.taskId)) {
          this._elsewhere.add(t.taskId);
          log.child('service').warn(`task ${t.taskId} runs in another hamal process (pid ${t.pid}) on this lib dir; left to it`);
        }
      } catch (err) {
        if (err instanceof TaskRejected) out.push(err);
        else throw err;
      }
    }
    return out;
  }

  /** Keeps the result beside the task's nonce, before it is reported: a task listed again gets it. */
  done(_taskId: string, result: ResultReport): Promise<void> {
    return this._o.ledger.finish(result);
  }

  report(r: Report): Promise<void> {
    return this._request('POST', `/v1/tasks/${encodeURIComponent(r.body.taskId)}/${r.kind}`, { proxyId: this._o.proxyId, ...r.body }).then(() => undefined);
  }

  async renewLease(taskId: string, epoch: number): Promise<void> {
    try {
      await this._request('POST', `/v1/tasks/${encodeURIComponent(taskId)}/lease`, { proxyId: this._o.proxyId, epoch });
    } catch (err) {
      if (err instanceof HamalError && / HTTP (409|410): /.test(err.message)) {
        throw new HamalError('LEASE_LOST', `task ${taskId}: the control plane gave the task to another proxy (lease epoch ${epoch} refused)`, { subject: taskId, cause: err });
      }
      throw err;
    }
  }

  /** Ends every connection, a request in flight included (after a stop: nothing waits for it). */
  close(): void {
    this._http.close();
  }

  /** Network errors come from HttpJson as retryable; statuses are judged here. */
  private async _request(method: string, path: string, body?: unknown): Promise<unknown> {
    const url = `${this._base}${path}`;
    const res = await this._http.request(method, url, { Authorization: `Bearer ${this._o.authKey}`, 'X-Hamal-Proxy': this._o.proxyId }, body);
    if (res.status >= 300) {
      const hint = res.status === 401 || res.status === 403 ? ' (check [mass] auth_key and hyper_exporter_id)' : '';
      const text = typeof res.body === 'string' ? res.body : JSON.stringify(res.body ?? '');
      throw new HamalError(hint ? 'CONTROL_PLANE_AUTH' : 'CONTROL_PLANE', `${method} ${url}: HTTP ${res.status}${hint}: ${text.slice(0, 200)}`, {
        subject: url,
        // 401/403 are this proxy's configuration (auth_key, proxy id), not the report's
        // fault: kept and retried until an operator fixes it, never dropped.
        retryable: res.status === 401 || res.status === 403 || res.status === 408 || res.status === 429 || res.status >= 500,
      });
    }
    return res.body;
  }
}

/** The signed tasks of a poll's answer `{ "tasks": [...] }`; anything else is the control plane's fault. */
export function tasksOf(body: unknown, url: string): unknown[] {
  if (body === undefined || body === null || body === '') return [];
  const tasks = typeof body === 'object' ? (body as { tasks?: unknown }).tasks : undefined;
  if (typeof body !== 'object' || Array.isArray(body) || (tasks !== undefined && !Array.isArray(tasks))) {
    throw new HamalError('CONTROL_PLANE', `GET ${url}: the answer is not { "tasks": [...] }`, { subject: url, retryable: true });
  }
  return tasks ?? [];
}
