import { defaultIfEmpty, filter, ignoreElements, lastValueFrom, mergeMap, range } from 'rxjs';
import type { Repository } from '../repo/Repository.ts';
import type { Manifest } from '../repo/Manifest.ts';
import type { ChunkId } from '../repo/ChunkId.ts';
import { RawImage } from '../sinks/raw/RawImage.ts';
import { ChunkCodec } from '../repo/ChunkCodec.ts';
import { blockAt } from './BlockRef.ts';
import { UsageError } from '../errors.ts';

export interface RestoreOptions {
  /**
   * The version the output already holds (a replica kept current): only blocks that
   * differ from it are written. Without it a new file is written whole (zero blocks
   * become holes) and a block device gets every block, zeros included.
   */
  from?: Manifest | null;
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
 * Writes one version of a disk to a raw image, checking every chunk against its hash.
 * A failure leaves no complete-looking new file (see RawImage).
 */
export async function restoreDisk(
  repo: Repository,
  manifest: Manifest,
  out: string,
  options: RestoreOptions = {},
): Promise<RestoreResult> {
  const started = Date.now();
  const from = options.from ?? null;
  if (from && (from.vm !== manifest.vm || from.disk !== manifest.disk)) {
    throw new UsageError('BAD_REPLICA', `--from version ${from.version} is of another disk (${from.vm}/${from.disk})`);
  }
  if (from && from.blockSize !== manifest.blockSize) {
    throw new UsageError('BAD_REPLICA', `--from version ${from.version} has another block size`);
  }
  const image = await RawImage.open(out, manifest.capacity, from !== null);
  const zeros = Buffer.alloc(manifest.blockSize);
  // What the output holds at each block before we write: a chunk id, null (zeros), or
  // undefined (unknown: a block device, or beyond the replica's old end).
  const before = (i: number): ChunkId | null | undefined => {
    if (from) {
      const known = i < from.blocks.length && (from.capacity === manifest.capacity || (i + 1) * from.blockSize <= from.capacity);
      return known ? from.blocks[i] : undefined;
    }
    return image.inPlace ? undefined : null;
  };
  const result: RestoreResult = {
    version: manifest.version,
    capacity: manifest.capacity,
    writtenBytes: 0,
    writtenBlocks: 0,
    skippedBlocks: 0,
    durationMs: 0,
  };
  const concurrency = options.concurrency ?? 4;
  // One read buffer per chunk in flight, reused: no fresh multi-MiB allocation per chunk.
  const pool: Buffer[] = [];
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
        mergeMap(async (i) => {
          const ref = blockAt(i, manifest.capacity, manifest.blockSize);
          const id = manifest.blocks[i]!;
          const buf = id === null ? null : (pool.pop() ?? Buffer.allocUnsafeSlow(manifest.blockSize + ChunkCodec.OVERHEAD));
          try {
            const data = buf === null ? zeros.subarray(0, ref.length) : await repo.readChunk(id!, true, buf);
            await image.write(ref.offset, data);
          } finally {
            if (buf) pool.push(buf);
          }
          result.writtenBytes += ref.length;
          result.writtenBlocks++;
          options.onBlock?.(ref.length, true);
        }, concurrency),
        ignoreElements(),
        defaultIfEmpty(undefined),
      ),
    );
    await image.commit();
  } catch (err) {
    await image.abandon();
    throw err;
  }
  result.durationMs = Date.now() - started;
  return result;
}
