import { lastValueFrom, tap, ignoreElements, defaultIfEmpty } from 'rxjs';
import type { Source } from '../sources/Source.ts';
import type { Repository } from '../repo/Repository.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { syncVm, type VmSyncOptions } from './syncVm.ts';
import type { SyncEvent } from './SyncEvent.ts';

export interface VmSyncResult {
  vm: string;
  snapshotId: string;
  versions: Manifest[];
  failed: Array<{ disk: string; error: Error }>;
  durationMs: number;
}

/**
 * Runs syncVm to its end and gathers what it did; `onEvent` sees every event (progress).
 * `signal` aborts it: work stops, and the promise rejects with INTERRUPTED only once the
 * snapshot is released and the lock dropped (an embedder may exit right after).
 */
export async function runVmSync(
  source: Source,
  vm: string,
  repo: Repository,
  options: VmSyncOptions = {},
  onEvent?: (event: SyncEvent) => void,
  signal?: AbortSignal,
): Promise<VmSyncResult> {
  const started = Date.now();
  const stop = signal && options.signal ? AbortSignal.any([signal, options.signal]) : (signal ?? options.signal);
  const result: VmSyncResult = { vm, snapshotId: '', versions: [], failed: [], durationMs: 0 };
  await lastValueFrom(
    syncVm(source, vm, repo, { ...options, signal: stop }).pipe(
      tap((event) => {
        if (event.type === 'snapshot') result.snapshotId = event.snapshotId;
        else if (event.type === 'disk-done') result.versions.push(event.manifest);
        else if (event.type === 'disk-failed') result.failed.push({ disk: event.disk, error: event.error });
        onEvent?.(event);
      }),
      ignoreElements(),
      defaultIfEmpty(undefined),
    ),
  );
  result.durationMs = Date.now() - started;
  return result;
}
