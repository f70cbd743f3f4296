import { concat, defer, EMPTY, exhaustMap, filter, finalize, from, interval, map, merge, mergeMap, ReplaySubject, takeUntil, type Observable } from 'rxjs';
import type { DiskInfo, Snapshot } from '../sources/Source.ts';
import type { Repository } from '../repo/Repository.ts';
import { MANIFEST_FORMAT, type Manifest, type VersionStats } from '../repo/Manifest.ts';
import type { ChunkId } from '../repo/ChunkId.ts';
import { newVersionId } from '../repo/VersionId.ts';
import { JOURNAL_FORMAT, type Journal, type JournalHeader } from '../repo/Journal.ts';
import { resumeJournal } from './resumeJournal.ts';
import type { Lease, LeaseFence } from '../repo/Lease.ts';
import { ChunkCodec } from '../repo/ChunkCodec.ts';
import { HamalError } from '../errors.ts';
import { blockCount, type BlockRef } from './BlockRef.ts';
import { toBlocks } from './toBlocks.ts';
import { isZero } from './isZero.ts';
import { Slots } from './Slots.ts';
import { BlockReader } from './BlockReader.ts';
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
  /**
   * Patch blocks whose changed parts cover less than this fraction of them (0..1; config
   * `[hamal] patch_changed_below`): only those parts are read from the source and written
   * over the block's chunk in the parent version, read back from the repository (verified;
   * if it cannot be read, the block is read whole). Costs a chunk read from the repository
   * per such block, and saves the source the rest of the block: worth it where source
   * reads are dear (a hypervisor's datastore over the network), less so where the
   * repository is far. A full sync (the first, or of a disk without change tracking)
   * reads only a block's allocated parts whatever it is, unless it is 0, which always
   * reads whole blocks; `full` and a full sync forced by a tracking fault always read
   * touched blocks whole.
   * @default 0.5
   */
  patchBelow?: number;
}

interface BlockOutcome {
  ref: BlockRef;
  id: ChunkId | null;
  stored: boolean;
  note?: string;
}

/** What syncDisk found before reading: the parent, what to diff against, the journal to resume. */
interface DiskPlan {
  parent: Manifest | null;
  sameSize: boolean;
  since: string | null;
  sinceNote?: string;
  /** The full sync answers a tracker that may have missed writes: its allocation report is not trusted either. */
  distrust: boolean;
  fence?: LeaseFence;
  journal: Journal | null;
  resumed: Map<number, ChunkId | null>;
  journalNotes: string[];
  partial: boolean;
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
  return defer(() => from(planDisk(vm, snapshot, disk, repo, options))).pipe(mergeMap((plan) => new DiskSync(vm, snapshot, disk, repo, options, plan).run()));
}

/** The parent version, whether the disk is read incrementally, the fence and the journal. */
async function planDisk(vm: string, snapshot: Snapshot, disk: DiskInfo, repo: Repository, options: DiskSyncOptions): Promise<DiskPlan> {
  const latest = await repo.latestVersion(vm, disk.id);
  const parent = latest ? await repo.readManifest(vm, disk.id, latest) : null;
  const sameSize = parent !== null && parent.capacity === disk.capacity;
  const { since, sinceNote, distrust } = await chooseSince(snapshot, disk, parent, sameSize, options.full === true);
  const fence = options.lease ? repo.fence(vm, disk.id, options.lease) : undefined;
  await fence?.claim();
  if (!options.journalDir) return { parent, sameSize, since, sinceNote, distrust, fence, journal: null, resumed: new Map(), journalNotes: [], partial: false };
  const header: JournalHeader = {
    format: JOURNAL_FORMAT,
    repository: repo.config.id,
    vm,
    disk: disk.id,
    capacity: disk.capacity,
    blockSize: repo.blockSize,
    parent: parent?.version ?? null,
    since,
    snapshotId: snapshot.id,
    changeId: disk.changeId,
    generation: repo.openGeneration,
  };
  const partialIndexes = (options.partialIndexSeconds ?? 60) > 0;
  const { journal, resumed, notes: journalNotes, partial } = await resumeJournal(options.journalDir, header, snapshot, disk, repo, partialIndexes);
  return { parent, sameSize, since, sinceNote, distrust, fence, journal, resumed, journalNotes, partial };
}

