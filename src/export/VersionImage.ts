import type { Repository } from '../repo/Repository.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { chunkKey, type ChunkId } from '../repo/ChunkId.ts';
import { blockAt } from '../streams/BlockRef.ts';
import { HamalError, IntegrityError, describeError } from '../errors.ts';
import { ChunkCache, type ChunkCacheOptions } from './ChunkCache.ts';
import { BlockReadError } from './BlockReadError.ts';
import { log as rootLog, type Logger } from '../log/Logger.ts';
import type { ExportExtent, ExportPiece } from './NbdExport.ts';

export interface VersionImageOptions extends ChunkCacheOptions {
  /**
   * Blocks fetched ahead of a sequential reader (a read starting where an earlier one
   * ended); at most half the cache, so read-ahead never evicts what it fetched. 0: off.
   * Cost: fetches that may go unused when the reader stops.
   * @default 4
   */
  readAheadBlocks?: number;
  /** Where an unreadable chunk is reported (once per chunk, at error level). @default the export logger */
  log?: Logger;
}

/** Readers tracked for read-ahead: one per interleaved sequential stream (connections, nbdcopy's workers). */
const STREAMS = 8;

/**
 * The bytes of one stored version of a disk, read from its manifest and chunks on
 * demand: never-stored (null) blocks read as holes, every chunk is checked against its
 * hash and its block's length before a byte of it is served. Memory: the chunk cache.
 */
export class VersionImage {
  readonly manifest: Manifest;
  readonly cache: ChunkCache;
  private readonly _readAhead: number;
  private readonly _log: Logger;
  /** Where recent reads ended: a read starting at one of these is sequential. */
  private readonly _streamEnds: number[] = [];
  /** Chunks already reported as unreadable: logged once each at error level. */
  readonly failedChunks = new Set<string>();

  constructor(
    private readonly _repo: Repository,
    manifest: Manifest,
    options: VersionImageOptions = {},
  ) {
    this.manifest = manifest;
    this.cache = new ChunkCache((id) => this._repo.readChunk(id, true), manifest.blockSize, options);
    const ahead = options.readAheadBlocks ?? 4;
    if (!Number.isSafeInteger(ahead) || ahead < 0) throw new RangeError(`readAheadBlocks must be a whole number, got ${ahead}`);
    this._readAhead = Math.min(ahead, Math.floor(this.cache.maxEntries / 2));
    this._log = options.log ?? rootLog.child('export');
  }

  get size(): number {
    return this.manifest.capacity;
  }

  get blockSize(): number {
    return this.manifest.blockSize;
  }

  /** Whether block `i` was never stored (reads as zeros). */
  isHole(i: number): boolean {
    return this.manifest.blocks[i] === null;
  }

  /** Pieces covering [offset, offset + length), holes merged. Precondition: the range is inside the disk. */
  async read(offset: number, length: number): Promise<ExportPiece[]> {
    this._noteRead(offset, length);
    const bs = this.blockSize;
    const reads: Array<Promise<ExportPiece>> = [];
    for (let at = offset; at < offset + length; ) {
      const i = Math.floor(at / bs);
      const end = Math.min(offset + length, (i + 1) * bs);
      const [start, from, to] = [at, at - i * bs, end - i * bs];
      reads.push(this.isHole(i) ? Promise.resolve({ offset: start, length: end - start, data: null }) : this.block(i).then((b) => ({ offset: start, length: to - from, data: b!.subarray(from, to) })));
      at = end;
    }
    return mergeHoles(await Promise.all(reads));
  }

  /**
   * Block `i` whole, checked; null for a hole. The buffer may be shared with the cache and
   * other readers: never write into it.
   */
  async block(i: number): Promise<Buffer | null> {
    const id = this.manifest.blocks[i];
    if (id === null || id === undefined) return null;
    const ref = blockAt(i, this.size, this.blockSize);
    let data: Buffer;
    try {
      data = await this.cache.get(id);
    } catch (err) {
      throw this._unreadable(i, id, err);
    }
    if (data.length !== ref.length) {
      throw this._unreadable(i, id, new IntegrityError('CHUNK_WRONG_SIZE', `chunk ${chunkKey(id)} holds ${data.length} bytes, block ${i} is ${ref.length}`, { subject: chunkKey(id) }));
    }
    return data;
  }

  /** Extents of [offset, offset + length): stored blocks are data, null blocks holes. `held(i)`: a block another layer holds (data). */
  extents(offset: number, length: number, held: (i: number) => boolean = () => false): ExportExtent[] {
    const out: ExportExtent[] = [];
    const bs = this.blockSize;
    for (let at = offset; at < offset + length; ) {
      const i = Math.floor(at / bs);
      const end = Math.min(offset + length, (i + 1) * bs);
      const hole = this.isHole(i) && !held(i);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += end - at;
      else out.push({ length: end - at, hole });
      at = end;
    }
    return out;
  }

  /** Fetches the stored blocks of the range into the cache, no more than it holds; errors are left for the reads. */
  async warm(offset: number, length: number, held: (i: number) => boolean = () => false): Promise<void> {
    const first = Math.floor(offset / this.blockSize);
    const last = Math.min(Math.ceil((offset + length) / this.blockSize), first + this.cache.maxEntries);
    for (let i = first; i < last; i++) {
      if (!this.isHole(i) && !held(i)) await this.block(i).catch(() => undefined);
    }
  }

  /** Sequential reader detection: a read that starts where a recent one ended fetches ahead. */
  private _noteRead(offset: number, length: number): void {
    const end = offset + length;
    const k = this._streamEnds.indexOf(offset);
    if (k >= 0) this._streamEnds.splice(k, 1);
    else if (this._streamEnds.length >= STREAMS) this._streamEnds.shift();
    this._streamEnds.push(end);
    if (k < 0 || this._readAhead === 0) return;
    const next = Math.ceil(end / this.blockSize);
    const stop = Math.min(this.manifest.blocks.length, next + this._readAhead);
    for (let i = next; i < stop; i++) {
      const id = this.manifest.blocks[i];
      if (id) this.cache.prefetch(id);
    }
  }

  private _unreadable(i: number, id: ChunkId, err: unknown): BlockReadError {
    const m = this.manifest;
    const key = chunkKey(id);
    const cause = err instanceof HamalError ? err : undefined;
    const failure = new BlockReadError(
      cause?.code ?? 'CHUNK_UNREADABLE',
      `block ${i} (offset ${i * m.blockSize}) of vm ${m.vm} disk ${m.disk} version ${m.version}: chunk ${key} cannot be read: ${describeError(err)}`,
      i * m.blockSize,
      { subject: key, cause: err, retryable: cause?.retryable ?? false },
    );
    // Once per chunk: a client retrying a bad block must not flood the log.
    if (!this.failedChunks.has(key)) this._log.error(`${failure.message}; clients reading it get EIO`, { chunk: key });
    this.failedChunks.add(key);
    return failure;
  }
}

/** Adjacent hole pieces as one (one OFFSET_HOLE chunk for a run of zero blocks). */
function mergeHoles(pieces: ExportPiece[]): ExportPiece[] {
  const out: ExportPiece[] = [];
  for (const p of pieces) {
    const last = out[out.length - 1];
    if (last && last.data === null && p.data === null) last.length += p.length;
    else out.push(p);
  }
  return out;
}
