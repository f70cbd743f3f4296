// `hamal serve` as a real child process, and polling for what a test waits on.
import { spawn, type ChildProcess } from 'node:child_process';
import { HAMAL, allOutput } from './cli.ts';

export interface ServeProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/** Starts `hamal serve --config CONF`; everything it prints joins allOutput (the secrets check). */
export function serveProcess(conf: string, env: Record<string, string> = {}): ServeProcess {
  const child = spawn(process.execPath, [HAMAL, 'serve', '--config', conf], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => (allOutput.push(out), r(code))));
  return { child, output: () => out, exited };
}

/** Polls `fn` every 100 ms until it gives a truthy value; fails naming `what` after `ms`. */
export async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