/** The run of one planned disk sync: its block map and stats as blocks land, the fsync stream, the commit. */
class DiskSync {
  private readonly blockSize: number;
  private readonly readers: Slots;
  private readonly writers: Slots;
  private readonly partialMs: number;
  /** The parent's block map when its blocks compare with this version's (same capacity). */
  private readonly parentBlocks: Array<ChunkId | null> | null;
  private readonly blocks: Array<ChunkId | null>;
  private readonly stats: VersionStats;
  private readonly journal: Journal | null;
  private readonly reader: BlockReader;
  private readonly pool: BufferPool;
  /** Aborted when the sync is stopped: blocks in flight skip their CPU-release pause. */
  private readonly stopping = new AbortController();
  /** This sync's blocks in flight, which a stopped sync lets settle before its last checkpoint. */
  private readonly mine = new Set<Promise<unknown>>();
  private readonly started = Date.now();
  private inFlight = 0;
  private lastPartial = Date.now();
  private partial: boolean;
  private committed = false;

  constructor(
    private readonly vm: string,
    private readonly snapshot: Snapshot,
    private readonly disk: DiskInfo,
    private readonly repo: Repository,
    private readonly options: DiskSyncOptions,
    private readonly plan: DiskPlan,
  ) {
    this.blockSize = repo.blockSize;
    this.readers = new Slots(options.readers ?? 2, 'readers');
    this.writers = new Slots(options.writers ?? 4, 'writers');
    this.partialMs = (options.partialIndexSeconds ?? 60) * 1000;
    this.journal = plan.journal;
    this.partial = plan.partial;
    const { parent, since, sameSize } = plan;
    this.parentBlocks = sameSize ? parent!.blocks : null;
    // Incremental: blocks no extent touches keep the parent's entry. Full: they are holes.
    this.blocks = since !== null ? parent!.blocks.slice() : new Array(blockCount(disk.capacity, this.blockSize)).fill(null);
    this.stats = { readBytes: 0, changedBytes: 0, storedBytes: 0, writtenBytes: 0, dedupBytes: 0, zeroBytes: 0, resumedBytes: 0, parentReadBytes: 0, durationMs: 0 };
    if (parent && since === null) this.stats.fullReason = plan.sinceNote ?? 'the parent has no changeId to diff against';
    for (const [index, id] of plan.resumed) {
      this.blocks[index] = id;
      this.stats.resumedBytes! += Math.min(this.blockSize, disk.capacity - index * this.blockSize);
    }
    // Room for a chunk's envelope: the base of a patched block is read into the buffer.
    this.pool = new BufferPool(this.blockSize + ChunkCodec.OVERHEAD);
    this.reader = new BlockReader({
      snapshot,
      disk,
      repo,
      base: since !== null ? parent!.blocks : null,
      // A full sync forced by a tracking fault or `--full` is the answer to a tracker that
      // may have missed writes: its allocation report is not trusted to the byte either, so
      // touched blocks are read whole. A disk that never had tracking keeps its parts.
      patchBelow: plan.distrust ? 0 : options.patchBelow ?? 0.5,
      readers: this.readers,
      msPerMb: options.releaseCpuMsPerMb ?? 0,
      stopping: this.stopping.signal,
    });
  }

  run(): Observable<SyncEvent> {
    // Replayed: blocks$ may complete before the checkpoint timer subscribes (an empty disk,
    // a synchronous source), which would then never stop.
    const done$ = new ReplaySubject<void>(1);
    const blocks$ = this.blocks$().pipe(finalize(() => done$.next()));
    return concat([this.startEvent()], merge(blocks$, this.checkpoints$(done$)), defer(() => this.commit())).pipe(finalize(() => this.stopped()));
  }

