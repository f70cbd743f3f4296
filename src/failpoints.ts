/**
 * Failpoints for the fault-matrix tests, as fail-rs and FoundationDB have them: named
 * places in the sync where a test makes the process die or an I/O call fail, to check
 * what a crash at exactly that point leaves behind. Off unless HAMAL_FAILPOINTS is set:
 *
 *   HAMAL_FAILPOINTS="chunk.stored=kill@3,journal.write=enospc"
 *
 * `kill` SIGKILLs the process, `enospc` throws an ENOSPC error, `eio` an EIO error; `@N` acts on the Nth pass
 * only (default the first). `delayMS` blocks the process MS milliseconds on every pass (or
 * the Nth), so a test can kill a sync that would otherwise end first.
 */
/** `at` of an action taken on every pass. */
const every = 0;
const points = parse(typeof process !== 'undefined' ? process.env.HAMAL_FAILPOINTS : undefined);
const passes = new Map<string, number>();

function parse(spec: string | undefined): Map<string, { action: string; at: number }> | null {
  if (!spec) return null;
  const map = new Map<string, { action: string; at: number }>();
  for (const item of spec.split(',')) {
    const m = /^\s*([\w.-]+)=(kill|enospc|eio|delay\d+)(?:@(\d+))?\s*$/.exec(item);
    if (!m) throw new Error(`HAMAL_FAILPOINTS: bad entry ${JSON.stringify(item)} (name=kill|enospc|eio|delayMS[@N])`);
    map.set(m[1]!, { action: m[2]!, at: m[3] ? Number(m[3]) : m[2]!.startsWith('delay') ? every : 1 });
  }
  return map;
}

export function failpoint(name: string): void {
  const p = points?.get(name);
  if (!p) return;
  const n = (passes.get(name) ?? 0) + 1;
  passes.set(name, n);
  if (p.at !== every && n !== p.at) return;
  if (p.action.startsWith('delay')) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(p.action.slice(5)));
    return;
  }
  if (p.action === 'kill') process.kill(process.pid, 'SIGKILL');
  if (p.action === 'eio') throw Object.assign(new Error(`EIO: i/o error (failpoint ${name})`), { code: 'EIO' });
  throw Object.assign(new Error(`ENOSPC: no space left on device (failpoint ${name})`), { code: 'ENOSPC' });
}
