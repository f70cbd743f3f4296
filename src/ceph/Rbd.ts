import { execFile, spawn } from 'node:child_process';
import type { Writable } from 'node:stream';
import { HamalError, NotFoundError } from '../errors.ts';
import { childEnv } from '../childEnv.ts';

/** How hamal reaches a Ceph cluster: files only, so no key is ever on a command line. */
export interface CephAccess {
  /** ceph.conf of the cluster (mon addresses). */
  conf: string;
  /** Client name, `client.hamal` or `hamal`. */
  user: string;
  /** Keyring file holding that client's key. */
  keyring: string;
  /** One rbd command's limit. @default 600 s */
  timeoutMs?: number;
}

export interface RbdExtent {
  offset: number;
  length: number;
  /** False: a discarded or zeroed area (reads as zeros). */
  exists: boolean;
}

export interface RbdSnap {
  id: number;
  name: string;
  size: number;
}

/**
 * The `rbd` command (there is no librbd binding on npm), with JSON output. Errors name
 * what was wrong: the keyring refused, the pool or image or snapshot missing, permission.
 */
export class Rbd {
  private readonly _base: string[];

  constructor(readonly access: CephAccess) {
    const name = access.user.startsWith('client.') ? access.user : `client.${access.user}`;
    this._base = ['--conf', access.conf, '--name', name, '--keyring', access.keyring];
  }

