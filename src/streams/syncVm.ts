import { catchError, concat, defer, finalize, from, mergeMap, of, tap, throwError, type Observable } from 'rxjs';
import type { Slots } from './Slots.ts';
import { usingResource } from './usingResource.ts';
import { untilAborted } from './untilAborted.ts';
import { HamalError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { Journal } from '../repo/Journal.ts';
import { RepositoryLock, type LockOptions } from '../repo/RepositoryLock.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { vmMetadata } from './VmMetadata.ts';
import { saveLocalMetadata } from './saveLocalMetadata.ts';
import type { DiskInfo, Snapshot, Source } from '../sources/Source.ts';
import { log } from '../log/Logger.ts';
import type { Repository } from '../repo/Repository.ts';
import { syncDisk, type DiskSyncOptions } from './syncDisk.ts';
import type { SyncEvent } from './SyncEvent.ts';

export interface VmSyncOptions extends Omit<DiskSyncOptions, 'inflight'> {
  /**
   * Disks of the VM synced at once (seed: `parallel_sync_disks_count`). Memory:
   * parallelDisks x (readers + writers) x blockSize at most.
   * @default 4
   */
  parallelDisks?: number;
  /**
   * A cap on disks shared by every VM sync of the process (`serve`: `[hamal]
   * max_running_disks`); each disk waits for a slot before it starts.
   */
  diskSlots?: Slots;
  /** Only these disk ids; all disks when absent. */
  disks?: readonly string[];
  /**
   * The shared repository lock held for the whole sync (a prune elsewhere waits for it);
   * `false`: none, for a repository no prune touches meanwhile.
   * @default {}
   */
  lock?: LockOptions | false;
  /**
   * The VM's metadata (VmMetadata) after its disks: `upload` beside its versions in the
   * repository (seed: `upload_metadata_to_oss`), `localDir` under that directory (seed:
   * `save_local_snapshot_metadata`, with hamal_lib_dir).
   */
  metadata?: { upload?: boolean; localDir?: string };
  /**
   * Stops the sync: reading stops, and the stream errors with INTERRUPTED once the blocks
   * in flight have settled, the snapshot is released and the lock dropped. (Unsubscribing
   * also releases them, but nothing then tells when: see releasesSettled.)
   */
  signal?: AbortSignal;
}

/**
 * One VM: snapshot, then its disks in parallel (each into its own version), then release.
 * A failed disk is reported as `disk-failed` and does not stop the others: each version
 * stands alone. The snapshot is released after every block in flight has settled, on
 * success, failure and unsubscription alike.
 */
export function syncVm(source: Source, vm: string, repo: Repository, options: VmSyncOptions = {}): Observable<SyncEvent> {
  const parallelDisks = options.parallelDisks ?? 4;
  if (!Number.isSafeInteger(parallelDisks) || parallelDisks < 1) {
    throw new RangeError(`parallelDisks must be an integer of at least 1, got ${parallelDisks}`);
  }
  const interrupted = () => new HamalError('INTERRUPTED', `sync of VM ${vm} interrupted`, { subject: vm });
  const sync$ = () => {
    const inflight = new Set<Promise<unknown>>();
    // The snapshot goes once every block in flight has settled.
    const committed: string[] = [];
    const release = (snapshot: Snapshot) =>
      Promise.allSettled([...inflight]).then(() => {
        failpoint('snapshot.release');
        return snapshot.release(committed);
      });
    const take = async () => {
      if (options.signal?.aborted) throw interrupted();
      const reuse = options.journalDir ? await Journal.snapshotIdsOf(options.journalDir, repo.config.id, vm) : [];
      // A version another proxy left in flight resumes here only from the snapshot it read.
      if (options.journalDir && (options.partialIndexSeconds ?? 60) > 0) reuse.push(...(await repo.partialSnapshotIds(vm)));
      const since = source.needsSince ? await newestChangeIds(repo, vm) : undefined;
      const snapshot = await source.snapshot(vm, { reuse: [...new Set(reuse)], since });
      failpoint('snapshot.taken');
      return snapshot;
    };
    return usingResource(take, release, (snapshot) => {
      const wanted = options.disks ? new Set(options.disks) : null;
      const unknown = [...(wanted ?? [])].filter((id) => !snapshot.disks.some((d) => d.id === id));
      if (unknown.length) {
        return throwError(() => new RangeError(`VM ${vm} has no disk ${unknown.join(', ')}; it has ${snapshot.disks.map((d) => d.id).join(', ')}`));
      }
      const disks = snapshot.disks.filter((d) => !wanted || wanted.has(d.id));
      const takenAt = new Date();
      const versions: Manifest[] = [];
      const failed: Array<{ disk: string; error: Error }> = [];
      const head: SyncEvent = {
        type: 'snapshot',
        vm,
        vmInfo: { id: snapshot.vm.id, name: snapshot.vm.name },
        platformInfo: snapshot.info ?? {},
        snapshotId: snapshot.id,
        disks: disks.map((d) => ({ id: d.id, capacity: d.capacity })),
      };
      const perDisk = from(disks).pipe(
        mergeMap(
          (disk) =>
            withSlot(options.diskSlots, () => withDiskDone(snapshot, disk, inflight, () => syncDisk(vm, snapshot, disk, repo, { ...options, inflight }))).pipe(
              catchError((error: Error) => of<SyncEvent>({ type: 'disk-failed', disk: disk.id, error })),
              tap((e) => {
                if (e.type === 'disk-done') {
                  versions.push(e.manifest);
                  committed.push(e.disk);
                }
                else if (e.type === 'disk-failed') failed.push({ disk: e.disk, error: e.error });
              }),
            ),
          diskCap(parallelDisks, snapshot),
        ),
      );
      const metadata = defer(async (): Promise<SyncEvent[]> => {
        const { upload, localDir } = options.metadata ?? {};
        if (!upload && !localDir) return [];
        const doc = vmMetadata(snapshot, versions, failed, takenAt);
        const key = upload ? await repo.putVmMetadata(vm, doc) : undefined;
        const path = localDir ? await saveLocalMetadata(localDir, vm, doc) : undefined;
        return [{ type: 'metadata', vm, key, path }];
      }).pipe(mergeMap((events) => from(events)));
      return concat(of(head), perDisk, metadata).pipe(untilAborted(options.signal, interrupted));
    });
  };
  if (options.lock === false) return sync$();
  const lockOptions = { ...options.lock, purpose: `sync of VM ${vm}` };
  return usingResource(
    async () => {
      if (options.signal?.aborted) throw interrupted();
      return RepositoryLock.acquire(repo.store, 'shared', lockOptions);
    },
    (lock) => lock.release(),
    () => sync$(),
  );
}

/** The changeId of each disk's newest version of `vm`, by disk id (those without one left out). */
async function newestChangeIds(repo: Repository, vm: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const disk of await repo.listDisks(vm).catch(() => [])) {
    // A hint only: a manifest that cannot be read here fails the disk's own sync, not this.
    const changeId = await repo.latestVersion(vm, disk).then((latest) => (latest ? repo.readManifest(vm, disk, latest).then((m) => m.source.changeId) : null), () => null).catch(() => null);
    if (changeId) out[disk] = changeId;
  }
  return out;
}

