import { promises as fsp, constants as fsc } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { HamalError, IntegrityError, UsageError } from '../errors.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { blockAt } from '../streams/BlockRef.ts';
import { kindOf } from '../noFollow.ts';
import { failpoint } from '../failpoints.ts';
import { log } from '../log/Logger.ts';
import { randomBytes } from 'node:crypto';

/** Written overlays may hold anything the guest wrote: owner only. */
const MODE = 0o600;
const MAP_FORMAT = 1;
/** The largest map a reader accepts: a bitmap for 2^31 blocks (8 EiB at 4 MiB) is far past any disk. */
const MAX_MAP_BYTES = 512 * 1024 * 1024;

/** What the map file records (JSON); `blocks` is a bitmap, bit i%8 of byte i/8 = block i held. */
interface OverlayMap {
  format: number;
  kind: 'hamal-overlay';
  vm: string;
  disk: string;
  version: string;
  capacity: number;
  blockSize: number;
  /** Blocks held, for a reader's check of the bitmap. */
  held: number;
  blocks: string;
}

/**
 * The copy-on-write layer of a writable export: writes land here, never in the repository.
 *
 *   FILE        sparse, the disk's capacity; block i at offset i x blockSize, meaningful only
 *               where the map says the overlay holds block i
 *   FILE.map    JSON: the version it is over (vm, disk, version, capacity, blockSize) and a
 *               bitmap of the blocks held; replaced whole (temp file, fsync, rename, fsync dir)
 *   FILE.lock   the pid serving it, while one does
 *
 * The first write to a block not held copies the version's block in (unless the write
 * covers it whole), patches it, writes it, then marks it held. flush() fsyncs FILE, then
 * writes the map: a block is held on disk only once its data is. After a crash, blocks
 * written since the last flush read as the version again (unflushed writes may be lost).
 * A failed fsync fails the overlay for good: Linux may have dropped the dirty pages, and a
 * later fsync that succeeds would let the map mark blocks whose data is gone.
 */
export class Overlay {
  readonly path: string;
  readonly mapPath: string;
  private readonly _lockPath: string;
  private readonly _handle: fsp.FileHandle;
  private readonly _manifest: Manifest;
  private readonly _bits: Uint8Array;
  private _held: number;
  /** The map on disk is older than `_bits`. */
  private _dirty = false;
  /** Per-block chains: writes to one block run one after another (copy-on-write). */
  private readonly _busy = new Map<number, Promise<void>>();
  private _flushing: Promise<void> | null = null;
  private _closed = false;
  /** Set by a failed fsync: every later write and flush fails with it. */
  private _failed: HamalError | null = null;

  private constructor(path: string, handle: fsp.FileHandle, manifest: Manifest, bits: Uint8Array, held: number) {
    this.path = path;
    this.mapPath = `${path}.map`;
    this._lockPath = `${path}.lock`;
    this._handle = handle;
    this._manifest = manifest;
    this._bits = bits;
    this._held = held;
  }

  /**
   * Opens the overlay at `path` over `manifest`'s version, or creates it. Refused: an
   * overlay of another disk or version (named), a file without its map or a map without
   * its file, anything but regular files, an overlay another process serves.
   */
  static async open(path: string, manifest: Manifest): Promise<Overlay> {
    await takeLock(`${path}.lock`);
    try {
      const [file, map] = await Promise.all([lstatOrNull(path), lstatOrNull(`${path}.map`)]);
      if (file && !file.isFile()) throw new UsageError('OVERLAY_NOT_FILE', `overlay ${path} is a ${kindOf(file)}, not a regular file`, { subject: path });
      if (map && !map.isFile()) throw new UsageError('OVERLAY_NOT_FILE', `overlay map ${path}.map is a ${kindOf(map)}, not a regular file`, { subject: `${path}.map` });
      if (file && !map) throw new UsageError('OVERLAY_WITHOUT_MAP', `${path} exists but its map ${path}.map does not: not an overlay hamal export made (or its map was lost); give another --overlay path`, { subject: path });
      if (map && !file) throw new UsageError('OVERLAY_WITHOUT_FILE', `overlay map ${path}.map exists but ${path} does not; remove the map or give another --overlay path`, { subject: path });
      return file ? await Overlay._reopen(path, manifest) : await Overlay._create(path, manifest);
    } catch (err) {
      await fsp.rm(`${path}.lock`, { force: true });
      throw err;
    }
  }

