import { defaultIfEmpty, filter, ignoreElements, lastValueFrom, mergeMap, range } from 'rxjs';
import type { Repository } from '../repo/Repository.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { chunkKey, type ChunkId } from '../repo/ChunkId.ts';
import { openRestoreOutput, type RestoreOutput } from '../sinks/raw/RestoreOutput.ts';
import { ChunkCodec } from '../repo/ChunkCodec.ts';
import { BufferPool } from './BufferPool.ts';
import { blockAt } from './BlockRef.ts';
import { HamalError, IntegrityError, UsageError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';

export interface RestoreOptions {
  /**
   * The version the output already holds (a replica kept current): only blocks that
   * differ from it are written. Without it a new file is written whole (zero blocks
   * become holes) and a block device gets every block, zeros included.
   */
  from?: Manifest | null;
  /**
   * Replace an existing regular file, or write a block device (still refused while it is
   * mounted, held or smaller than the version). Without it both are refused (RawImage).
   * @default false
   */
  force?: boolean;
  /**
   * Stops the restore: no further chunk is fetched, those in flight settle unwritten, a
   * new file's partial image is removed, and the restore rejects with RESTORE_STOPPED.
   * An output written in place (replica, block device) keeps what was written so far.
   */
  signal?: AbortSignal;
  /**
   * Chunks fetched and written at once. Memory: each holds one block.
   * @default 4
   */
  concurrency?: number;
  onBlock?: (bytes: number, written: boolean) => void;
}

export interface RestoreResult {
  version: string;
  capacity: number;
  writtenBytes: number;
  writtenBlocks: number;
  skippedBlocks: number;
  durationMs: number;
}

/**
 * Writes one version of a disk to a raw image, checking every chunk against its hash and
 * its block's length. A failure leaves no complete-looking new file (see RawImage).
 */
export async function restoreDisk(
  repo: Repository,
  manifest: Manifest,
  out: string,
  options: RestoreOptions = {},
): Promise<RestoreResult> {
  const started = Date.now();
  const from = options.from ?? null;
  checkReplica(manifest, from);
  if (options.signal?.aborted) throw stoppedError(manifest, out, null);
  const image = await openRestoreOutput(out, manifest.capacity, { replica: from !== null, force: options.force, version: manifest.version, from: from?.version ?? null });
  const result: RestoreResult = {
    version: manifest.version,
    capacity: manifest.capacity,
    writtenBytes: 0,
    writtenBlocks: 0,
    skippedBlocks: 0,
    durationMs: 0,
  };
  const before = beforeOf(manifest, from, image.inPlace);
  const writes = new BlockWrites(repo, manifest, image, result, options);
  try {
    await lastValueFrom(
      range(0, manifest.blocks.length).pipe(
        filter((i) => {
          const same = manifest.blocks[i] === before(i);
          if (same) {
            result.skippedBlocks++;
            options.onBlock?.(blockAt(i, manifest.capacity, manifest.blockSize).length, false);
          }
          return !same;
        }),
        // Bound: `concurrency` chunks in memory at once.
        mergeMap((i) => writes.write(i), options.concurrency ?? 4),
        ignoreElements(),
        defaultIfEmpty(undefined),
      ),
    );
    if (options.signal?.aborted) throw stoppedError(manifest, out, image);
    await image.commit();
  } catch (err) {
    await writes.halt();
    await image.abandon();
    throw err;
  }
  result.durationMs = Date.now() - started;
  return result;
}

/**
 * The writes of one restore: each block's chunk fetched, checked and written. Once halted
 * (a failure) or stopped (the signal), chunks still in flight are fetched but not written.
 */
class BlockWrites {
  private readonly _zeros: Buffer;
  /** One read buffer per chunk in flight, reused: no fresh multi-MiB allocation per chunk. */
  private readonly _pool: BufferPool;
  private readonly _inFlight = new Set<Promise<void>>();
  private _halted = false;

  constructor(
    private readonly _repo: Repository,
    private readonly _manifest: Manifest,
    private readonly _image: RestoreOutput,
    private readonly _result: RestoreResult,
    private readonly _options: RestoreOptions,
  ) {
    this._zeros = Buffer.alloc(_manifest.blockSize);
    this._pool = new BufferPool(_manifest.blockSize + ChunkCodec.OVERHEAD);
  }

  write(i: number): Promise<void> {
    const p = this._write(i);
    this._inFlight.add(p);
    p.then(() => this._inFlight.delete(p), () => this._inFlight.delete(p));
    return p;
  }

  /** After a failure: waits for the writes in flight, so none reaches a closed output. */
  async halt(): Promise<void> {
    this._halted = true;
    await Promise.allSettled([...this._inFlight]);
  }

  private _stopped(): boolean {
    return this._halted || this._options.signal?.aborted === true;
  }

  private async _write(i: number): Promise<void> {
    if (this._stopped()) return;
    const m = this._manifest;
    const ref = blockAt(i, m.capacity, m.blockSize);
    const id = m.blocks[i]!;
    if (id === null) {
      if (this._image.zero) await this._image.zero(ref.offset, ref.length);
      else await this._image.write(ref.offset, this._zeros.subarray(0, ref.length));
      failpoint('restore.written');
      return this._count(ref.length);
    }
    // Shared memory: the chunk's hash is checked on a hash thread, in place (HashWorkers).
    const buf = this._pool.take();
    try {
      const data = await this._repo.readChunk(id, true, buf);
      if (data.length !== ref.length) throw wrongSize(m, i, id, data.length, ref.length);
      if (this._stopped()) return;
      await this._image.write(ref.offset, data);
      failpoint('restore.written');
    } finally {
      this._pool.give(buf);
    }
    this._count(ref.length);
  }

  private _count(bytes: number): void {
    this._result.writtenBytes += bytes;
    this._result.writtenBlocks++;
    this._options.onBlock?.(bytes, true);
  }
}

function checkReplica(manifest: Manifest, from: Manifest | null): void {
  if (from && (from.vm !== manifest.vm || from.disk !== manifest.disk)) {
    throw new UsageError('BAD_REPLICA', `--from version ${from.version} is of another disk (${from.vm}/${from.disk})`);
  }
  if (from && from.blockSize !== manifest.blockSize) {
    throw new UsageError('BAD_REPLICA', `--from version ${from.version} has another block size`);
  }
}

/**
 * What the output holds at each block before we write: a chunk id, null (zeros), or
 * undefined (unknown: a block device, or beyond the replica's old end).
 */
function beforeOf(manifest: Manifest, from: Manifest | null, inPlace: boolean): (i: number) => ChunkId | null | undefined {
  return (i) => {
    if (from) {
      const known = i < from.blocks.length && (from.capacity === manifest.capacity || (i + 1) * from.blockSize <= from.capacity);
      return known ? from.blocks[i] : undefined;
    }
    return inPlace ? undefined : null;
  };
}

/** A chunk whose plaintext is not its block's length: a manifest or chunk that lies. */
function wrongSize(manifest: Manifest, i: number, id: ChunkId, got: number, want: number): IntegrityError {
  const key = chunkKey(id);
  return new IntegrityError(
    'CHUNK_WRONG_SIZE',
    `chunk ${key} holds ${got} bytes, but block ${i} of vm ${manifest.vm} disk ${manifest.disk} version ${manifest.version} is ${want} bytes`,
    { subject: key },
  );
}

/** Says what a stop left: nothing new, or an output written in place part of the way. */
function stoppedError(manifest: Manifest, out: string, image: RestoreOutput | null): HamalError {
  const left = image === null ? `${out} was not opened` : image.inPlace ? `${out} was written in place and now holds part of the version` : `${out} is as it was (the partial file was removed)`;
  return new HamalError('RESTORE_STOPPED', `restore of vm ${manifest.vm} disk ${manifest.disk} version ${manifest.version} to ${out} stopped: ${left}`, { subject: out });
}
