import { catchError, concat, defer, from, ignoreElements, mergeMap, Observable, of } from 'rxjs';
import { RepositoryLock, type LockOptions } from '../repo/RepositoryLock.ts';
import type { Source } from '../sources/Source.ts';
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
  /** Only these disk ids; all disks when absent. */
  disks?: readonly string[];
  /**
   * The shared repository lock held for the whole sync (a prune elsewhere waits for it);
   * `false`: none, for a repository no prune touches meanwhile.
   * @default {}
   */
  lock?: LockOptions | false;
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
  const sync$ = defer(() => from(source.snapshot(vm))).pipe(
    mergeMap((snapshot) => {
      const inflight = new Set<Promise<unknown>>();
      let released: Promise<void> | undefined;
      const release = () =>
        (released ??= Promise.allSettled([...inflight]).then(() => snapshot.release()));
      const wanted = options.disks ? new Set(options.disks) : null;
      if (wanted) {
        const unknown = [...wanted].filter((id) => !snapshot.disks.some((d) => d.id === id));
        if (unknown.length) {
          return concat(
            defer(release).pipe(ignoreElements()),
            defer(() => {
              throw new RangeError(`VM ${vm} has no disk ${unknown.join(', ')}; it has ${snapshot.disks.map((d) => d.id).join(', ')}`);
            }),
          );
        }
      }
      const disks = snapshot.disks.filter((d) => !wanted || wanted.has(d.id));
      const head: SyncEvent = {
        type: 'snapshot',
        vm,
        snapshotId: snapshot.id,
        disks: disks.map((d) => ({ id: d.id, capacity: d.capacity })),
      };
      const perDisk = from(disks).pipe(
        mergeMap(
          (disk) =>
            syncDisk(vm, snapshot, disk, repo, { ...options, inflight }).pipe(
              catchError((error: Error) => of<SyncEvent>({ type: 'disk-failed', disk: disk.id, error })),
            ),
          parallelDisks,
        ),
      );
      return concat(of(head), perDisk, defer(release).pipe(ignoreElements())).pipe(
        catchError((err) => concat(defer(release).pipe(ignoreElements()), defer(() => Promise.reject(err)))),
        // Unsubscribed early: still release, once everything in flight has settled.
        (events) =>
          new Observable<SyncEvent>((subscriber) => {
            const sub = events.subscribe(subscriber);
            return () => {
              sub.unsubscribe();
              void release().catch(() => {});
            };
          }),
      );
    }),
  );
  if (options.lock === false) return sync$;
  const lockOptions = { ...options.lock, purpose: `sync of VM ${vm}` };
  return defer(() => from(RepositoryLock.acquire(repo.store, 'shared', lockOptions))).pipe(
    mergeMap((lock) => {
      const release = defer(() => lock.release()).pipe(ignoreElements());
      return concat(sync$, release).pipe(
        catchError((err) => concat(release, defer(() => Promise.reject(err)))),
        (events) =>
          new Observable<SyncEvent>((subscriber) => {
            const sub = events.subscribe(subscriber);
            return () => {
              sub.unsubscribe();
              void lock.release().catch(() => {});
            };
          }),
      );
    }),
  );
}