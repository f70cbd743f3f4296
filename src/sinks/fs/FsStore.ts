import { promises as fsp, constants as fsc } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ObjectStore, PutOptions } from '../ObjectStore.ts';
import { HamalError, NotFoundError } from '../../errors.ts';
import { failpoint } from '../../failpoints.ts';

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

/**
 * An object store in a local directory.
 *
 *   <root>/
 *   ├── .tmp/<random>      objects written but not yet flushed; swept when the store opens
 *   └── <key>              one file per object, renamed into place once durable
 *
 * An object is renamed into place only after its data is fsync'd, so a power loss can
 * never leave a file under a chunk's name with other bytes than the name says. Directory
 * entries are fsync'd in `flush()`, once per directory. Objects waiting under `.tmp/` are
 * already visible to this store's `get`, `head` and `list`.
 */
export class FsStore implements ObjectStore {
  readonly location: string;
  private readonly _root: string;
  private readonly _tmp: string;
  private readonly _syncEach: boolean;
  private readonly _flushConcurrency: number;
  private readonly _madeDirs = new Set<string>();
  private _dirtyDirs = new Set<string>();
  /** Key -> temporary file, for objects put but not yet flushed (batched mode). */
  private _waiting = new Map<string, string>();
  /** Temporary file -> its background fdatasync (see earlySyncs): null once durable, else its error. */
  private readonly _syncing = new Map<string, Promise<Error | null>>();
  private _syncsRunning = 0;
  /** The error of a failed flush (see flush). */
  private _failed: Error | undefined;
  private readonly _earlySyncs: number;

  private constructor(root: string, options: FsStoreOptions) {
    this._root = root;
    this._tmp = join(root, '.tmp');
    this._syncEach = options.syncEachObject ?? false;
    this._flushConcurrency = options.flushConcurrency ?? 8;
    this._earlySyncs = options.earlySyncs ?? 4;
    this.location = `file://${root}`;
  }

  /**
   * Opens the store at `root` (creating it with `create`) and sweeps temporaries a crash
   * left. Opening for reading needs no write access.
   */
  static async open(root: string, options: FsStoreOptions = {}): Promise<FsStore> {
    const store = new FsStore(root, options);
    if (options.create) {
      try {
        await fsp.mkdir(store._tmp, { recursive: true });
        await fsp.access(root, fsc.W_OK);
      } catch (err) {
        throw new HamalError('TARGET_NOT_WRITABLE', `target directory ${root} is not writable`, { subject: root, cause: err });
      }
    } else {
      const st = await fsp.stat(root).catch(() => null);
      if (!st?.isDirectory()) {
        throw new NotFoundError('REPOSITORY_NOT_FOUND', `no hamal repository at ${store.location}`, { subject: root });
      }
    }
    const leftovers = await fsp.readdir(store._tmp).catch(() => [] as string[]);
    for (const name of leftovers) await fsp.rm(join(store._tmp, name), { force: true }).catch(() => {});
    return store;
  }

  private _path(key: string): string {
    if (key === '' || key.startsWith('/') || key.split('/').some((s) => s === '' || s === '.' || s === '..')) {
      throw new RangeError(`invalid object key ${JSON.stringify(key)}`);
    }
    return join(this._root, ...key.split('/'));
  }

  async put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<void> {
    const path = this._path(key);
    const dir = dirname(path);
    if (!this._madeDirs.has(dir)) {
      await fsp.mkdir(dir, { recursive: true });
      this._madeDirs.add(dir);
    }
    const tmp = join(this._tmp, randomBytes(12).toString('hex'));
    try {
      if (!this._madeDirs.has(this._tmp)) {
        await fsp.mkdir(this._tmp, { recursive: true });
        this._madeDirs.add(this._tmp);
      }
      const handle = await fsp.open(tmp, 'w');
      const now = this._syncEach || options.ifAbsent;
      let early = false;
      try {
        await handle.writeFile(body);
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
        // link() fails when the name exists, where rename() would replace it.
        if (this._waiting.has(key)) throw Object.assign(new Error('exists'), { code: 'EEXIST' });
        await fsp.link(tmp, path);
        await fsp.rm(tmp);
        this._dirtyDirs.add(dir);
      } else if (now) {
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
      await fsp.rm(tmp, { force: true }).catch(() => {});
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new HamalError('OBJECT_EXISTS', `object ${key} already exists in ${this.location}`, { subject: key });
      }
      throw new HamalError('STORE_WRITE_FAILED', `cannot write object ${key} under ${this._root}`, {
        subject: key,
        cause: err,
        retryable: (err as NodeJS.ErrnoException).code === 'EAGAIN',
      });
    }
  }

  async get(key: string, into?: Buffer): Promise<Buffer> {
    try {
      const path = this._waiting.get(key) ?? this._path(key);
      if (!into) return await fsp.readFile(path);
      // Into the caller's buffer: a fresh multi-MiB allocation per chunk costs more than the read.
      const handle = await fsp.open(path, 'r');
      try {
        const { size } = await handle.stat();
        if (size > into.length) return await handle.readFile();
        let done = 0;
        while (done < size) {
          const { bytesRead } = await handle.read(into, done, size - done, done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return into.subarray(0, done);
      } finally {
        await handle.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NotFoundError('OBJECT_NOT_FOUND', `object ${key} not found in ${this.location}`, { subject: key });
      }
      throw new HamalError('STORE_READ_FAILED', `cannot read object ${key} in ${this.location}`, {
        subject: key,
        cause: err,
      });
    }
  }

  async head(key: string): Promise<{ size: number } | null> {
    try {
      const st = await fsp.stat(this._waiting.get(key) ?? this._path(key));
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
    const start = base ? join(this._root, ...base.split('/')) : this._root;
    const seen = new Set<string>();
    for await (const key of this._walk(start, base, prefix)) {
      seen.add(key);
      yield key;
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
      if (entry.isDirectory()) {
        if (key.startsWith(prefix) || prefix.startsWith(key + '/')) yield* this._walk(join(dir, entry.name), key, prefix);
      } else if (key.startsWith(prefix)) {
        yield key;
      }
    }
  }

  async delete(key: string): Promise<void> {
    const waiting = this._waiting.get(key);
    this._waiting.delete(key);
    if (waiting) await fsp.rm(waiting, { force: true });
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
            const handle = await fsp.open(tmp, 'r');
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

  async close(): Promise<void> {
    await this.flush();
  }
}