  private static async _create(path: string, manifest: Manifest): Promise<Overlay> {
    const handle = await fsp.open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, MODE);
    try {
      await handle.truncate(manifest.capacity);
      const overlay = new Overlay(path, handle, manifest, new Uint8Array(Math.ceil(manifest.blocks.length / 8)), 0);
      // The map first records which version the file is over, before any write lands.
      await handle.sync();
      await overlay._writeMap(Buffer.from(overlay._bits), 0);
      return overlay;
    } catch (err) {
      await handle.close();
      await fsp.rm(path, { force: true });
      throw err;
    }
  }

  private static async _reopen(path: string, manifest: Manifest): Promise<Overlay> {
    if ((await fsp.stat(`${path}.map`)).size > MAX_MAP_BYTES) throw new IntegrityError('OVERLAY_MAP_CORRUPT', `overlay map ${path}.map is larger than any map hamal writes`, { subject: `${path}.map` });
    const map = parseMap(await fsp.readFile(`${path}.map`), `${path}.map`);
    for (const f of ['vm', 'disk', 'version'] as const) {
      if (map[f] !== manifest[f]) {
        throw new UsageError(
          'OVERLAY_OTHER_VERSION',
          `overlay ${path} holds writes over vm ${map.vm} disk ${map.disk} version ${map.version}, not vm ${manifest.vm} disk ${manifest.disk} version ${manifest.version}: serve that version with it (--version ${map.version}) or give another --overlay path`,
          { subject: path },
        );
      }
    }
    if (map.capacity !== manifest.capacity || map.blockSize !== manifest.blockSize) {
      throw new IntegrityError('OVERLAY_MAP_CORRUPT', `overlay map ${path}.map says capacity ${map.capacity} and block size ${map.blockSize}, but version ${manifest.version} has ${manifest.capacity} and ${manifest.blockSize}`, { subject: `${path}.map` });
    }
    const bits = new Uint8Array(Buffer.from(map.blocks, 'base64'));
    if (bits.length !== Math.ceil(manifest.blocks.length / 8) || countBits(bits) !== map.held) {
      throw new IntegrityError('OVERLAY_MAP_CORRUPT', `overlay map ${path}.map: its bitmap does not match its ${map.held} blocks held of ${manifest.blocks.length}`, { subject: `${path}.map` });
    }
    const handle = await fsp.open(path, fsc.O_RDWR | fsc.O_NOFOLLOW);
    const st = await handle.stat();
    if (st.size !== manifest.capacity) {
      await handle.close();
      throw new IntegrityError('OVERLAY_WRONG_SIZE', `overlay ${path} is ${st.size} bytes, but version ${manifest.version} of vm ${manifest.vm} disk ${manifest.disk} is ${manifest.capacity}`, { subject: path });
    }
    try {
      // A copied or restored overlay may have lost its mode: what the guest wrote is the owner's only.
      await ownerOnly(handle, path);
      const mapHandle = await fsp.open(`${path}.map`, fsc.O_RDONLY | fsc.O_NOFOLLOW);
      await ownerOnly(mapHandle, `${path}.map`).finally(() => mapHandle.close());
    } catch (err) {
      await handle.close();
      throw err;
    }
    return new Overlay(path, handle, manifest, bits, map.held);
  }

  /** Blocks the overlay holds. */
  get heldBlocks(): number {
    return this._held;
  }

  holds(i: number): boolean {
    return (this._bits[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  /** Bytes of [offset, offset + length), all in held blocks. */
  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await this._handle.read(buf, 0, length, offset);
    // A sparse file reads short only past its end, which the size check at open rules out.
    if (bytesRead !== length) throw new HamalError('OVERLAY_SHORT_READ', `overlay ${this.path}: read ${bytesRead} of ${length} bytes at ${offset}`, { subject: this.path });
    return buf;
  }

  /**
   * Writes `data` at `offset`, block by block. `base(i)` gives the version's block i (null:
   * zeros) for a partial first write to it.
   */
  async write(offset: number, data: Buffer, base: (i: number) => Promise<Buffer | null>): Promise<void> {
    this._checkOpen();
    const { blockSize, capacity } = this._manifest;
    const writes: Array<Promise<void>> = [];
    for (let at = offset; at < offset + data.length; ) {
      const ref = blockAt(Math.floor(at / blockSize), capacity, blockSize);
      const end = Math.min(offset + data.length, ref.offset + ref.length);
      const part = data.subarray(at - offset, end - offset);
      const from = at;
      writes.push(this._serial(ref.index, () => this._writeBlock(ref, from, part, base)));
      at = end;
    }
    await Promise.all(writes);
  }

  /**
   * fsyncs the file, then writes the map when blocks were added since it was written. The
   * map written is the one from before the fsync: every block it marks had its data
   * written before the fsync began, so the map never marks a block whose data may be lost.
   */
  flush(): Promise<void> {
    const run = async () => {
      if (this._failed) throw this._failed;
      const [bits, held, dirty] = [Buffer.from(this._bits), this._held, this._dirty];
      this._dirty = false;
      try {
        failpoint('overlay.fsync');
        await this._handle.sync();
      } catch (err) {
        this._failed = new HamalError('OVERLAY_FAILED', `overlay ${this.path}: fsync failed (${(err as Error).message}); writes since the last flush may be lost, so it takes no more: restart the export, which serves what ${this.mapPath} records`, { subject: this.path, cause: err });
        throw this._failed;
      }
      try {
        if (dirty) await this._writeMap(bits, held);
      } catch (err) {
        this._dirty ||= dirty;
        throw err;
      }
    };
    // One flush at a time; a flush asked for during another runs after it (and syncs again).
    const p = (this._flushing ?? Promise.resolve()).then(run, run);
    this._flushing = p;
    return p;
  }

  /** Waits for the writes in flight, flushes, closes the file and drops the lock. */
  async close(): Promise<void> {
    if (this._closed) return;
    this._closed = true;
    try {
      await Promise.allSettled([...this._busy.values()]);
      await this.flush();
    } finally {
      await this._handle.close();
      await fsp.rm(this._lockPath, { force: true });
    }
  }

  private async _writeBlock(ref: { index: number; offset: number; length: number }, at: number, part: Buffer, base: (i: number) => Promise<Buffer | null>): Promise<void> {
    if (this.holds(ref.index) || part.length === ref.length) {
      await this._writeAll(part, at);
    } else {
      // First partial write to this block: the version's block, patched, written whole.
      const block = Buffer.alloc(ref.length);
      (await base(ref.index))?.copy(block);
      part.copy(block, at - ref.offset);
      await this._writeAll(block, ref.offset);
    }
    if (!this.holds(ref.index)) {
      this._bits[ref.index >> 3]! |= 1 << (ref.index & 7);
      this._held++;
      this._dirty = true;
    }
  }

  private async _writeAll(buf: Buffer, position: number): Promise<void> {
    for (let done = 0; done < buf.length; ) {
      const { bytesWritten } = await this._handle.write(buf, done, buf.length - done, position + done);
      done += bytesWritten;
    }
  }

  /** Runs `fn` after the writes to block `i` already queued. */
  private _serial(i: number, fn: () => Promise<void>): Promise<void> {
    const prev = this._busy.get(i) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    const tail = p.catch(() => undefined);
    this._busy.set(i, tail);
    void tail.then(() => {
      if (this._busy.get(i) === tail) this._busy.delete(i);
    });
    return p;
  }

  private _checkOpen(): void {
    if (this._failed) throw this._failed;
    if (this._closed) throw new HamalError('OVERLAY_CLOSED', `overlay ${this.path} is closed`, { subject: this.path });
  }

  /** The map, replaced whole and durably: temp file, fsync, rename, fsync of the folder. */
  private async _writeMap(bits: Buffer, held: number): Promise<void> {
    const m = this._manifest;
    const map: OverlayMap = {
      format: MAP_FORMAT,
      kind: 'hamal-overlay',
      vm: m.vm,
      disk: m.disk,
      version: m.version,
      capacity: m.capacity,
      blockSize: m.blockSize,
      held,
      blocks: bits.toString('base64'),
    };
    // Unpredictable and exclusive: a file planted in a shared folder is never written into.
    const tmp = join(dirname(this.mapPath), `.${basename(this.mapPath)}.tmp-${randomBytes(6).toString('hex')}`);
    try {
      const h = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, MODE);
      try {
        await h.writeFile(JSON.stringify(map) + '\n');
        await h.sync();
      } finally {
        await h.close();
      }
      await fsp.rename(tmp, this.mapPath);
      await syncDir(dirname(this.mapPath));
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw new HamalError('OVERLAY_MAP_WRITE', `cannot write overlay map ${this.mapPath}: ${(err as Error).message}`, { subject: this.mapPath, cause: err, retryable: true });
    }
  }
}

