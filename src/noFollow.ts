import { promises as fsp, constants as fsc, type Stats } from 'node:fs';
import { join } from 'node:path';
import { HamalError } from './errors.ts';

/**
 * Files inside hamal's own folders (a directory repository, hamal_lib_dir) are opened
 * without following a symbolic link at the last component, and without blocking on a
 * FIFO; the folders above them are checked with lstat. A link planted there by someone
 * with write access must not make hamal read, write or delete anything outside.
 * (The folder an operator names, such as the repository root, may itself be a link.)
 */
export const NOFOLLOW_READ = fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK;
/** A new file, created here and nowhere else (fails if anything, a link included, has the name). */
export const NOFOLLOW_CREATE = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
/** An existing file, for reading and writing. */
export const NOFOLLOW_UPDATE = fsc.O_RDWR | fsc.O_NOFOLLOW | fsc.O_NONBLOCK;

/** What a directory entry is, for messages. */
export function kindOf(st: Stats): string {
  if (st.isFile()) return 'regular file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symbolic link';
  if (st.isFIFO()) return 'FIFO';
  if (st.isCharacterDevice()) return 'character device';
  if (st.isBlockDevice()) return 'block device';
  if (st.isSocket()) return 'socket';
  return 'special file';
}

function unsafe(path: string, st: Stats): HamalError {
  return new HamalError('UNSAFE_PATH', `${path} is a ${kindOf(st)}, not a directory: hamal does not follow links or special files inside its own folders`, { subject: path });
}

/**
 * Makes `root/parts...` exist as real directories (new ones with `mode`), refusing any
 * component that is a link or not a directory. `checked` caches what was seen.
 */
export async function makeDirs(root: string, parts: readonly string[], mode: number, checked?: Set<string>): Promise<void> {
  let dir = root;
  for (const part of parts) {
    dir = join(dir, part);
    if (checked?.has(dir)) continue;
    await fsp.mkdir(dir, { mode }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    const st = await fsp.lstat(dir);
    if (!st.isDirectory()) throw unsafe(dir, st);
    checked?.add(dir);
  }
}

/**
 * Whether `root/parts...` all exist as real directories: false when one is missing; an
 * error when one is a link or not a directory.
 */
export async function dirsExist(root: string, parts: readonly string[], checked?: Set<string>): Promise<boolean> {
  let dir = root;
  for (const part of parts) {
    dir = join(dir, part);
    if (checked?.has(dir)) continue;
    let st: Stats;
    try {
      st = await fsp.lstat(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    if (!st.isDirectory()) throw unsafe(dir, st);
    checked?.add(dir);
  }
  return true;
}

/** Writes a whole new file (0600 unless `mode`) that must not exist yet, fdatasync'd. */
export async function writeNewFile(path: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
  const handle = await fsp.open(path, NOFOLLOW_CREATE, mode);
  try {
    await handle.writeFile(data);
    await handle.datasync();
  } finally {
    await handle.close();
  }
}
