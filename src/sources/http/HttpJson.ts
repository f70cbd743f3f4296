import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { HamalError } from '../../errors.ts';

/** The largest API reply read into memory. */
const MAX_REPLY_BYTES = 64 * 1024 * 1024;
/** Requests resent after a reused keep-alive socket turned out closed. */
const MAX_STALE_RETRIES = 3;

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
class StaleSocket extends Error {}

export class HttpJson {
  private readonly _agent: https.Agent;
  private readonly _plain = new http.Agent({ keepAlive: true });

  constructor(
    caFile: string | undefined,
    private readonly _timeoutMs: number,
  ) {
    this._agent = new https.Agent({ keepAlive: true, ca: caFile ? readFileSync(caFile) : undefined });
  }

  async request(method: string, url: string, headers: Record<string, string> = {}, body?: unknown): Promise<JsonResponse> {
    // A kept-alive socket the server closed while idle fails the next request before any
    // answer (Node's documented keep-alive race): the server did not read that request,
    // so it goes again, on another socket. Each idle socket can be stale once.
    for (let attempt = 1; ; attempt++) {
      try {
        return await this._once(method, url, headers, body);
      } catch (err) {
        if (!(err instanceof StaleSocket)) throw err;
        if (attempt > MAX_STALE_RETRIES) {
          const u = new URL(url);
          throw new HamalError('HTTP_UNREACHABLE', `${method} ${u.origin}${u.pathname}: connection reset ${attempt} times in a row`, { subject: u.origin, retryable: true });
        }
      }
    }
  }

  private _once(method: string, url: string, headers: Record<string, string>, body?: unknown): Promise<JsonResponse> {
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
          let size = 0;
          res.on('data', (d: Buffer) => {
            size += d.length;
            // API answers are small: a huge one is an attack or a misconfiguration, not data.
            if (size > MAX_REPLY_BYTES) {
              res.destroy();
              reject(new HamalError('REPLY_TOO_LARGE', `${method} ${u.origin}${u.pathname}: the reply exceeds ${MAX_REPLY_BYTES / 1024 / 1024} MiB`, { subject: u.origin }));
              return;
            }
            parts.push(d);
          });
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
      let answered = false;
      req.on('response', () => (answered = true));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (req.reusedSocket && !answered && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) return reject(new StaleSocket());
        reject(new HamalError('HTTP_UNREACHABLE', `${method} ${u.origin}${u.pathname}: ${err.message}`, { subject: u.origin, cause: err, retryable: true }));
      });
      req.end(data);
    });
  }

  close(): void {
    this._agent.destroy();
    this._plain.destroy();
  }
}
