import { promises as fsp } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces a small state file whole (written beside it, then renamed over it), so a reader
 * or a crash sees the old content or the new, never half of one. Creates the directory.
 */
export async function replaceFile(path: string, data: string): Promise<void> {
  await fsp.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  await fsp.writeFile(tmp, data);
  await fsp.rename(tmp, path);
}