  private startEvent(): SyncEvent {
    const { parent, since, sinceNote, journalNotes, resumed } = this.plan;
    return {
      type: 'disk-start',
      disk: this.disk.id,
      capacity: this.disk.capacity,
      parent: parent?.version ?? null,
      incremental: since !== null,
      resumedBlocks: resumed.size,
      notes: [
        ...(sinceNote ? [sinceNote] : []),
        ...journalNotes,
        ...(resumed.size ? [`resuming an interrupted sync: ${resumed.size} blocks already stored`] : []),
      ],
    };
  }

  private blocks$(): Observable<SyncEvent> {
    const { resumed, since } = this.plan;
    return this.snapshot.changes(this.disk, since).pipe(
      toBlocks(this.blockSize, this.disk.capacity, `disk ${this.disk.id}`),
      filter((ref) => !resumed.has(ref.index)),
      mergeMap((ref) => defer(() => this.track(this.block(ref))), this.readers.size + this.writers.size),
      map((o): SyncEvent => {
        this.blocks[o.ref.index] = o.id;
        const { index, offset, length } = o.ref;
        return { type: 'block', disk: this.disk.id, index, offset, bytes: length, stored: o.stored, ...(o.note ? { note: o.note } : {}) };
      }),
    );
  }

  /** Read, zero test, digest, store unless the repository has it; journaled before it counts. */
  private async block(ref: BlockRef): Promise<BlockOutcome> {
    const { stats, journal } = this;
    this.hold(ref.length);
    const buf = this.pool.take();
    try {
      const { data, sourceBytes, baseBytes, note } = await this.reader.read(ref, buf);
      stats.readBytes += sourceBytes;
      stats.parentReadBytes! += baseBytes;
      failpoint('block.read');
      if (isZero(data)) {
        journal?.record(ref.index, null);
        return { ref, id: null, stored: false, note };
      }
      const id = await this.repo.hashChunk(data);
      // A block equal to the parent's is in the repository (format invariant 3).
      const same = this.parentBlocks !== null && this.parentBlocks[ref.index] === id;
      const write = same ? null : await this.writers.use(() => this.repo.storeChunk(id, data));
      const stored = write?.outcome === 'stored';
      if (stored) {
        failpoint('chunk.stored');
        stats.storedBytes += ref.length;
        stats.writtenBytes! += write.writtenBytes;
      } else stats.dedupBytes += ref.length;
      // Journaled here, not downstream: a block still in flight when the sync is stopped
      // completes and is recorded before the last checkpoint (see stopped()).
      journal?.record(ref.index, id);
      return { ref, id, stored, note };
    } finally {
      this.pool.give(buf);
      this.hold(-ref.length);
    }
  }

  private hold(bytes: number): void {
    this.inFlight += bytes;
    this.options.onInFlight?.(this.inFlight);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.options.inflight?.add(p);
    this.mine.add(p);
    const done = () => {
      this.options.inflight?.delete(p);
      this.mine.delete(p);
    };
    p.then(done, done);
    return p;
  }

  /** The fsync stream: a checkpoint every period, never two at once, until `done$`. */
  private checkpoints$(done$: Observable<void>): Observable<SyncEvent> {
    if (!this.journal) return EMPTY;
    return interval((this.options.checkpointSeconds ?? 3) * 1000).pipe(takeUntil(done$), exhaustMap(() => defer(() => this.checkpoint())));
  }

