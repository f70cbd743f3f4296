import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { HamalError } from '../../errors.ts';
import { failpoint } from '../../failpoints.ts';

/** Written bytes after which a background fdatasync starts (one at a time). */
const EARLY_SYNC_BYTES = 64 * 1024 * 1024;

/**
 * Where a restore writes: a raw image file or a block device.
 *
 * - New file: written as `.<name>.hamal-partial-<random>` beside it, sized to the
 *   capacity (unwritten ranges stay holes), fsync'd, then renamed: a file named `out` is
 *   always complete. A failure removes the partial file.
 * - `inPlace` (an existing replica, or any block device): written where it is; ranges
 *   the caller does not write keep their bytes, so the caller writes zeros where needed.
 */
export class RawImage {
  readonly path: string;
  readonly inPlace: boolean;
  private readonly _handle: fsp.FileHandle;
  private readonly _writePath: string;
  /** Bytes written since the last background fdatasync started. */
  private _unsynced = 0;
  private _syncing: Promise<void> | null = null;
  private _syncFailed: Error | undefined;

  private constructor(path: string, writePath: string, handle: fsp.FileHandle, inPlace: boolean) {
    this.path = path;
    this._writePath = writePath;
    this._handle = handle;
    this.inPlace = inPlace;
  }

  /** Opens `path` for a restore of `capacity` bytes. `replica`: it already holds an earlier version. */
  static async open(path: string, capacity: number, replica: boolean): Promise<RawImage> {
    let st;
    try {
      st = await fsp.stat(path);
    } catch {
      st = null;
    }
    try {
      if (st?.isBlockDevice()) return new RawImage(path, path, await fsp.open(path, 'r+'), true);
      if (replica) {
        if (!st?.isFile()) {
          throw new HamalError('REPLICA_NOT_FOUND', `replica ${path} does not exist or is not a file`, { subject: path });
        }
        const handle = await fsp.open(path, 'r+');
        await handle.truncate(capacity);
        return new RawImage(path, path, handle, true);
      }
      const partial = join(dirname(path), `.${basename(path)}.hamal-partial-${randomBytes(4).toString('hex')}`);
      const handle = await fsp.open(partial, 'wx');
      await handle.truncate(capacity);
      return new RawImage(path, partial, handle, false);
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
    if (!this.inPlace) await fsp.rename(this._writePath, this.path);
  }

  /** After a failure: closes, and removes a new file's partial image. */
  async abandon(): Promise<void> {
    await this._syncing;
    await this._handle.close().catch(() => {});
    if (!this.inPlace) await fsp.rm(this._writePath, { force: true });
  }
}
