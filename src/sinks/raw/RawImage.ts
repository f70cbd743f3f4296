import { promises as fsp, constants as fsc, type Stats } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { HamalError, UsageError } from '../../errors.ts';
import { failpoint } from '../../failpoints.ts';
import { kindOf, NOFOLLOW_CREATE, NOFOLLOW_UPDATE } from '../../noFollow.ts';
import { blockDeviceHolders, blockDeviceInUse, blockDeviceSize, majorMinor } from '../../blockDevice.ts';

/** Written bytes after which a background fdatasync starts (one at a time). */
const EARLY_SYNC_BYTES = 64 * 1024 * 1024;

/** A new partial file: created here and nowhere else, not through a link. */
const CREATE = NOFOLLOW_CREATE;
/** An existing file or device: never through a link, never blocking (a FIFO swapped in). */
const UPDATE = NOFOLLOW_UPDATE;
/** Restored disks may hold anything (a decrypted one, secrets): owner only, whatever the umask. */
const MODE = 0o600;

export interface RawImageOptions {
  /**
   * The path already holds an earlier version (a replica kept current) and is written in
   * place. It must be an existing regular file (resized to the capacity) or block device.
   * @default false
   */
  replica?: boolean;
  /**
   * Permits replacing an existing regular file (the new image is written beside it and
   * renamed over it) and writing a block device, which must still be unmounted, held by
   * no one else and at least `capacity` bytes. Without it both are refused.
   * @default false
   */
  force?: boolean;
}

/**
 * Where a restore writes: a raw image file or a block device. Nothing is written before
 * every check passed; anything but a regular file or a block device (a link, a FIFO, a
 * character device, a directory, a socket) is refused, links are never followed.
 *
 * - New file (or `force` over a regular file): written as `.<name>.hamal-partial-<random>`
 *   beside it, mode 0600, sized to the capacity (unwritten ranges stay holes), fsync'd,
 *   then put under its name: a file named `out` is always complete. A new file never
 *   replaces one that appeared meanwhile. A failure removes the partial file.
 * - `inPlace` (a replica, or a block device): written where it is; ranges the caller does
 *   not write keep their bytes, so the caller writes zeros where needed. A block device is
 *   opened exclusively (O_EXCL) for the whole restore: nobody mounts it meanwhile.
 */
export class RawImage {
  readonly path: string;
  readonly inPlace: boolean;
  private readonly _handle: fsp.FileHandle;
  private readonly _writePath: string;
  /** The regular file a partial image replaces (`force`), null when there was none. */
  private readonly _replaces: Stats | null;
  /** Bytes written since the last background fdatasync started. */
  private _unsynced = 0;
  private _syncing: Promise<void> | null = null;
  private _syncFailed: Error | undefined;

  private constructor(path: string, writePath: string, handle: fsp.FileHandle, replaces: Stats | null) {
    this.path = path;
    this._writePath = writePath;
    this._handle = handle;
    this.inPlace = writePath === path;
    this._replaces = replaces;
  }

