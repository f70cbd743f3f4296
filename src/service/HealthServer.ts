import http from 'node:http';
import { promises as fsp, constants } from 'node:fs';
import { HamalError } from '../errors.ts';
import type { Service } from './Service.ts';

/**
 * `/healthz` (200 healthy, 503 unhealthy with the reasons, JSON) and `/metrics`
 * (Prometheus text) on a local address. Health also checks that the lib and log
 * directories are writable, at each request.
 */
export async function startHealthServer(listen: string, service: Service, dirs: Record<string, string>): Promise<http.Server> {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new HamalError('CONFIG_INVALID', `[hamal] health_listen: expected host:port, got ${listen}`, { subject: 'health_listen' });
  const server = http.createServer(async (req, res) => {
    if (req.url === '/healthz') {
      const h = service.health();
      const reasons = [...h.reasons];
      for (const [key, dir] of Object.entries(dirs)) {
        await fsp.access(dir, constants.W_OK).catch(() => reasons.push(`${key} ${dir} is not writable`));
      }
      res.writeHead(reasons.length ? 503 : 200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ status: reasons.length ? 'unhealthy' : 'healthy', reasons, running: service.running().map((r) => r.taskId) }));
    } else if (req.url === '/metrics') {
      res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4' });
      res.end(service.metrics.render());
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new HamalError('HEALTH_LISTEN', `cannot listen on ${listen} ([hamal] health_listen): ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: 'health_listen' })),
    );
    server.listen(Number(m[2]), m[1]!.replace(/^\[|\]$/g, ''), resolve);
  });
  return server;
}
