import { concat, defer, from, map, mergeMap, type Observable } from 'rxjs';
import type { DiskInfo, Snapshot } from '../sources/Source.ts';
import type { Repository } from '../repo/Repository.ts';
import { MANIFEST_FORMAT, type Manifest, type VersionStats } from '../repo/Manifest.ts';
import { chunkIdOf, type ChunkId } from '../repo/ChunkId.ts';
import { newVersionId } from '../repo/VersionId.ts';
import { blockCount, type BlockRef } from './BlockRef.ts';
import { toBlocks } from './toBlocks.ts';
import { isZero } from './isZero.ts';
import { Slots } from './Slots.ts';
import type { SyncEvent } from './SyncEvent.ts';

export interface DiskSyncOptions {
  /**
   * Reads of one disk at once (seed: `pre_disk_readers_count`). Each holds one block.
   * @default 2
   */
  readers?: number;
  /**
   * Chunk writes of one disk at once. Each holds one block; past 4-8 per target the
   * latency of each write grows faster than throughput.
   * @default 4
   */
  writers?: number;
  /** Every block's promise while it runs, so a failing sync can let them settle before cleanup. */
  inflight?: Set<Promise<unknown>>;
  /** Called with the bytes held by blocks in flight each time it changes (instrumentation). */
  onInFlight?: (bytes: number) => void;
}

interface BlockOutcome {
  ref: BlockRef;
  id: ChunkId | null;
  stored: boolean;
}

/**
 * One disk of a snapshot into one new version: extents -> blocks -> read, digest, store
 * -> manifest. Memory is bounded by (readers + writers) x blockSize: that is the
 * concurrency of the one mergeMap that holds block data, and Slots cap each phase in it.
 */
export function syncDisk(
  vm: string,
  snapshot: Snapshot,
  disk: DiskInfo,
  repo: Repository,
  options: DiskSyncOptions = {},
): Observable<SyncEvent> {
  const readers = new Slots(options.readers ?? 2, 'readers');
  const writers = new Slots(options.writers ?? 4, 'writers');
  const blockSize = repo.blockSize;

  return defer(() =>
    from(repo.latestVersion(vm, disk.id).then((id) => (id ? repo.readManifest(vm, disk.id, id) : null))),
  ).pipe(
    mergeMap((parent) => {
      const started = Date.now();
      const sameSize = parent !== null && parent.capacity === disk.capacity;
      const since = sameSize && parent.source.changeId && disk.changeId ? parent.source.changeId : null;
      const parentBlocks = sameSize ? parent.blocks : null;
      const n = blockCount(disk.capacity, blockSize);
      // Incremental: blocks no extent touches keep the parent's entry. Full: they are holes.
      const blocks: Array<ChunkId | null> = since !== null ? parent!.blocks.slice() : new Array(n).fill(null);
      const stats: VersionStats = { readBytes: 0, changedBytes: 0, storedBytes: 0, dedupBytes: 0, zeroBytes: 0, durationMs: 0 };
      let inFlight = 0;
      const hold = (bytes: number) => {
        inFlight += bytes;
        options.onInFlight?.(inFlight);
      };

      const processBlock = async (ref: BlockRef): Promise<BlockOutcome> => {
        hold(ref.length);
        try {
          const data = await readers.use(() => snapshot.read(disk, ref.offset, ref.length));
          stats.readBytes += ref.length;
          const was = parentBlocks ? parentBlocks[ref.index] : undefined;
          if (isZero(data)) {
            if (was !== undefined && was !== null) stats.changedBytes += ref.length;
            return { ref, id: null, stored: false };
          }
          const id = chunkIdOf(data);
          if (was !== id) stats.changedBytes += ref.length;
          // A block equal to the parent's is in the repository (format invariant 3).
          const stored = was !== id && (await writers.use(() => repo.storeChunk(id, data))) === 'stored';
          if (stored) stats.storedBytes += ref.length;
          else stats.dedupBytes += ref.length;
          return { ref, id, stored };
        } finally {
          hold(-ref.length);
        }
      };

      const track = <T>(p: Promise<T>): Promise<T> => {
        options.inflight?.add(p);
        const done = () => options.inflight?.delete(p);
        p.then(done, done);
        return p;
      };

      const start: SyncEvent = {
        type: 'disk-start',
        disk: disk.id,
        capacity: disk.capacity,
        parent: parent?.version ?? null,
        incremental: since !== null,
        note:
          parent && !sameSize
            ? `capacity changed from ${parent.capacity} to ${disk.capacity} bytes since version ${parent.version}: full sync`
            : undefined,
      };
      const body = snapshot.changes(disk, since).pipe(
        toBlocks(blockSize, disk.capacity),
        mergeMap((ref) => defer(() => track(processBlock(ref))), readers.size + writers.size),
        map((o): SyncEvent => {
          blocks[o.ref.index] = o.id;
          return { type: 'block', disk: disk.id, index: o.ref.index, offset: o.ref.offset, bytes: o.ref.length, stored: o.stored };
        }),
      );
      const commit = defer(async (): Promise<SyncEvent> => {
        for (let i = 0; i < n; i++) {
          if (blocks[i] === null) stats.zeroBytes += Math.min(blockSize, disk.capacity - i * blockSize);
        }
        // Without a comparable parent, all data is new.
        if (!parentBlocks) stats.changedBytes = disk.capacity - stats.zeroBytes;
        stats.durationMs = Date.now() - started;
        const manifest: Manifest = {
          format: MANIFEST_FORMAT,
          vm,
          disk: disk.id,
          version: newVersionId(),
          parent: parent?.version ?? null,
          createdAt: new Date().toISOString(),
          capacity: disk.capacity,
          blockSize,
          source: { platform: snapshot.platform, snapshotId: snapshot.id, changeId: disk.changeId },
          stats,
          blocks,
        };
        await repo.commitVersion(manifest);
        return { type: 'disk-done', disk: disk.id, manifest };
      });
      return concat([start], body, commit);
    }),
  );
}
