import { promises as fsp, constants as fsc } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { GetOptions, ObjectStore, PutOptions } from '../ObjectStore.ts';
import { HamalError, IntegrityError, NotFoundError } from '../../errors.ts';
import { failpoint } from '../../failpoints.ts';
import { log } from '../../log/Logger.ts';
import { dirsExist, kindOf, makeDirs, NOFOLLOW_CREATE, NOFOLLOW_READ } from '../../noFollow.ts';
import { newWriterDirName, sweepStaleWriters } from './writerDirs.ts';
import { writeParts } from './writeParts.ts';

export interface FsStoreOptions {
  /**
   * fsync and rename each object as it is put. Off (the default), objects wait under
   * `.tmp/` and `flush()` fsyncs them together, then renames them into place: the same
   * guarantees (whole objects only, durable after flush), with the fsyncs batched and
   * parallel instead of one per object in the write path (2 GiB: ~35% faster here).
   * Cost of off: up to one checkpoint period of writes waits in `.tmp/` on disk.
   * @default false
   */
  syncEachObject?: boolean;
  /**
   * Objects fsync'd at once by `flush()` when batched.
   * @default 8
   */
  flushConcurrency?: number;
  /**
   * Batched mode: up to this many fdatasyncs started in the background as objects are
   * written, so the disk writes back while the sync goes on reading and `flush()` finds
   * most data durable already (2 GiB: ~25% faster here). Each holds one open file
   * descriptor and one libuv thread while it runs; past the cap, objects wait for
   * `flush()` as before. A failed one fails `flush()`. 0 = off.
   * @default 4
   */
  earlySyncs?: number;
  /** Create the directory when missing; otherwise a missing one is REPOSITORY_NOT_FOUND. @default false */
  create?: boolean;
}

/** Files and folders a directory repository creates: its data is the disks'. */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

/**
 * An object store in a local directory.
 *
 *   <root>/
 *   ├── .tmp/w-<writer>/<random>   objects written but not yet flushed, one folder per
 *   │                              writing process (writerDirs.ts); swept only when stale
 *   └── <key>                      one file (0600) per object, renamed into place once durable
 *
 * An object is renamed into place only after its data is fsync'd, so a power loss can
 * never leave a file under a chunk's name with other bytes than the name says. Directory
 * entries are fsync'd in `flush()`, once per directory. Objects waiting under `.tmp/` are
 * already visible to this store's `get`, `head` and `list`.
 *
 * Nothing below the root is followed when it is a symbolic link, and only regular files
 * are objects: a link or special file at a key is an IntegrityError naming it, one met by
 * `list` is skipped with a warning (noFollow.ts). The root itself may be a link.
 */
export class FsStore implements ObjectStore {
  readonly location: string;
  private readonly _root: string;
  private readonly _syncEach: boolean;
  private readonly _flushConcurrency: number;
  /** Folders known to be real directories (checked with lstat once per process). */
  private readonly _realDirs = new Set<string>();
  private _dirtyDirs = new Set<string>();
  /** This writer's temporary folder, made (and stale ones swept) on the first put. */
  private _writerDir: Promise<string> | undefined;
  /** Key -> temporary file, for objects put but not yet flushed (batched mode). */
  private _waiting = new Map<string, string>();
  /** Temporary file -> its background fdatasync (see earlySyncs): null once durable, else its error. */
  private readonly _syncing = new Map<string, Promise<Error | null>>();
  private _syncsRunning = 0;
  /** The error of a failed flush (see flush). */
  private _failed: Error | undefined;
  private readonly _earlySyncs: number;
  private readonly _warned = new Set<string>();

  private constructor(root: string, shown: string, options: FsStoreOptions) {
    this._root = root;
    this._syncEach = options.syncEachObject ?? false;
    this._flushConcurrency = options.flushConcurrency ?? 8;
    this._earlySyncs = options.earlySyncs ?? 4;
    this.location = `file://${shown}`;
  }

  /**
   * Opens the store at `root` (creating it, 0700, with `create`). Opening sweeps nothing
   * and needs no write access: a reader never disturbs a writer.
   */
  static async open(root: string, options: FsStoreOptions = {}): Promise<FsStore> {
    if (options.create) {
      try {
        await fsp.mkdir(root, { recursive: true, mode: DIR_MODE });
        await fsp.access(root, fsc.W_OK);
      } catch (err) {
        throw new HamalError('TARGET_NOT_WRITABLE', `target directory ${root} is not writable`, { subject: root, cause: err });
      }
    }
    const real = await fsp.realpath(root).catch(() => null);
    const st = real === null ? null : await fsp.stat(real).catch(() => null);
    if (real === null || !st?.isDirectory()) {
      throw new NotFoundError('REPOSITORY_NOT_FOUND', `no hamal repository at file://${root}`, { subject: root });
    }
    return new FsStore(real, root, options);
  }

  private _parts(key: string): string[] {
    const parts = key.split('/');
    if (key === '' || parts.some((s) => s === '' || s === '.' || s === '..' || s.includes('\0')) || parts[0] === '.tmp') {
      throw new RangeError(`invalid object key ${JSON.stringify(key)}`);
    }
    return parts;
  }

