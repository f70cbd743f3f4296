import { promises as fsp } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces a small state file whole (written beside it, then renamed over it), so a reader
 * or a crash sees the old content or the new, never half of one. State (task nonces,
 * schedules, VM addresses) is the owner's alone: the file is 0600 and a directory created
 * here 0700, whatever the umask; an existing directory keeps its mode.
 */
export async function replaceFile(path: string, data: string): Promise<void> {
  await fsp.mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  // A mode applies to a new file only: a stale temporary one (a crash) goes first.
  await fsp.rm(tmp, { force: true });
  await fsp.writeFile(tmp, data, { mode: 0o600, flag: 'wx' }); // wx: never through a link planted there
  await fsp.rename(tmp, path);
}
