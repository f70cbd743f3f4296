import { Observable } from 'rxjs';
import { join } from 'node:path';
import type { LoadedConfig } from '../config/loadConfig.ts';
import { describeError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import { logSyncEvent } from '../log/logSyncEvent.ts';
import { VmLog } from '../log/VmLog.ts';
import type { Rotation } from '../log/LogFile.ts';
import type { Slots } from '../streams/Slots.ts';
import { executeTask } from '../tasks/executeTask.ts';
import type { ResultReport } from './ControlPlane.ts';
import type { AcceptedTask } from './SignedTask.ts';
import type { TaskProgress } from './TaskProgress.ts';
import { recordIpMapping } from './IpMapping.ts';

/**
 * Runs service tasks for real: executeTask inside the VM's own log, progress folded from
 * its events, the VM's NICs recorded in ip_mapping.backup. Unsubscribing aborts the sync
 * (the snapshot is removed, the journal kept for the next run).
 */
export function taskRunner(config: LoadedConfig, logDir: string, rotation: Rotation, diskSlots?: Slots, proxyId = ''): (t: AcceptedTask, progress: TaskProgress) => Observable<ResultReport> {
  return (t, progress) =>
    new Observable<ResultReport>((subscriber) => {
      const abort = new AbortController();
      const vmLog = new VmLog(logDir, t.task.source.vm, rotation);
      let nics: unknown;
      let vmName = t.task.source.vm;
      const base = { taskId: t.id, vm: t.task.source.vm };
      vmLog
        .run(() =>
          executeTask(t.task, config, {
            label: `task ${t.id}`,
            signal: abort.signal,
            diskSlots,
            lease: t.lease ? { taskId: t.id, epoch: t.lease.epoch, holder: proxyId } : undefined,
            onEvent: (e) => {
              progress.onEvent(e);
              logSyncEvent(e);
              if (e.type === 'snapshot') {
                vmLog.identify(e.vmInfo.name, e.vmInfo.id);
                vmName = e.vmInfo.name;
                nics = e.platformInfo.nics;
              }
            },
          }),
        )
        .then(
          async (r): Promise<ResultReport> => {
            await recordIpMapping(join(logDir, 'ip_mapping.backup'), vmName, nics).catch(() => {});
            return {
              ...base,
              state: r.failed.length ? 'failed' : 'succeeded',
              error: r.failed.length ? `${r.failed.length} disk(s) failed: ${r.failed.map((f) => `${f.disk}: ${describeError(f.error)}`).join('; ')}` : undefined,
              versions: r.versions.map((m) => ({ disk: m.disk, version: m.version, parent: m.parent, readBytes: m.stats.readBytes, storedBytes: m.stats.storedBytes, writtenBytes: m.stats.writtenBytes ?? m.stats.storedBytes, resumedBytes: m.stats.resumedBytes ?? 0 })),
              failedDisks: r.failed.map((f) => ({ disk: f.disk, error: describeError(f.error) })),
              at: new Date().toISOString(),
            };
          },
          (err): ResultReport => ({ ...base, state: abort.signal.aborted ? 'interrupted' : 'failed', error: describeError(err), at: new Date().toISOString() }),
        )
        .then(async (r) => {
          // The VM's log ends with the outcome, so the log alone tells whether the sync
          // succeeded; the service's own log gets its line from Service.
          vmLog.note(log.child('task').line(r.state === 'succeeded' ? 'info' : 'error', `task ${t.id}: VM ${vmName} ${r.state}${r.error ? `: ${r.error}` : ''}`));
          await vmLog.close();
          subscriber.next(r);
          subscriber.complete();
        });
      return () => abort.abort();
    });
}