  /** Runs `rbd ARGS`; stdout on success. */
  run(args: string[], what: string): Promise<string> {
    return new Promise((resolve, reject) => {
      // conf, name and keyring are arguments: rbd needs nothing of hamal's environment.
      const options = { timeout: this.access.timeoutMs ?? 600_000, maxBuffer: 256 * 1024 * 1024, env: childEnv() };
      execFile('rbd', [...this._base, ...args], options, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          return reject(new HamalError('RBD_MISSING', 'the rbd command is not installed (Debian package ceph-common)', { subject: 'rbd' }));
        }
        // The cause says how rbd ended; its stderr is in the message already (the last rbd: line).
        const how = new Error(`rbd ${args.find((a) => !a.startsWith('-')) ?? ''} exited with ${(err as { code?: unknown }).code ?? (err as { signal?: unknown }).signal}`);
        reject(this._error(String(stderr), what, how));
      });
    });
  }

  /**
   * Starts `rbd ARGS` reading its stdin (`rbd import-diff - IMAGE`): the caller writes the
   * stream and ends it; `done` settles when rbd exits, with its error named as run() does.
   * `kill()` stops it (a restore given up). No time limit: it lasts as long as the stream.
   */
  stream(args: string[], what: string): { stdin: Writable; done: Promise<void>; kill: () => void } {
    const child = spawn('rbd', [...this._base, ...args], { stdio: ['pipe', 'ignore', 'pipe'], env: childEnv() });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 65536) stderr += d.toString();
    });
    // A write after rbd exited is EPIPE: the exit status below says why.
    child.stdin!.on('error', () => {});
    const done = new Promise<void>((resolve, reject) => {
      child.on('error', (err: NodeJS.ErrnoException) =>
        reject(err.code === 'ENOENT' ? new HamalError('RBD_MISSING', 'the rbd command is not installed (Debian package ceph-common)', { subject: 'rbd' }) : err),
      );
      child.on('close', (code, signal) => {
        if (code === 0) resolve();
        else reject(this._error(stderr, what, new Error(`rbd exited with ${code ?? signal}`)));
      });
    });
    return { stdin: child.stdin!, done, kill: () => child.kill('SIGTERM') };
  }

  private _error(stderr: string, what: string, cause: unknown): HamalError {
    const line = stderr.trim().split('\n').filter((l) => l.startsWith('rbd:')).pop() ?? stderr.trim().split('\n').pop() ?? '';
    let m: RegExpExecArray | null;
    if (/couldn't connect to the cluster/.test(stderr)) {
      const why = /unable to find a keyring on ([^:]+)/.exec(stderr)
        ? `keyring ${this.access.keyring} not found`
        : /handle_auth_bad_method|authentication|EACCES|\(13\)/.test(stderr)
          ? `the cluster refused ${this.access.user} with keyring ${this.access.keyring} (wrong keyring or user)`
          : `cannot reach the monitors of ${this.access.conf}`;
      return new HamalError('CEPH_CONNECT', `${what}: ${why}`, { subject: this.access.keyring, cause });
    }
    if ((m = /error opening pool '([^']+)': \(2\)/.exec(stderr))) return new NotFoundError('RBD_POOL_NOT_FOUND', `${what}: pool ${m[1]} does not exist`, { subject: m[1] });
    if ((m = /error opening image (\S+): \(2\)/.exec(stderr))) return new NotFoundError('RBD_IMAGE_NOT_FOUND', `${what}: image ${m[1]} does not exist`, { subject: m[1] });
    if (/\(1\) Operation not permitted|\(13\) Permission denied/.test(stderr)) {
      return new HamalError('CEPH_PERMISSION', `${what}: ${this.access.user} may not do this (its caps): ${line}`, { subject: this.access.user, cause });
    }
    if (/\(2\) No such file or directory/.test(stderr)) return new NotFoundError('RBD_NOT_FOUND', `${what}: ${line.replace(/^rbd: /, '')}`, { subject: what, cause });
    return new HamalError('RBD_FAILED', `${what}: ${line.replace(/^rbd: /, '') || 'rbd failed'}`, { subject: what, cause, retryable: true });
  }

  async info(spec: string): Promise<{ size: number; objectSize: number }> {
    const what = `rbd image ${spec}`;
    const j = rbdJson(await this.run(['info', '--format', 'json', spec], what), what) as { size?: unknown; object_size?: unknown };
    if (!isCount(j?.size) || !isCount(j.object_size) || j.object_size === 0) throw badOutput(what, 'no whole size and object_size');
    return { size: j.size as number, objectSize: j.object_size as number };
  }

  async create(image: string, size: number): Promise<void> {
    await this.run(['create', '--size', `${Math.ceil(size / 1024)}K`, image], `creation of rbd image ${image}`);
  }

  async snapshots(image: string): Promise<RbdSnap[]> {
    const what = `snapshots of ${image}`;
    const list = rbdJson(await this.run(['snap', 'ls', '--format', 'json', image], what), what);
    if (!Array.isArray(list) || list.some((s) => typeof s?.name !== 'string')) throw badOutput(what, 'not a list of named snapshots');
    return (list as RbdSnap[]).map((s) => ({ id: s.id, name: s.name, size: s.size }));
  }

  async createSnapshot(image: string, name: string): Promise<void> {
    await this.run(['snap', 'create', '--no-progress', `${image}@${name}`], `snapshot ${name} of ${image}`);
  }

  async removeSnapshot(image: string, name: string): Promise<void> {
    await this.run(['snap', 'rm', '--no-progress', `${image}@${name}`], `removal of snapshot ${name} of ${image}`);
  }

  /**
   * Extents of `image@snap` that hold data (`from` absent), or that changed since the
   * snapshot `from`. A superset of what was written (whole objects where a write created
   * one); the sync reads every block these touch again, so a superset costs reads, never
   * correctness.
   */
  async diff(image: string, snap: string, from?: string): Promise<RbdExtent[]> {
    const args = ['diff', '--format', 'json', ...(from ? ['--from-snap', from] : []), `${image}@${snap}`];
    const what = `changes of ${image}@${snap}${from ? ` since ${from}` : ''}`;
    return parseRbdDiff(await this.run(args, what), what);
  }
}

const isCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
const badOutput = (what: string, why: string) => new HamalError('RBD_BAD_OUTPUT', `${what}: unexpected output of rbd: ${why}`, { subject: what });

function rbdJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw badOutput(what, `not JSON (${JSON.stringify(text.slice(0, 60))})`);
  }
}

/**
 * The JSON of `rbd diff --format json`: `[{ offset, length, exists }]`, checked, since the
 * extents decide which bytes are read (offsets whole and non-negative, lengths positive).
 */
export function parseRbdDiff(text: string, what: string): RbdExtent[] {
  const out = rbdJson(text, what);
  if (!Array.isArray(out)) throw badOutput(what, 'not a list of extents');
  return out.map((e: { offset?: unknown; length?: unknown; exists?: unknown } | null, i) => {
    if (!e || !isCount(e.offset) || !isCount(e.length) || e.length === 0) throw badOutput(what, `extent ${i} is not { offset, length } in whole bytes`);
    return { offset: e.offset as number, length: e.length as number, exists: e.exists === true || e.exists === 'true' };
  });
}
