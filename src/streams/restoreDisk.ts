import { defaultIfEmpty, filter, ignoreElements, lastValueFrom, mergeMap, range } from 'rxjs';
import type { Repository } from '../repo/Repository.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { chunkKey, type ChunkId } from '../repo/ChunkId.ts';
import { RawImage } from '../sinks/raw/RawImage.ts';
import { ChunkCodec } from '../repo/ChunkCodec.ts';
import { blockAt } from './BlockRef.ts';
import { HamalError, IntegrityError, UsageError } from '../errors.ts';

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
  const image = await RawImage.open(out, manifest.capacity, { replica: from !== null, force: options.force });
  const result: RestoreResult = {
    version: manifest.version,
    capacity: manifest.capacity,
    writtenBytes: 0,
    writtenBlocks: 0,
    skippedBlocks: 0,
    durationMs: 0,
  };
  const before = beforeOf(manifest, from, image.inPlace);
  const zeros = Buffer.alloc(manifest.blockSize);
  // One read buffer per chunk in flight, reused: no fresh multi-MiB allocation per chunk.
  const pool: Buffer[] = [];
  // After a failure or a stop, chunks still in flight are read but not written.
  let failed = false;
  const halted = () => failed || options.signal?.aborted === true;
  const inFlight = new Set<Promise<void>>();
  const writeBlock = async (i: number): Promise<void> => {
    if (halted()) return;
    const ref = blockAt(i, manifest.capacity, manifest.blockSize);
    const id = manifest.blocks[i]!;
    const buf = id === null ? null : (pool.pop() ?? Buffer.allocUnsafeSlow(manifest.blockSize + ChunkCodec.OVERHEAD));
    try {
      const data = buf === null ? zeros.subarray(0, ref.length) : await repo.readChunk(id!, true, buf);
      if (data.length !== ref.length) throw wrongSize(manifest, i, id!, data.length, ref.length);
      if (halted()) return;
      await image.write(ref.offset, data);
    } finally {
      if (buf) pool.push(buf);
    }
    result.writtenBytes += ref.length;
    result.writtenBlocks++;
    options.onBlock?.(ref.length, true);
  };
  const tracked = (i: number): Promise<void> => {
    const p = writeBlock(i);
    inFlight.add(p);
    p.then(() => inFlight.delete(p), () => inFlight.delete(p));
    return p;
  };
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
        mergeMap(tracked, options.concurrency ?? 4),
        ignoreElements(),
        defaultIfEmpty(undefined),
      ),
    );
    if (options.signal?.aborted) throw stoppedError(manifest, out, image);
    await image.commit();
  } catch (err) {
    failed = true;
    // Nothing may write to the output once abandon() has closed it.
    await Promise.allSettled([...inFlight]);
    await image.abandon();
    throw err;
  }
  result.durationMs = Date.now() - started;
  return result;
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
function stoppedError(manifest: Manifest, out: string, image: RawImage | null): HamalError {
  const left = image === null ? `${out} was not opened` : image.inPlace ? `${out} was written in place and now holds part of the version` : `${out} is as it was (the partial file was removed)`;
  return new HamalError('RESTORE_STOPPED', `restore of vm ${manifest.vm} disk ${manifest.disk} version ${manifest.version} to ${out} stopped: ${left}`, { subject: out });
}
