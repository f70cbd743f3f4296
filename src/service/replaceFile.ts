import { promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * Replaces a small state file whole (written beside it, then renamed over it), so a reader
 * or a crash sees the old content or the new, never half of one. State (task nonces,
 * schedules, VM addresses) is the owner's alone: the file is 0600 and a directory created
 * here 0700, whatever the umask; an existing directory keeps its mode.
 */
export async function replaceFile(path: string, data: string): Promise<void> {
  await fsp.mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // A name of its own, created exclusively (never through a link, always with this mode).
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await fsp.writeFile(tmp, data, { mode: 0o600, flag: 'wx' });
    await fsp.rename(tmp, path);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
}