  private _path(key: string): string {
    return join(this._root, ...this._parts(key));
  }

  /** Whether the folders of `key` exist as real directories (an error when one is a link). */
  private _parentExists(key: string): Promise<boolean> {
    return this._foldersExist(this._parts(key).slice(0, -1), key);
  }

  private _foldersExist(parts: string[], key: string): Promise<boolean> {
    return dirsExist(this._root, parts, this._realDirs).catch((err) => {
      throw new IntegrityError('UNSAFE_PATH', `${key} in ${this.location}: ${(err as Error).message}`, { subject: key, cause: err });
    });
  }

  /** This process's temporary folder; the first call sweeps the folders of writers that are gone. */
  private _tmpDir(): Promise<string> {
    this._writerDir ??= (async () => {
      await makeDirs(this._root, ['.tmp'], DIR_MODE, this._realDirs);
      const tmp = join(this._root, '.tmp');
      const swept = await sweepStaleWriters(tmp);
      if (swept.length) log.child('store').verbose(`removed the temporary files of ${swept.length} writer(s) that are gone`, { store: this.location });
      const dir = join(tmp, newWriterDirName());
      await fsp.mkdir(dir, { mode: DIR_MODE });
      return dir;
    })();
    return this._writerDir;
  }

  put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<void> {
    return this.putParts(key, [body], options);
  }