  /** Every partialIndexSeconds the checkpointed journal also goes to the repository. */
  private async checkpoint(): Promise<SyncEvent> {
    const journal = this.journal!;
    const timeoutMs = (this.options.checkpointTimeoutSeconds ?? 0) * 1000;
    const work = journal.checkpoint(() => this.repo.store.flush()).then(() => {
      if (this.partialMs > 0 && Date.now() - this.lastPartial >= this.partialMs) return this.putPartial();
    });
    if (timeoutMs > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const expired = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new HamalError('FSYNC_TIMEOUT', `disk ${this.disk.id}: a checkpoint took longer than fsync_timeout (${timeoutMs / 1000} s)`, { subject: journal.path, retryable: true })),
          timeoutMs,
        );
      });
      await Promise.race([work, expired]).finally(() => clearTimeout(timer));
    } else await work;
    return { type: 'checkpoint', disk: this.disk.id, records: journal.records };
  }

  private async putPartial(): Promise<void> {
    this.lastPartial = Date.now();
    await this.plan.fence?.check();
    await this.repo.putPartial(this.vm, this.disk.id, await this.journal!.checkpointed());
    this.partial = true;
  }

  /** The manifest of the new version, made visible; then the journal and partial index go. */
  private async commit(): Promise<SyncEvent> {
    const { disk, blockSize, stats, blocks, plan } = this;
    for (let i = 0; i < blocks.length; i++) {
      if (blocks[i] === null) stats.zeroBytes += Math.min(blockSize, disk.capacity - i * blockSize);
    }
    stats.changedBytes = changedBytes(blocks, this.parentBlocks, disk.capacity, blockSize);
    stats.durationMs = Date.now() - this.started;
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      vm: this.vm,
      disk: disk.id,
      version: newVersionId(),
      parent: plan.parent?.version ?? null,
      createdAt: new Date().toISOString(),
      capacity: disk.capacity,
      blockSize,
      source: { platform: this.snapshot.platform, snapshotId: this.snapshot.id, changeId: disk.changeId },
      stats,
      blocks,
    };
    await this.repo.commitVersion(manifest, plan.fence);
    failpoint('manifest.written');
    await this.journal?.remove();
    if (this.partial) await this.repo.deletePartial(this.vm, disk.id);
    this.committed = true;
    return { type: 'disk-done', disk: disk.id, manifest };
  }

  /**
   * Stopped or failed: once the blocks in flight settle (at most readers + writers), a last
   * checkpoint (and partial index, unless fenced off) makes every block stored so far
   * resumable, here or on another proxy.
   */
  private stopped(): void {
    this.stopping.abort();
    const j = this.journal;
    if (!j || this.committed) return;
    const last = Promise.allSettled([...this.mine])
      .then(() => j.checkpoint(() => this.repo.store.flush()))
      .then(() => (this.partialMs > 0 ? this.putPartial() : undefined))
      .catch(() => {})
      .finally(() => j.close());
    trackRelease(last);
  }
}

/**
 * Whether the disk is read incrementally: `since` is the parent's changeId when changes
 * since it can be asked for; otherwise null, and `sinceNote` says why (for the log and
 * the version's stats) when a parent exists.
 */
async function chooseSince(snapshot: Snapshot, disk: DiskInfo, parent: Manifest | null, sameSize: boolean, full: boolean): Promise<{ since: string | null; sinceNote?: string; distrust: boolean }> {
  if (full) return { since: null, sinceNote: parent ? 'a full sync was requested (--full, or the task\'s "full")' : undefined, distrust: true };
  if (!parent) return { since: null, distrust: false };
  if (!sameSize) return { since: null, sinceNote: `capacity changed from ${parent.capacity} to ${disk.capacity} bytes since version ${parent.version}: full sync`, distrust: false };
  const since = parent.source.changeId && disk.changeId ? parent.source.changeId : null;
  // Tracking the parent had and this snapshot lacks is a tracking fault; none ever is not.
  if (since === null) return parent.source.changeId ? { since: null, sinceNote: 'the disk has no changeId in this snapshot: full sync', distrust: true } : { since: null, distrust: false };
  const why = snapshot.checkSince ? await snapshot.checkSince(disk, since) : null;
  return why ? { since: null, sinceNote: `${why}: full sync`, distrust: true } : { since, distrust: false };
}

/** Bytes of blocks whose content differs from the parent's; all data bytes without a comparable parent. */
function changedBytes(blocks: Array<ChunkId | null>, parent: Array<ChunkId | null> | null, capacity: number, blockSize: number): number {
  let bytes = 0;
  blocks.forEach((id, i) => {
    if (parent ? parent[i] !== id : id !== null) bytes += Math.min(blockSize, capacity - i * blockSize);
  });
  return bytes;
}
