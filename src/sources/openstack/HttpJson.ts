import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { HamalError } from '../../errors.ts';

export interface JsonResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: unknown;
}

/**
 * JSON over HTTP(S) with TLS verified by the system CAs or a CA file (Node's fetch takes
 * no CA), keep-alive, and a timeout. Network failures are retryable HamalErrors naming
 * the URL; HTTP statuses are the caller's to judge.
 */
export class HttpJson {
  private readonly _agent: https.Agent;
  private readonly _plain = new http.Agent({ keepAlive: true });

  constructor(
    caFile: string | undefined,
    private readonly _timeoutMs: number,
  ) {
    this._agent = new https.Agent({ keepAlive: true, ca: caFile ? readFileSync(caFile) : undefined });
  }

  request(method: string, url: string, headers: Record<string, string> = {}, body?: unknown): Promise<JsonResponse> {
    const u = new URL(url);
    const lib = u.protocol === 'https:' ? https : http;
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = lib.request(
        u,
        {
          method,
          agent: u.protocol === 'https:' ? this._agent : this._plain,
          timeout: this._timeoutMs,
          headers: { Accept: 'application/json', ...(data ? { 'Content-Type': 'application/json', 'Content-Length': String(data.length) } : {}), ...headers },
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('end', () => {
            const text = Buffer.concat(parts).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              /* not JSON: keep the text for the error */
            }
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this._timeoutMs / 1000} s`)));
      req.on('error', (err) => reject(new HamalError('OPENSTACK_UNREACHABLE', `${method} ${u.origin}${u.pathname}: ${err.message}`, { subject: u.origin, cause: err, retryable: true })));
      req.end(data);
    });
  }

  close(): void {
    this._agent.destroy();
    this._plain.destroy();
  }
}
