import { concat, defer, EMPTY, exhaustMap, filter, finalize, from, interval, map, merge, mergeMap, ReplaySubject, takeUntil, type Observable } from 'rxjs';
import type { DiskInfo, Snapshot } from '../sources/Source.ts';
import type { Repository } from '../repo/Repository.ts';
import { MANIFEST_FORMAT, type Manifest, type VersionStats } from '../repo/Manifest.ts';
import type { ChunkId } from '../repo/ChunkId.ts';
import { newVersionId } from '../repo/VersionId.ts';
import { JOURNAL_FORMAT, type JournalHeader } from '../repo/Journal.ts';
import { resumeJournal } from './resumeJournal.ts';
import type { Lease } from '../repo/Lease.ts';
import { HamalError } from '../errors.ts';
import { blockCount, type BlockRef } from './BlockRef.ts';
import { toBlocks } from './toBlocks.ts';
import { isZero } from './isZero.ts';
import { Slots } from './Slots.ts';
import { sleepForRead } from './releaseCpu.ts';
import { trackRelease } from './usingResource.ts';
import { BufferPool } from './BufferPool.ts';
import { failpoint } from '../failpoints.ts';
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
  /**
   * Where journals of syncs in progress live (seed: `hamal_lib_dir`). Without it there is
   * no journal and a killed sync starts over.
   */
  journalDir?: string;
  /**
   * Seconds between checkpoints of the journal (seed: `fsync_period_frequency`). Each
   * costs an fsync of the journal and of the directories chunks were written to.
   * @default 3
   */
  checkpointSeconds?: number;
  /** Longest one checkpoint may take before the sync fails (seed: `fsync_timeout`); 0 = no limit. @default 0 */
  checkpointTimeoutSeconds?: number;
  /** Pause after each read, in ms per MB (seed: `*_release_cpu_time`); 0 = none. @default 0 */
  releaseCpuMsPerMb?: number;
  /**
   * Seconds between two partial indexes (the checkpointed journal) written to the
   * repository, so another proxy can resume this version without redoing its stored blocks;
   * 0 = none. Each costs one PUT of 36 bytes per block stored so far. Needs `journalDir`.
   * @default 60
   */
  partialIndexSeconds?: number;
  /**
   * The control plane's lease of the task: the disk is claimed for it in the repository,
   * and checked before each partial index and the manifest (fencing; docs/format.md).
   */
  lease?: Lease;
  /** Every block's promise while it runs, so a failing sync can let them settle before cleanup. */
  inflight?: Set<Promise<unknown>>;
  /** Called with the bytes held by blocks in flight each time it changes (instrumentation). */
  onInFlight?: (bytes: number) => void;
  /**
   * Read the disk in full even when changes since its last version could be asked for
   * (`hamal sync --full`, a task's `full`): after a change tracking fault the platform did
   * not report, or when its vendor asks for one. Costs a read of every allocated area.
   * @default false
   */
  full?: boolean;
}

interface BlockOutcome {
  ref: BlockRef;
  id: ChunkId | null;
  stored: boolean;
}