  async putParts(key: string, parts: readonly Uint8Array[], options: PutOptions = {}): Promise<void> {
    const path = this._path(key);
    const dir = dirname(path);
    let tmp: string | undefined;
    try {
      await makeDirs(this._root, this._parts(key).slice(0, -1), DIR_MODE, this._realDirs);
      tmp = join(await this._tmpDir(), randomBytes(12).toString('hex'));
      const handle = await fsp.open(tmp, NOFOLLOW_CREATE, FILE_MODE);
      const now = this._syncEach || options.ifAbsent;
      let early = false;
      try {
        await writeParts(handle, parts);
        if (now) await handle.datasync();
        else if (this._syncsRunning < this._earlySyncs) {
          // Not awaited: flush() awaits it and fails with its error. Not retried there: a
          // write-back error is reported once, a second fsync may well say all is fine.
          early = true;
          this._syncsRunning++;
          const durable = handle
            .datasync()
            .then(() => failpoint('store.datasync'))
            .then(() => null, (err: Error) => err)
            // Counted until closed: the cap bounds open files too.
            .finally(() =>
              handle
                .close()
                .catch(() => {})
                .finally(() => {
                  this._syncsRunning--;
                }),
            );
          this._syncing.set(tmp, durable);
        }
      } finally {
        if (!early) await handle.close();
      }
      if (options.ifAbsent) {
        // link() fails when the name exists (a link included), where rename() would replace it.
        if (this._waiting.has(key)) throw Object.assign(new Error('exists'), { code: 'EEXIST' });
        await fsp.link(tmp, path);
        await fsp.rm(tmp);
        this._dirtyDirs.add(dir);
      } else if (now) {
        // rename() replaces a link at `path` itself, never what it points to.
        await fsp.rename(tmp, path);
        this._dirtyDirs.add(dir);
      } else {
        const before = this._waiting.get(key);
        this._waiting.set(key, tmp);
        if (before) {
          this._syncing.delete(before);
          await fsp.rm(before, { force: true });
        }
      }
    } catch (err) {
      if (tmp) await fsp.rm(tmp, { force: true }).catch(() => {});
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new HamalError('OBJECT_EXISTS', `object ${key} already exists in ${this.location}`, { subject: key });
      }
      if (err instanceof HamalError) throw new HamalError(err.code, `cannot write object ${key} in ${this.location}: ${err.message}`, { subject: key, cause: err });
      throw new HamalError('STORE_WRITE_FAILED', `cannot write object ${key} under ${this._root}`, {
        subject: key,
        cause: err,
        retryable: (err as NodeJS.ErrnoException).code === 'EAGAIN',
      });
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    const waiting = this._waiting.get(key);
    const notFound = () => new NotFoundError('OBJECT_NOT_FOUND', `object ${key} not found in ${this.location}`, { subject: key });
    if (!waiting && !(await this._parentExists(key))) throw notFound();
    let handle: fsp.FileHandle;
    try {
      handle = await fsp.open(waiting ?? this._path(key), NOFOLLOW_READ);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw notFound();
      if (code === 'ELOOP') throw this._notRegular(key, 'symbolic link');
      throw new HamalError('STORE_READ_FAILED', `cannot read object ${key} in ${this.location}`, { subject: key, cause: err });
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw this._notRegular(key, kindOf(st));
      if (options.maxBytes !== undefined && st.size > options.maxBytes) {
        throw new IntegrityError('OBJECT_TOO_LARGE', `object ${key} in ${this.location} holds ${st.size} bytes, more than the ${options.maxBytes} it can hold`, { subject: key });
      }
      // Into the caller's buffer: a fresh multi-MiB allocation per chunk costs more than the read.
      const into = options.into && options.into.length >= st.size ? options.into : Buffer.allocUnsafe(st.size);
      let done = 0;
      while (done < st.size) {
        const { bytesRead } = await handle.read(into, done, st.size - done, done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return into.subarray(0, done);
    } catch (err) {
      if (err instanceof HamalError) throw err;
      throw new HamalError('STORE_READ_FAILED', `cannot read object ${key} in ${this.location}`, { subject: key, cause: err });
    } finally {
      await handle.close();
    }
  }

  private _notRegular(key: string, kind: string): IntegrityError {
    return new IntegrityError('OBJECT_NOT_REGULAR', `object ${key} in ${this.location} is a ${kind}, not a regular file: not written by hamal`, { subject: key });
  }

  async head(key: string): Promise<{ size: number } | null> {
    const waiting = this._waiting.get(key);
    if (!waiting && !(await this._parentExists(key))) return null;
    try {
      const st = await fsp.lstat(waiting ?? this._path(key));
      if (!st.isFile()) throw this._notRegular(key, kindOf(st));
      return { size: st.size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    // Walk from the deepest directory the prefix names, then filter by the full prefix.
    const cut = prefix.lastIndexOf('/');
    const base = cut < 0 ? '' : prefix.slice(0, cut);
    const seen = new Set<string>();
    if (!base || (await this._foldersExist(this._parts(base), base))) {
      const start = base ? join(this._root, ...base.split('/')) : this._root;
      for await (const key of this._walk(start, base, prefix)) {
        seen.add(key);
        yield key;
      }
    }
    for (const key of this._waiting.keys()) if (key.startsWith(prefix) && !seen.has(key)) yield key;
  }

  private async *_walk(dir: string, keyDir: string, prefix: string): AsyncIterable<string> {
    let entries;
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const entry of entries) {
      if (!keyDir && entry.name === '.tmp') continue;
      const key = keyDir ? `${keyDir}/${entry.name}` : entry.name;
      if (!key.startsWith(prefix) && !prefix.startsWith(key + '/')) continue;
      // Dirent types come from lstat: a link to a directory is not walked into.
      if (entry.isDirectory()) yield* this._walk(join(dir, entry.name), key, prefix);
      else if (entry.isFile()) {
        if (key.startsWith(prefix)) yield key;
      } else this._warnOnce(key, entry.isSymbolicLink() ? 'symbolic link' : 'special file');
    }
  }

  skipped(): readonly string[] {
    return [...this._warned];
  }

  private _warnOnce(key: string, kind: string): void {
    if (this._warned.has(key)) return;
    this._warned.add(key);
    log.child('store').warn(`${key} in ${this.location} is a ${kind}, not written by hamal: skipped`, { key });
  }

  async delete(key: string): Promise<void> {
    const waiting = this._waiting.get(key);
    this._waiting.delete(key);
    if (waiting) await fsp.rm(waiting, { force: true });
    if (!(await this._parentExists(key))) return;
    // rm() removes a link itself, never what it points to.
    await fsp.rm(this._path(key), { force: true });
    this._dirtyDirs.add(dirname(this._path(key)));
  }

  async flush(): Promise<void> {
    // Once a flush failed, every later one fails too: the objects it dropped are not on
    // disk, and a flush that then succeeded would let a journal checkpoint vouch for them.
    if (this._failed) throw this._failed;
    try {
      await this._flush();
    } catch (err) {
      this._failed = err as Error;
      throw err;
    }
  }

  private async _flush(): Promise<void> {
    // Batched mode: data first (fsync'd in parallel), then the renames, then directories.
    const waiting = this._waiting;
    this._waiting = new Map();
    const entries = [...waiting];
    const worker = async () => {
      for (let e = entries.pop(); e; e = entries.pop()) {
        const [key, tmp] = e;
        try {
          const early = this._syncing.get(tmp);
          this._syncing.delete(tmp);
          if (early) {
            const failed = await early;
            if (failed) throw failed;
          } else {
            const handle = await fsp.open(tmp, NOFOLLOW_READ);
            await handle.datasync().finally(() => handle.close());
          }
          const path = this._path(key);
          await fsp.rename(tmp, path);
          this._dirtyDirs.add(dirname(path));
        } catch (err) {
          throw new HamalError('STORE_WRITE_FAILED', `cannot make object ${key} durable under ${this._root}`, { subject: key, cause: err });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this._flushConcurrency, entries.length) }, worker));
    const dirs = this._dirtyDirs;
    this._dirtyDirs = new Set();
    for (const dir of dirs) {
      const handle = await fsp.open(dir, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
  }

  /** Flushes, then removes this writer's (now empty) temporary folder. */
  async close(): Promise<void> {
    await this.flush();
    const dir = await this._writerDir?.catch(() => undefined);
    this._writerDir = undefined;
    if (dir) await fsp.rmdir(dir).catch(() => {});
  }
}