/** The pipeline's cap, lowered to what the snapshot allows (an integer of at least 1, else ignored). */
function diskCap(parallelDisks: number, snapshot: Snapshot): number {
  const own = snapshot.parallelDisks;
  return own !== undefined && Number.isSafeInteger(own) && own >= 1 ? Math.min(parallelDisks, own) : parallelDisks;
}

/**
 * `body`, then the snapshot's diskDone for `disk` once the blocks in flight have settled
 * (it may close what they read through), on completion, error and unsubscription alike.
 * A diskDone that fails is logged: the disk's outcome stands.
 */
function withDiskDone<T>(snapshot: Snapshot, disk: DiskInfo, inflight: Set<Promise<unknown>>, body: () => Observable<T>): Observable<T> {
  if (!snapshot.diskDone) return defer(body);
  const done = () =>
    Promise.allSettled([...inflight])
      .then(() => snapshot.diskDone!(disk))
      .catch((err: Error) => log.child('sync').warn(`disk ${disk.id}: freeing what its reads held failed: ${err.message}`));
  return usingResource(async () => disk, done, body);
}

/** `make()` once a slot of `slots` is held, the slot given back when it ends (or is unsubscribed). */
function withSlot<T>(slots: Slots | undefined, make: () => Observable<T>): Observable<T> {
  if (!slots) return defer(make);
  return defer(() => {
    let release: (() => void) | undefined;
    let cancelled = false;
    return from(slots.acquire()).pipe(
      mergeMap((r) => {
        release = r;
        if (cancelled) r();
        return make();
      }),
      finalize(() => {
        cancelled = true;
        release?.();
      }),
    );
  });
}
