import { promises as fsp } from 'node:fs';
import { basename } from 'node:path';
import { UsageError } from '../../errors.ts';

/** A disk of a local "VM": a raw image file or a block device, with the id it is synced under. */
export interface LocalDisk {
  readonly id: string;
  readonly path: string;
}

/** Parses `ID=PATH` or `PATH` (the id is then the file name), as `hamal sync --disk` takes it. */
export function parseLocalDisk(spec: string): LocalDisk {
  const eq = spec.indexOf('=');
  // A path may hold '=', so only treat it as ID=PATH when the id part has no slash.
  if (eq > 0 && !spec.slice(0, eq).includes('/')) {
    const id = spec.slice(0, eq);
    const path = spec.slice(eq + 1);
    if (!path) throw new UsageError('BAD_DISK', `--disk ${spec}: no path after '='`, { subject: spec });
    return { id, path };
  }
  return { id: basename(spec), path: spec };
}

/** Capacity in bytes of a regular file or block device (stat reports 0 for devices). */
export async function capacityOf(path: string): Promise<number> {
  const st = await fsp.stat(path);
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const major = Math.floor(st.rdev / 256) & 0xfff; // Linux dev_t: major in bits 8..19
    const minor = (st.rdev & 0xff) | ((Math.floor(st.rdev / 4096) & ~0xff) >>> 0);
    const sectors = await fsp.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
    return Number(sectors.trim()) * 512;
  }
  throw new UsageError('BAD_DISK', `${path} is neither a regular file nor a block device`, { subject: path });
}
