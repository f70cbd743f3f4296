// `hamal serve` as a real child process, and polling for what a test waits on.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { HAMAL_ARGV, UNDER_DENO, allOutput } from './cli.ts';

export interface ServeProcess {
  child: { pid?: number; kill(signal: NodeJS.Signals): void };
  output: () => string;
  /** The exit code; null when a signal ended it. */
  exited: Promise<number | null>;
}

/** Starts `hamal serve --config CONF`; everything it prints joins allOutput (the secrets check). */
export function serveProcess(conf: string, env: Record<string, string> = {}): ServeProcess {
  const argv = [...HAMAL_ARGV, 'serve', '--config', conf];
  return UNDER_DENO ? denoChild(argv, env) : nodeChild(argv, env);
}

function nodeChild(argv: string[], env: Record<string, string>): ServeProcess {
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => (allOutput.push(out), r(code))));
  return { child, output: () => out, exited };
}

/**
 * Deno's node:child_process reports an exit by signal for any child it sent a signal to,
 * even one that handled it and exited 0: Deno.Command reports the real status.
 */
function denoChild(argv: string[], env: Record<string, string>): ServeProcess {
  const D = (globalThis as unknown as { Deno: DenoLike }).Deno;
  const p = new D.Command(argv[0]!, { args: argv.slice(1), env: { ...(process.env as Record<string, string>), ...env }, stdin: 'null', stdout: 'piped', stderr: 'piped' }).spawn();
  let out = '';
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    const text = new TextDecoder();
    for await (const chunk of stream) out += text.decode(chunk, { stream: true });
  };
  const exited = Promise.all([p.status, drain(p.stdout), drain(p.stderr)]).then(([st]) => (allOutput.push(out), st.signal ? null : st.code));
  return { child: { pid: p.pid, kill: (sig) => p.kill(sig) }, output: () => out, exited };
}

interface DenoLike {
  Command: new (cmd: string, o: object) => {
    spawn(): { pid: number; status: Promise<{ code: number; signal: string | null }>; stdout: ReadableStream<Uint8Array>; stderr: ReadableStream<Uint8Array>; kill(sig: string): void };
  };
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

/** A TCP port free on 127.0.0.1 now (for a health_listen of a serve a test starts). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}
