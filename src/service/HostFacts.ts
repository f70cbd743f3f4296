import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import { log } from '../log/Logger.ts';

/** The host's addresses: every non-loopback, non-link-local address of its interfaces. */
export function hostIps(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.internal || a.address.startsWith('fe80:') || a.address.startsWith('169.254.')) continue;
      out.push(a.address);
    }
  }
  return out;
}

/**
 * The proxy's public IPs as the given endpoints see it (each answers the caller's address
 * as text, like api.ipify.org). Every endpoint is asked at once, each within `timeoutMs`;
 * answers that are not an IP are ignored. Distinct addresses, in endpoint order.
 */
export async function publicIps(endpoints: string[], timeoutMs: number): Promise<string[]> {
  const answers = await Promise.all(
    endpoints.map(async (url) => {
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
        const text = (await res.text()).trim();
        if (res.ok && isIP(text)) return text;
        log.child('service').debug(`public IP endpoint ${url} answered HTTP ${res.status} without an IP`);
      } catch (err) {
        log.child('service').debug(`public IP endpoint ${url}: ${(err as Error).message}`);
      }
      return undefined;
    }),
  );
  return [...new Set(answers.filter((a): a is string => !!a))];
}