/**
 * One disk of a snapshot into one new version: extents -> blocks -> read, digest, store
 * -> manifest, with a journal checkpointed by a timer so a killed sync resumes.
 *
 * Memory is bounded by (readers + writers) x blockSize: that is the concurrency of the
 * one mergeMap that holds block data, and Slots cap each phase inside it.
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
  const msPerMb = options.releaseCpuMsPerMb ?? 0;
  const partialMs = (options.partialIndexSeconds ?? 60) * 1000;

  const prepare = async () => {
    const latest = await repo.latestVersion(vm, disk.id);
    const parent = latest ? await repo.readManifest(vm, disk.id, latest) : null;
    const sameSize = parent !== null && parent.capacity === disk.capacity;
    const { since, sinceNote } = await chooseSince(snapshot, disk, parent, sameSize, options.full === true);
    const fence = options.lease ? repo.fence(vm, disk.id, options.lease) : undefined;
    await fence?.claim();
    if (!options.journalDir) return { parent, sameSize, since, sinceNote, fence, journal: null, resumed: new Map<number, ChunkId | null>(), journalNotes: [], partial: false };
    const header: JournalHeader = {
      format: JOURNAL_FORMAT,
      repository: repo.config.id,
      vm,
      disk: disk.id,
      capacity: disk.capacity,
      blockSize,
      parent: parent?.version ?? null,
      since,
      snapshotId: snapshot.id,
      changeId: disk.changeId,
      generation: repo.openGeneration,
    };
    const { journal, resumed, notes: journalNotes, partial } = await resumeJournal(options.journalDir, header, snapshot, disk, repo, partialMs > 0);
    return { parent, sameSize, since, sinceNote, fence, journal, resumed, journalNotes, partial };
  };

  return defer(() => from(prepare())).pipe(
    mergeMap(({ parent, sameSize, since, journal, resumed, journalNotes, sinceNote, fence, partial }) => {
      const started = Date.now();
      const parentBlocks = sameSize ? parent!.blocks : null;
      const n = blockCount(disk.capacity, blockSize);
      // Incremental: blocks no extent touches keep the parent's entry. Full: they are holes.
      const blocks: Array<ChunkId | null> = since !== null ? parent!.blocks.slice() : new Array(n).fill(null);
      const stats: VersionStats = { readBytes: 0, changedBytes: 0, storedBytes: 0, writtenBytes: 0, dedupBytes: 0, zeroBytes: 0, resumedBytes: 0, durationMs: 0 };
      if (parent && since === null) stats.fullReason = sinceNote ?? 'the parent has no changeId to diff against';
      for (const [index, id] of resumed) {
        blocks[index] = id;
        stats.resumedBytes! += Math.min(blockSize, disk.capacity - index * blockSize);
      }
      let inFlight = 0;
      const hold = (bytes: number) => {
        inFlight += bytes;
        options.onInFlight?.(inFlight);
      };

      const pool = new BufferPool(blockSize);
      // Aborted when the sync is stopped: blocks in flight skip their CPU-release pause.
      const stopping = new AbortController();
      const processBlock = async (ref: BlockRef): Promise<BlockOutcome> => {
        hold(ref.length);
        const buf = pool.take();
        try {
          const data = await readers.use(async () => {
            const d = await snapshot.read(disk, ref.offset, ref.length, buf);
            await sleepForRead(ref.length, msPerMb, stopping.signal);
            return d;
          });
          stats.readBytes += ref.length;
          failpoint('block.read');
          if (isZero(data)) {
            journal?.record(ref.index, null);
            return { ref, id: null, stored: false };
          }
          const id = await repo.hashChunk(data);
          // A block equal to the parent's is in the repository (format invariant 3).
          const same = parentBlocks !== null && parentBlocks[ref.index] === id;
          const write = same ? null : await writers.use(() => repo.storeChunk(id, data));
          const stored = write?.outcome === 'stored';
          if (stored) {
            failpoint('chunk.stored');
            stats.storedBytes += ref.length;
            stats.writtenBytes! += write.writtenBytes;
          } else stats.dedupBytes += ref.length;
          // Journaled here, not downstream: a block still in flight when the sync is stopped
          // completes and is recorded before the last checkpoint (see finalize below).
          journal?.record(ref.index, id);
          return { ref, id, stored };
        } finally {
          pool.give(buf);
          hold(-ref.length);
        }
      };

      const mine = new Set<Promise<unknown>>();
      const track = <T>(p: Promise<T>): Promise<T> => {
        options.inflight?.add(p);
        mine.add(p);
        const done = () => {
          options.inflight?.delete(p);
          mine.delete(p);
        };
        p.then(done, done);
        return p;
      };

      const start: SyncEvent = {
        type: 'disk-start',
        disk: disk.id,
        capacity: disk.capacity,
        parent: parent?.version ?? null,
        incremental: since !== null,
        resumedBlocks: resumed.size,
        notes: [
          ...(sinceNote ? [sinceNote] : []),
          ...journalNotes,
          ...(resumed.size ? [`resuming an interrupted sync: ${resumed.size} blocks already stored`] : []),
        ],
      };

      // Replayed: blocks$ may complete before the checkpoint timer subscribes (an empty disk,
      // a synchronous source), which would then never stop.
      const done$ = new ReplaySubject<void>(1);
      const blocks$ = snapshot.changes(disk, since).pipe(
        toBlocks(blockSize, disk.capacity),
        filter((ref) => !resumed.has(ref.index)),
        mergeMap((ref) => defer(() => track(processBlock(ref))), readers.size + writers.size),
        map((o): SyncEvent => {
          blocks[o.ref.index] = o.id;
          return { type: 'block', disk: disk.id, index: o.ref.index, offset: o.ref.offset, bytes: o.ref.length, stored: o.stored };
        }),
        finalize(() => done$.next()),
      );
      // The fsync stream: a checkpoint every period, never two at once; every
      // partialIndexSeconds the checkpointed journal also goes to the repository.
      let lastPartial = Date.now();
      const putPartial = async () => {
        lastPartial = Date.now();
        await fence?.check();
        await repo.putPartial(vm, disk.id, await journal!.checkpointed());
        partial = true;
      };
      const checkpoint = async (): Promise<SyncEvent> => {
        const timeoutMs = (options.checkpointTimeoutSeconds ?? 0) * 1000;
        const work = journal!.checkpoint(() => repo.store.flush()).then(() => {
          if (partialMs > 0 && Date.now() - lastPartial >= partialMs) return putPartial();
        });
        if (timeoutMs > 0) {
          let timer: ReturnType<typeof setTimeout> | undefined;
          const expired = new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new HamalError('FSYNC_TIMEOUT', `disk ${disk.id}: a checkpoint took longer than fsync_timeout (${timeoutMs / 1000} s)`, { subject: journal!.path, retryable: true })),
              timeoutMs,
            );
          });
          await Promise.race([work, expired]).finally(() => clearTimeout(timer));
        } else await work;
        return { type: 'checkpoint', disk: disk.id, records: journal!.records };
      };
      const checkpoints$ = journal
        ? interval((options.checkpointSeconds ?? 3) * 1000).pipe(takeUntil(done$), exhaustMap(() => defer(checkpoint)))
        : EMPTY;

      const commit = defer(async (): Promise<SyncEvent> => {
        for (let i = 0; i < n; i++) {
          if (blocks[i] === null) stats.zeroBytes += Math.min(blockSize, disk.capacity - i * blockSize);
        }
        stats.changedBytes = changedBytes(blocks, parentBlocks, disk.capacity, blockSize);
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
        await repo.commitVersion(manifest, fence);
        failpoint('manifest.written');
        await journal?.remove();
        if (partial) await repo.deletePartial(vm, disk.id);
        committed = true;
        return { type: 'disk-done', disk: disk.id, manifest };
      });
      let committed = false;
      return concat([start], merge(blocks$, checkpoints$), commit).pipe(
        finalize(() => {
          stopping.abort();
          if (!journal || committed) return;
          // Stopped or failed: once the blocks in flight settle (at most readers + writers),
          // a last checkpoint (and partial index, unless fenced off) makes every block
          // stored so far resumable, here or on another proxy.
          const j = journal;
          const last = Promise.allSettled([...mine])
            .then(() => j.checkpoint(() => repo.store.flush()))
            .then(() => (partialMs > 0 ? putPartial() : undefined))
            .catch(() => {})
            .finally(() => j.close());
          trackRelease(last);
        }),
      );
    }),
  );
}

/**
 * Whether the disk is read incrementally: `since` is the parent's changeId when changes
 * since it can be asked for; otherwise null, and `sinceNote` says why (for the log and
 * the version's stats) when a parent exists.
 */