function parseMap(bytes: Buffer, where: string): OverlayMap {
  let map: OverlayMap;
  try {
    map = JSON.parse(bytes.toString('utf8')) as OverlayMap;
  } catch (err) {
    throw new IntegrityError('OVERLAY_MAP_CORRUPT', `overlay map ${where} is not valid JSON`, { subject: where, cause: err });
  }
  const ok =
    typeof map === 'object' && map !== null && map.kind === 'hamal-overlay' && typeof map.vm === 'string' && typeof map.disk === 'string' &&
    typeof map.version === 'string' && Number.isSafeInteger(map.held) && typeof map.blocks === 'string';
  if (!ok) throw new IntegrityError('OVERLAY_MAP_CORRUPT', `overlay map ${where} is not an overlay map of hamal export`, { subject: where });
  if (map.format !== MAP_FORMAT) throw new IntegrityError('FORMAT_UNKNOWN', `overlay map ${where} has format ${map.format}; this hamal reads format ${MAP_FORMAT}`, { subject: where });
  return map;
}

function countBits(bits: Uint8Array): number {
  let n = 0;
  for (let b of bits) for (; b; b &= b - 1) n++;
  return n;
}

async function lstatOrNull(path: string) {
  return fsp.lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
}

/** Sets an open file readable by its owner only (through the handle: no path to swap), warning when it was not. */
async function ownerOnly(h: fsp.FileHandle, file: string): Promise<void> {
  const { mode } = await h.stat();
  if (!(mode & 0o077)) return;
  await h.chmod(MODE);
  log.child('export').warn(`${file} was mode ${(mode & 0o777).toString(8)}, readable by others: set to 600`);
}

async function syncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, fsc.O_RDONLY);
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/** FILE.lock with our pid, created exclusively; one left by a process that is gone is taken over. */
async function takeLock(lockPath: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      const h = await fsp.open(lockPath, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, MODE);
      await h.writeFile(`${process.pid}\n`);
      await h.close();
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw lockError(lockPath, err);
    }
    const pid = Number((await fsp.readFile(lockPath, 'utf8').catch(() => '')).trim());
    if (Number.isSafeInteger(pid) && pid > 0 && alive(pid)) {
      throw new HamalError('OVERLAY_IN_USE', `overlay ${lockPath.slice(0, -'.lock'.length)} is served by process ${pid} (${lockPath}); stop it first`, { subject: lockPath, retryable: true });
    }
    await fsp.rm(lockPath, { force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function lockError(lockPath: string, err: unknown): HamalError {
  return new HamalError('OVERLAY_LOCK', `cannot create overlay lock ${lockPath}: ${(err as Error).message}`, { subject: lockPath, cause: err });
}
