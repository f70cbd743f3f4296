import type { LoadedConfig } from '../config/loadConfig.ts';
import { UsageError } from '../errors.ts';

/**
 * `hamal health`: asks a running `serve` for /healthz on `[hamal] health_listen` and exits
 * 0 when healthy, 1 otherwise: the container's HEALTHCHECK, without curl in the image.
 */
export async function healthCommand(_opts: object, config: LoadedConfig): Promise<number> {
  const listen = config.values.hamal.health_listen;
  if (!listen) throw new UsageError('USAGE', '[hamal] health_listen is empty: the health endpoint is off');
  const host = listen.replace(/:\d+$/, '').replace(/^0\.0\.0\.0$|^\[::\]$/, '127.0.0.1');
  const url = `http://${host}:${/:(\d+)$/.exec(listen)?.[1]}/healthz`;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
    const body = (await res.json()) as { status: string; reasons: string[] };
    process.stdout.write(`${body.status}${body.reasons.length ? `: ${body.reasons.join('; ')}` : ''}\n`);
    return res.ok ? 0 : 1;
  } catch (err) {
    process.stdout.write(`unreachable: ${url}: ${(err as Error).message}\n`);
    return 1;
  }
}
