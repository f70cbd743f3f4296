import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { subprocessOutput } from '../../log/subprocessLog.ts';
import { HamalError } from '../../errors.ts';
import { childEnv } from '../../childEnv.ts';
import { NbdClient } from '../../nbd/NbdClient.ts';


/** util-linux's setpriv, when installed and new enough (2.33) to set the parent-death signal. */
let pdeathsig: string | null | undefined;
function setpriv(): string | null {
  pdeathsig ??= (() => {
    const path = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
    if (!path) return null;
    try {
      return execFileSync(path, ['--help'], { encoding: 'utf8', env: childEnv(), stdio: ['ignore', 'pipe', 'ignore'] }).includes('--pdeathsig') ? path : null;
    } catch {
      return null;
    }
  })();
  return pdeathsig;
}
/**
 * What each server reads from the environment beyond childEnv's allow-list. qemu-nbd:
 * nothing (the rbd: filename carries conf, id and keyring). nbdkit: LD_LIBRARY_PATH, for
 * the vddk plugin of an nbdkit that does not set it from `libdir=` itself, or a VDDK whose
 * libraries live elsewhere.
 */
const SERVER_ENV: Record<string, readonly string[]> = { nbdkit: ['LD_LIBRARY_PATH'] };

/**
 * The line of a server's stderr that says why it failed. nbdkit prints its reason and
 * then a pointer to its manual ("nbdkit: error: cannot open plugin 'vddk': ..." then
 * "Use 'nbdkit --help' ..."), or a usage block after "unrecognized option"; qemu-nbd
 * prints "qemu-nbd: Try `qemu-nbd --help'" after its reason; VDDK's root cause comes
 * before the plugin's generic failure. So: the first "error:" line, else the first
 * "name: ..." line that is not a hint, else the last line.
 */
export function serverReason(stderr: string, name: string): string {
  const hint = /--help|manual page|^\s*[[-]|^usage:/i;
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !hint.test(l));
  const reason = lines.find((l) => /\berror:/i.test(l)) ?? lines.find((l) => l.startsWith(`${name}:`)) ?? lines.pop() ?? '';
  return reason.length > 400 ? `${reason.slice(0, 400)}...` : reason;
}

/**
 * Connects, retrying while the server is up but not yet listening: the socket's file
 * appears at bind(), before listen(), and a connect in between is refused (seen in CI
 * with qemu-nbd: ECONNREFUSED on a fresh socket). Up to 5 s, never past the server's exit.
 */
async function connectWhenListening(socket: string, maxRequestBytes: number, gone: () => boolean): Promise<NbdClient> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      return await NbdClient.connect(socket, { maxRequestBytes });
    } catch (err) {
      const code = (err as { cause?: NodeJS.ErrnoException }).cause?.code ?? (err as NodeJS.ErrnoException).code;
      if (!(code === 'ECONNREFUSED' || code === 'ENOENT') || gone() || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * A local NBD server process (nbdkit, qemu-nbd) serving one snapshot of one disk on a Unix
 * socket in a private 0700 directory under `workDir`, with an NbdClient connected to it.
 * Its stderr goes to the subprocess log; `stop` ends both and removes the directory.
 */
export class NbdServerProcess {
  private constructor(
    readonly client: NbdClient,
    private readonly _child: ChildProcess,
    private readonly _dir: string,
  ) {}

  /** The directory the server's socket (and any file it needs) lives in, before `start`. */
  static async privateDir(workDir: string, kind: string): Promise<string> {
    const dir = join(workDir, kind, randomBytes(6).toString('hex'));
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    return dir;
  }

  /** Runs `argv` (no shell), waits up to 5 s for `socket`, connects. `what` names the disk in errors. */
  static async start(argv: string[], dir: string, socket: string, what: string, maxRequestBytes: number): Promise<NbdServerProcess> {
    const name = argv[0]!.replace(/^.*\//, '');
    // Under setpriv --pdeathsig the server ends when hamal does, even by SIGKILL (an
    // orphaned qemu-nbd kept its snapshot exported and open): it execs the server itself.
    const wrapper = setpriv();
    // KILL, not TERM: a server waiting on a dead cluster may never get to its clean exit.
    const full = wrapper ? [wrapper, '--pdeathsig', 'KILL', '--', ...argv] : argv;
    const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env: childEnv({ pass: SERVER_ENV[name] }) });
    let stderr = '';
    const toLog = subprocessOutput(name, child.pid);
    child.stderr!.on('data', (d) => {
      stderr = (stderr + d).slice(-2000);
      toLog(d);
    });
    let exited: number | null | undefined;
    child.on('exit', (code) => (exited = code));
    child.on('error', () => (exited = -1));
    // 'exit' may come before the last of stderr (seen under load in CI): its reason is there.
    const stderrEnded = new Promise<void>((resolve) => child.stderr!.once('close', resolve));
    const lastWords = () => (exited === undefined ? Promise.resolve() : Promise.race([stderrEnded, new Promise<void>((r) => setTimeout(r, 1000))]));
    for (let i = 0; i < 500 && !existsSync(socket) && exited === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    if (!existsSync(socket)) {
      await lastWords();
      child.kill('SIGKILL');
      await fsp.rm(dir, { recursive: true, force: true });
      const reason = serverReason(stderr, name);
      throw new HamalError('NBD_SERVER_FAILED', `${name} for ${what} did not start${reason ? `: ${reason}` : ''}`, { subject: what });
    }
    try {
      return new NbdServerProcess(await connectWhenListening(socket, maxRequestBytes, () => exited !== undefined), child, dir);
    } catch (err) {
      await lastWords();
      child.kill('SIGKILL');
      await fsp.rm(dir, { recursive: true, force: true });
      // A server that exited meanwhile says why on stderr (qemu-nbd: "Failed to open ...").
      if (exited !== undefined && stderr) throw new HamalError('NBD_SERVER_FAILED', `${name} for ${what} exited: ${serverReason(stderr, name)}`, { subject: what, cause: err });
      throw err;
    }
  }

  async stop(): Promise<void> {
    await this.client.close();
    if (this._child.exitCode === null) {
      this._child.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          this._child.kill('SIGKILL');
          r(undefined);
        }, 2000);
        this._child.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    await fsp.rm(this._dir, { recursive: true, force: true });
  }
}
