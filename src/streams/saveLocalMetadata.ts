import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { encodeName } from '../repo/names.ts';
import { newVersionId } from '../repo/VersionId.ts';
import { HamalError } from '../errors.ts';
import { makeDirs } from '../noFollow.ts';

/**
 * Writes a VM sync's metadata to `<dir>/metadata/<vm>/<stamp>.json`, whole or not at all.
 * It names the VM's disks, addresses and snapshot: 0600, in folders created 0700 whatever
 * the umask (an existing folder keeps its mode).
 */
export async function saveLocalMetadata(dir: string, vm: string, doc: { createdAt: string }): Promise<string> {
  const folder = join(dir, 'metadata', encodeName(vm));
  const path = join(folder, `${newVersionId(new Date(doc.createdAt))}.json`);
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    // Not through a link planted inside the lib dir (the lib dir itself may be one).
    await makeDirs(dir, ['metadata', encodeName(vm)], 0o700);
    await fsp.writeFile(tmp, JSON.stringify(doc, null, 2), { mode: 0o600, flag: 'wx' });
    await fsp.rename(tmp, path);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw new HamalError('METADATA_WRITE_FAILED', `cannot write VM metadata ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: path, cause: err });
  }
  return path;
}