async function chooseSince(snapshot: Snapshot, disk: DiskInfo, parent: Manifest | null, sameSize: boolean, full: boolean): Promise<{ since: string | null; sinceNote?: string }> {
  if (!parent) return { since: null };
  if (full) return { since: null, sinceNote: 'a full sync was requested (--full, or the task\'s "full")' };
  if (!sameSize) return { since: null, sinceNote: `capacity changed from ${parent.capacity} to ${disk.capacity} bytes since version ${parent.version}: full sync` };
  const since = parent.source.changeId && disk.changeId ? parent.source.changeId : null;
  if (since === null) return { since: null, sinceNote: parent.source.changeId ? 'the disk has no changeId in this snapshot: full sync' : undefined };
  const why = snapshot.checkSince ? await snapshot.checkSince(disk, since) : null;
  return why ? { since: null, sinceNote: `${why}: full sync` } : { since };
}

/** Bytes of blocks whose content differs from the parent's; all data bytes without a comparable parent. */
function changedBytes(blocks: Array<ChunkId | null>, parent: Array<ChunkId | null> | null, capacity: number, blockSize: number): number {
  let bytes = 0;
  blocks.forEach((id, i) => {
    if (parent ? parent[i] !== id : id !== null) bytes += Math.min(blockSize, capacity - i * blockSize);
  });
  return bytes;
}
