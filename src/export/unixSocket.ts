import net from 'node:net';
import { promises as fsp } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { HamalError, UsageError } from '../errors.ts';
import { kindOf } from '../noFollow.ts';
import type { NbdServer } from './NbdServer.ts';

/**
 * Binds `server` to a Unix socket at `path`, mode 0600 from its first moment: it is bound
 * inside a fresh 0700 folder beside `path`, made 0600, then hard-linked to `path` (which
 * fails rather than replace anything that appeared meanwhile). An existing `path` is
 * replaced only when it is a socket nobody listens on (left by a killed export).
 * Resolves to a function that removes the socket, if it is still ours.
 */
export async function listenUnix(server: NbdServer, path: string): Promise<() => Promise<void>> {
  const abs = resolve(path);
  await clearStale(abs);
  const dir = await fsp.mkdtemp(join(dirname(abs), '.hamal-export-'));
  const bound = join(dir, 's');
  try {
    await server.listen({ path: bound });
    await fsp.chmod(bound, 0o600);
    await fsp.link(bound, abs).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'EEXIST' ? occupied(abs, 'something else appeared there meanwhile') : err;
    });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
  const ours = await fsp.lstat(abs);
  return async () => {
    const now = await fsp.lstat(abs).catch(() => null);
    if (now && now.ino === ours.ino && now.dev === ours.dev) await fsp.rm(abs, { force: true });
  };
}

/** Removes a dead socket at `path`; refuses anything else there. */
async function clearStale(path: string): Promise<void> {
  const st = await fsp.lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket()) throw new UsageError('LISTEN_PATH_EXISTS', `${path} exists and is a ${kindOf(st)}, not a socket: refusing to replace it (give another --listen unix:PATH)`, { subject: path });
  if (await answers(path)) throw occupied(path, 'another server listens on it');
  await fsp.rm(path, { force: true });
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

function occupied(path: string, why: string): HamalError {
  return new HamalError('LISTEN_PATH_IN_USE', `socket ${path} is in use: ${why}`, { subject: path, retryable: true });
}
