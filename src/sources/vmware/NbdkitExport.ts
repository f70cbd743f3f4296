import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { subprocessOutput } from '../../log/subprocessLog.ts';
import { HamalError } from '../../errors.ts';
import { NbdClient } from '../nbd/NbdClient.ts';

/**
 * The values a command template may use, as `{name}`. The password is never one of them:
 * `{password_file}` names a 0600 file that holds it, deleted when the export stops.
 */
export interface NbdkitValues {
  server: string;
  user: string;
  thumbprint: string;
  moref: string;
  snapshot: string;
  /** Datastore path of the snapshot's disk file: `[datastore] dir/file.vmdk`. */
  file: string;
  datastore: string;
  /** `file` without its `[datastore] `. */
  path: string;
}

/** Production template: nbdkit's vddk plugin with VMware's VDDK (which the operator installs). */
export const VDDK_TEMPLATE =
  'nbdkit --foreground --readonly --unix {socket} vddk libdir=/opt/vmware-vix-disklib-distrib server={server} user={user} ' +
  'password=+{password_file} thumbprint={thumbprint} vm=moref={moref} snapshot={snapshot} file={file} transports=nbdssl:nbd';

/**
 * One nbdkit serving one disk of one snapshot over a Unix socket under `workDir`, started
 * from a command template (split on spaces; each word's placeholders are filled in, so a
 * value never becomes two arguments), with an NbdClient connected to it.
 */
export class NbdkitExport {
  readonly client: NbdClient;
  private readonly _child: ChildProcess;
  private readonly _dir: string;

  private constructor(child: ChildProcess, client: NbdClient, dir: string) {
    this._child = child;
    this.client = client;
    this._dir = dir;
  }

  static async start(template: string, values: NbdkitValues, password: string, workDir: string, maxRequestBytes: number): Promise<NbdkitExport> {
    const dir = join(workDir, 'nbdkit', randomBytes(6).toString('hex'));
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const socket = join(dir, 'nbd.sock');
    const passwordFile = join(dir, 'password');
    await fsp.writeFile(passwordFile, password, { mode: 0o600 });
    const all: Record<string, string> = { ...values, socket, password_file: passwordFile };
    const argv = template
      .trim()
      .split(/\s+/)
      .map((word) =>
        word.replace(/\{(\w+)\}/g, (m, name: string) => {
          if (!(name in all)) throw new HamalError('BAD_NBDKIT_TEMPLATE', `nbdkit command template: unknown placeholder ${m}`, { subject: m });
          return all[name]!;
        }),
      );
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    const toLog = subprocessOutput('nbdkit', child.pid);
    child.stderr!.on('data', (d) => {
      stderr = (stderr + d).slice(-2000);
      toLog(d);
    });
    let exited: number | null | undefined;
    child.on('exit', (code) => (exited = code));
    child.on('error', () => (exited = -1));
    for (let i = 0; i < 500 && !existsSync(socket) && exited === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    if (!existsSync(socket)) {
      child.kill('SIGKILL');
      await fsp.rm(dir, { recursive: true, force: true });
      throw new HamalError('NBDKIT_FAILED', `nbdkit for ${values.file} did not start${stderr ? `: ${stderr.trim().split('\n').pop()}` : ''}`, { subject: values.file });
    }
    try {
      const client = await NbdClient.connect(socket, { maxRequestBytes });
      return new NbdkitExport(child, client, dir);
    } catch (err) {
      child.kill('SIGKILL');
      await fsp.rm(dir, { recursive: true, force: true });
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
