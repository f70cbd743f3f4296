import { promises as fsp, readFileSync, readlinkSync, type Dirent } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * Temporary folders of the processes writing to one directory repository
 * (docs/format.md, Directory store):
 *
 *   .tmp/w-<pid>-<start>-<pidns>-<random>-<hex hostname>/   one per writer (FsStore)
 *
 * A writer's temporaries live in its own folder, so another command on the same
 * repository (a `versions`, a prune, a second sync) never removes what a running sync has
 * not yet flushed. A folder is stale, and swept, only when its writer is certainly gone:
 * on this host and in this PID namespace, when no process with that pid and start time
 * exists; elsewhere (another host on a shared file system, another container), when
 * nothing in it changed for STALE_MS.
 */
export const STALE_MS = 24 * 3600_000;

const NAME = /^w-(\d+)-(\d+)-(\d+)-([0-9a-f]+)-([0-9a-f]*)$/;

interface Me {
  pid: number;
  start: number;
  pidns: number;
  host: string;
}

let me: Me | undefined;
function self(): Me {
  me ??= { pid: process.pid, start: startTime(process.pid) ?? 0, pidns: pidNamespace(), host: Buffer.from(hostname()).toString('hex') };
  return me;
}

/** The folder name of a new writer: this process, made unique. */
export function newWriterDirName(): string {
  const m = self();
  return `w-${m.pid}-${m.start}-${m.pidns}-${randomBytes(4).toString('hex')}-${m.host}`;
}

/**
 * Removes the stale writer folders under `tmp` (and loose files of releases that wrote
 * straight into `.tmp/`, once older than STALE_MS). Links and special files are left
 * alone; nothing is followed. Returns what was removed.
 */
export async function sweepStaleWriters(tmp: string, now = Date.now()): Promise<string[]> {
  let entries: Dirent[];
  try {
    entries = await fsp.readdir(tmp, { withFileTypes: true });
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const e of entries) {
    const path = join(tmp, e.name);
    let stale = false;
    if (e.isDirectory()) stale = NAME.test(e.name) ? await writerGone(e.name, path, now) : false;
    else if (e.isFile()) stale = await untouchedFor(path, now);
    if (!stale) continue;
    await fsp.rm(path, { recursive: true, force: true }).catch(() => {});
    removed.push(e.name);
  }
  return removed;
}

async function writerGone(name: string, path: string, now: number): Promise<boolean> {
  const [, pid, start, pidns, , host] = NAME.exec(name)!;
  const m = self();
  if (host === m.host && Number(pidns) === m.pidns && m.pidns !== 0) {
    if (Number(pid) === m.pid && Number(start) === m.start) return false;
    return startTime(Number(pid)) !== Number(start);
  }
  // Liveness cannot be checked from here: judge by the age of its contents.
  if (!(await untouchedFor(path, now))) return false;
  for (const f of await fsp.readdir(path).catch(() => [] as string[])) {
    if (!(await untouchedFor(join(path, f), now))) return false;
  }
  return true;
}

async function untouchedFor(path: string, now: number): Promise<boolean> {
  const st = await fsp.lstat(path).catch(() => null);
  return st !== null && now - st.mtimeMs > STALE_MS;
}

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or null when there is none. */
function startTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[19]);
  } catch {
    return null;
  }
}

/** The inode of this process's PID namespace; 0 when unknown (not Linux). */
function pidNamespace(): number {
  try {
    return Number(/\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}
