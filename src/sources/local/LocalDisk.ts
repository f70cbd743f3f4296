import { promises as fsp, constants as fsc, type Stats } from 'node:fs';
import { basename } from 'node:path';
import { HamalError, UsageError } from '../../errors.ts';
import { kindOf } from '../../noFollow.ts';
import { blockDeviceSize, majorMinor } from '../../blockDevice.ts';

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

/**
 * Opens a disk for reading: a regular file or a block device (the path may be a link to
 * one, as LVM's /dev/VG/LV are); anything else (a FIFO, a character device, a directory,
 * a socket) is refused before it is opened, so nothing blocks in open() or reads for ever.
 * The opened file is checked again: it must be the one that was checked.
 */
export async function openDisk(disk: LocalDisk): Promise<{ handle: fsp.FileHandle; capacity: number }> {
  const { id, path } = disk;
  let before: Stats;
  try {
    before = await fsp.stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new HamalError(code === 'ENOENT' ? 'DISK_NOT_FOUND' : 'DISK_UNREADABLE', code === 'ENOENT' ? `disk ${id}: ${path} does not exist` : `disk ${id}: cannot stat ${path} (${code})`, { subject: path, cause: err });
  }
  const refuse = (st: Stats) => new UsageError('BAD_DISK', `disk ${id}: ${path} is a ${kindOf(st)}, not a regular file or block device`, { subject: path });
  if (!before.isFile() && !before.isBlockDevice()) throw refuse(before);
  let handle: fsp.FileHandle;
  try {
    // O_NONBLOCK: a FIFO swapped in after the check must not block the open.
    handle = await fsp.open(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new HamalError('DISK_UNREADABLE', `disk ${id}: cannot open ${path} for reading (${code})`, { subject: path, cause: err });
  }
  try {
    const st = await handle.stat();
    if (st.dev !== before.dev || st.ino !== before.ino || (!st.isFile() && !st.isBlockDevice())) throw refuse(st);
    return { handle, capacity: await capacityOf(path, st) };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/** Capacity in bytes of a regular file or block device (stat reports 0 for devices). */
async function capacityOf(path: string, st: Stats): Promise<number> {
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const size = await blockDeviceSize(majorMinor(st.rdev));
    if (size === null) throw new HamalError('DISK_UNREADABLE', `cannot read the size of block device ${path} from /sys/dev/block`, { subject: path });
    return size;
  }
  throw new UsageError('BAD_DISK', `${path} is neither a regular file nor a block device`, { subject: path });
}
