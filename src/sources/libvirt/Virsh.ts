import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { HamalError } from '../../errors.ts';
import { childEnv } from '../../childEnv.ts';

const run = promisify(execFile);

export interface VirshOptions {
  /** libvirt connection URI: `qemu:///system`, `qemu+ssh://host/system`, `qemu+tls://host/system`. */
  uri: string;
  /** SASL user name (qemu+tls, qemu+tcp), given with `password`. */
  username?: string;
  /** Given to libvirt through an auth file (LIBVIRT_AUTH_FILE, 0600), never on a command line. */
  password?: string;
  /** Where the auth file's private 0700 directory goes. */
  workDir: string;
  /** One virsh call's limit. @default 120 s */
  timeoutMs?: number;
}

/**
 * libvirt through `virsh` (Debian's libvirt-clients), as the Ceph source drives `rbd`: one
 * process per call, no shell, the environment an allow-list. A password reaches libvirt in
 * an auth file (libvirt's "Client authentication" docs: [credentials-NAME] authname= and
 * password=, [auth-libvirt-default] credentials=NAME) named by LIBVIRT_AUTH_FILE.
 */
export class Virsh {
  private _authFile?: string;

  constructor(private readonly _o: VirshOptions) {}

  /** `virsh -c URI args...`: its stdout; an error quoting virsh's own message and naming `what`. */
  async run(args: string[], what: string): Promise<string> {
    // LC_ALL=C: hamal reads virsh's labels (State, Persistent, Operation), which it translates.
    const env = childEnv({ set: { ...(await this._auth()), LC_ALL: 'C' } });
    try {
      const { stdout } = await run('virsh', ['-q', '-c', this._o.uri, ...args], { env, timeout: this._o.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 });
      return stdout;
    } catch (err) {
      const e = err as { stderr?: string; code?: string | number; message: string };
      if (e.code === 'ENOENT') throw new HamalError('VIRSH_MISSING', 'virsh is not installed (Debian: apt-get install libvirt-clients)', { subject: 'virsh' });
      const said = (e.stderr ?? '').split('\n').map((l) => l.replace(/^error:\s*/, '').trim()).filter(Boolean).join(': ');
      throw new HamalError('LIBVIRT_FAILED', `${what} on ${this._o.uri}: ${said || e.message}`, { subject: what });
    }
  }

  private async _auth(): Promise<Record<string, string>> {
    if (this._o.password === undefined) return {};
    if (!this._authFile) {
      // libvirt reads values to the line's end: a newline in either would end them early.
      if (/[\r\n]/.test(this._o.password + (this._o.username ?? ''))) throw new HamalError('TASK_INVALID', 'libvirt user name and password (source.connection) must be one line each', { subject: 'source.connection' });
      // One private directory per connection: tasks running at once never share a file.
      const parent = join(this._o.workDir, 'libvirt-auth');
      await fsp.mkdir(parent, { recursive: true, mode: 0o700 });
      const dir = await fsp.mkdtemp(join(parent, 'auth-'));
      const file = join(dir, 'auth.conf');
      await fsp.writeFile(file, `[credentials-hamal]\nauthname=${this._o.username ?? ''}\npassword=${this._o.password}\n\n[auth-libvirt-default]\ncredentials=hamal\n`, { mode: 0o600, flag: 'wx' });
      this._authFile = file;
    }
    return { LIBVIRT_AUTH_FILE: this._authFile };
  }

  /** Removes the auth file. */
  async close(): Promise<void> {
    if (this._authFile) await fsp.rm(dirname(this._authFile), { recursive: true, force: true });
    this._authFile = undefined;
  }
}