  /** Opens `path` for a restore of `capacity` bytes, refusing what it must not write. */
  static async open(path: string, capacity: number, options: RawImageOptions = {}): Promise<RawImage> {
    try {
      const st = await lstatOrNull(path);
      // /dev/VG/LV, /dev/mapper/*, /dev/disk/by-*: block devices are named through links;
      // the device itself is checked and written, the link followed for that only.
      const device = st?.isSymbolicLink() ? await linkedDevice(path) : st?.isBlockDevice() ? { path, st } : null;
      if (device) return new RawImage(device.path, device.path, await openDevice(device.path, device.st, capacity, options.force === true), null);
      if (st && !st.isFile()) throw notRegular(path, st);
      if (options.replica) return new RawImage(path, path, await openReplica(path, st, capacity), null);
      if (st && !options.force) throw new UsageError('OUTPUT_EXISTS', `${path} exists: use --force to replace it`, { subject: path });
      const partial = join(dirname(path), `.${basename(path)}.hamal-partial-${randomBytes(4).toString('hex')}`);
      return new RawImage(path, partial, await openPartial(partial, capacity), st);
    } catch (err) {
      if (err instanceof HamalError) throw err;
      throw new HamalError('OUTPUT_NOT_WRITABLE', `cannot open ${path} for writing`, { subject: path, cause: err });
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this._handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    // The disk writes back while the restore goes on, instead of all at commit().
    this._unsynced += data.length;
    if (this._unsynced >= EARLY_SYNC_BYTES && !this._syncing) {
      this._unsynced = 0;
      this._syncing = this._handle.datasync().then(() => failpoint('restore.datasync')).then(
        () => {
          this._syncing = null;
        },
        (err: Error) => {
          // Kept for commit(): a write-back error is reported once, a later fsync may pass.
          this._syncFailed ??= err;
          this._syncing = null;
        },
      );
    }
  }

  /** Makes the image durable and, for a new file, visible under its name. */
  async commit(): Promise<void> {
    await this._syncing;
    if (this._syncFailed) throw new HamalError('OUTPUT_WRITE_FAILED', `cannot write ${this.path}: ${this._syncFailed.message}`, { subject: this.path, cause: this._syncFailed });
    await this._handle.sync();
    await this._handle.close();
    if (this.inPlace) return;
    if (this._replaces) await this._replace();
    else await placeNew(this._writePath, this.path);
  }

  /** After a failure: closes, and removes a new file's partial image. */
  async abandon(): Promise<void> {
    await this._syncing;
    await this._handle.close().catch(() => {});
    if (!this.inPlace) await fsp.rm(this._writePath, { force: true });
  }

  /** Renames the partial image over the file it replaces, if that is still the same file. */
  private async _replace(): Promise<void> {
    const now = await lstatOrNull(this.path);
    if (now && !(now.isFile() && now.dev === this._replaces!.dev && now.ino === this._replaces!.ino)) {
      throw new HamalError('OUTPUT_CHANGED', `${this.path} was replaced by a ${kindOf(now)} during the restore: left as it is`, { subject: this.path });
    }
    await fsp.rename(this._writePath, this.path);
  }
}

/** A block device: only with `force`, never mounted, used as swap, held or too small. */
async function openDevice(path: string, st: Stats, capacity: number, force: boolean): Promise<fsp.FileHandle> {
  if (!force) throw new UsageError('OUTPUT_EXISTS', `${path} is a block device: writing it destroys what it holds; use --force to write it`, { subject: path });
  const dev = majorMinor(st.rdev);
  const inUse = await blockDeviceInUse(path, st.rdev);
  if (inUse) throw new HamalError('DEVICE_MOUNTED', `block device ${path} is ${inUse}: refusing to write it`, { subject: path });
  const holders = await blockDeviceHolders(dev);
  if (holders.length) throw new HamalError('DEVICE_BUSY', `block device ${path} is held by ${holders.join(', ')}: refusing to write it`, { subject: path });
  const handle = await openExclusive(path);
  try {
    await checkSame(path, st, handle);
    const size = await blockDeviceSize(dev);
    if (size === null) throw new HamalError('DEVICE_SIZE_UNKNOWN', `cannot read the size of block device ${path} from /sys/dev/block: refusing to write it`, { subject: path });
    if (size < capacity) throw new HamalError('DEVICE_TOO_SMALL', `block device ${path} is ${size} bytes, smaller than the version's ${capacity}: refusing to write it`, { subject: path });
  } catch (err) {
    await handle.close();
    throw err;
  }
  return handle;
}

/**
 * Opens a block device with O_EXCL: EBUSY while it is mounted (in any mount namespace) or
 * claimed by device-mapper, md or another O_EXCL opener, and nobody can mount it while we
 * hold it. Deno's node:fs reads O_EXCL as "create new" (EEXIST on any existing path; Linux
 * never says EEXIST without O_CREAT): there it is opened without, and the checks before
 * (mountinfo, swaps, holders) are all there is.
 */
async function openExclusive(path: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(path, UPDATE | fsc.O_EXCL);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return fsp.open(path, UPDATE);
    if (code !== 'EBUSY') throw err;
    throw new HamalError('DEVICE_BUSY', `block device ${path} is busy: mounted (maybe in another mount namespace) or held by device-mapper, md or another program; refusing to write it`, { subject: path, cause: err });
  }
}

/** An existing regular file that holds an earlier version: resized, written in place. */
async function openReplica(path: string, st: Stats | null, capacity: number): Promise<fsp.FileHandle> {
  if (!st) throw new UsageError('REPLICA_NOT_FOUND', `${path} does not exist: --from needs the regular file or block device that holds that version`, { subject: path });
  const handle = await fsp.open(path, UPDATE);
  try {
    await checkSame(path, st, handle);
    await handle.truncate(capacity);
  } catch (err) {
    await handle.close();
    throw err;
  }
  return handle;
}

/** A new partial image, 0600, of `capacity` bytes (all holes). */
async function openPartial(partial: string, capacity: number): Promise<fsp.FileHandle> {
  const handle = await fsp.open(partial, CREATE, MODE);
  try {
    await handle.chmod(MODE); // the umask may have taken the owner's bits
    await handle.truncate(capacity);
  } catch (err) {
    await handle.close();
    await fsp.rm(partial, { force: true });
    throw err;
  }
  return handle;
}

/**
 * Puts a complete new image under `path` unless something appeared there meanwhile:
 * link() never replaces (rename() would). Filesystems without hard links fall back to a
 * check and a rename.
 */
async function placeNew(partial: string, path: string): Promise<void> {
  try {
    await fsp.link(partial, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UsageError('OUTPUT_EXISTS', `${path} appeared during the restore: left as it is; use --force to replace it`, { subject: path });
    if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EMLINK'].includes(code ?? '')) throw err;
    if (await lstatOrNull(path)) throw new UsageError('OUTPUT_EXISTS', `${path} appeared during the restore: left as it is; use --force to replace it`, { subject: path });
    await fsp.rename(partial, path);
    return;
  }
  await fsp.unlink(partial);
}

function notRegular(path: string, st: Stats): UsageError {
  const link = st.isSymbolicLink() ? ' (not followed)' : '';
  return new UsageError('OUTPUT_NOT_REGULAR', `${path} is a ${kindOf(st)}${link}: restore writes only to a regular file or a block device`, { subject: path });
}

/** The block device a link resolves to, or null when it resolves to anything else. */
async function linkedDevice(path: string): Promise<{ path: string; st: Stats } | null> {
  const real = await fsp.realpath(path).catch(() => null);
  const st = real === null ? null : await lstatOrNull(real);
  return st?.isBlockDevice() ? { path: real!, st } : null;
}

/** Refuses a handle that is not what lstat saw at its path (swapped between check and open). */
async function checkSame(path: string, want: Stats, handle: fsp.FileHandle): Promise<void> {
  const got = await handle.stat();
  if (got.dev !== want.dev || got.ino !== want.ino || kindOf(got) !== kindOf(want)) {
    throw new HamalError('OUTPUT_CHANGED', `${path} changed between its check and its opening (now a ${kindOf(got)}): refusing to write it`, { subject: path });
  }
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await fsp.lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}
