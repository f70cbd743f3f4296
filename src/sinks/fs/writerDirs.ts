import { promises as fsp, constants as fsc, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { thisProcess as self, processGone } from '../../processIdentity.ts';

/**
 * Temporary folders of the processes writing to one directory repository
 * (docs/format.md, Directory store):
 *
 *   .tmp/w-<pid>-<start>-<pidns>-<random>-<boot id>/   one per writer (FsStore)
 *
 * A writer's temporaries live in its own folder, so another command on the same
 * repository (a `versions`, a prune, a second sync) never removes what a running sync has
 * not yet flushed. A folder is stale, and swept, only when its writer is certainly gone:
 * on this kernel since this boot (the boot id: unlike a hostname, never shared by two
 * machines) and in this PID namespace, when no process with that pid and start time
 * exists; elsewhere (another host on a shared file system, another container, before a
 * reboot), when nothing in it changed for STALE_MS.
 *
 * The sweep works inside `.tmp` pinned by an open descriptor (/proc/self/fd/N/...), with
 * unlink and rmdir only: a `.tmp` swapped for a link while it runs cannot send it
 * elsewhere. Without /proc nothing is swept (leftovers only cost space).
 */
export const STALE_MS = 24 * 3600_000;

const NAME = /^w-(\d+)-(\d+)-(\d+)-([0-9a-f]+)-([0-9a-f]*)$/;
/** Temporaries of releases that wrote straight into `.tmp/`. */
const LOOSE = /^[0-9a-f]{24}$/;

/** The folder name of a new writer: this process, made unique. */
export function newWriterDirName(): string {
  const m = self();
  return `w-${m.pid}-${m.start}-${m.pidns}-${randomBytes(4).toString('hex')}-${m.boot}`;
}

/**
 * Removes the stale writer folders under `tmp` (and loose temporaries of releases that
 * wrote straight into `.tmp/`, once older than STALE_MS). Links and special files are
 * left alone; nothing is followed. Returns what was removed.
 */
export async function sweepStaleWriters(tmp: string, now = Date.now()): Promise<string[]> {
  if (!existsSync('/proc/self/fd')) return [];
  let pinned: fsp.FileHandle;
  try {
    pinned = await fsp.open(tmp, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  } catch {
    return [];
  }
  try {
    const at = `/proc/self/fd/${pinned.fd}`;
    const removed: string[] = [];
    for (const e of await fsp.readdir(at, { withFileTypes: true })) {
      const path = join(at, e.name);
      if (e.isDirectory() && NAME.test(e.name) && (await writerGone(e.name, path, now))) {
        if (await removeWriterDir(path)) removed.push(e.name);
      } else if (e.isFile() && LOOSE.test(e.name) && (await untouchedFor(path, now))) {
        await fsp.unlink(path).catch(() => {});
        removed.push(e.name);
      }
    }
    return removed;
  } finally {
    await pinned.close();
  }
}

/** Empties a writer's folder (pinned too) of its files, then removes it. */
async function removeWriterDir(path: string): Promise<boolean> {
  let pinned: fsp.FileHandle;
  try {
    pinned = await fsp.open(path, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  } catch {
    return false;
  }
  try {
    const at = `/proc/self/fd/${pinned.fd}`;
    for (const f of await fsp.readdir(at, { withFileTypes: true })) if (f.isFile()) await fsp.unlink(join(at, f.name)).catch(() => {});
  } finally {
    await pinned.close();
  }
  return fsp.rmdir(path).then(() => true, () => false);
}

async function writerGone(name: string, path: string, now: number): Promise<boolean> {
  const [, pid, start, pidns, , boot] = NAME.exec(name)!;
  const gone = processGone({ pid: Number(pid), start: Number(start), pidns: Number(pidns), boot: boot! });
  if (gone !== undefined) return gone;
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
