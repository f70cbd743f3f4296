import { promises as fsp, constants } from 'node:fs';
import { VmLog } from '../log/VmLog.ts';
import { rotationOf } from '../log/LogFile.ts';
import { parseLocalDisk } from '../sources/local/LocalDisk.ts';
import type { VmSyncResult } from '../streams/runVmSync.ts';
import { executeTask } from '../tasks/executeTask.ts';
import { releasing } from '../streams/usingResource.ts';
import type { SyncEvent } from '../streams/SyncEvent.ts';
import { UsageError, describeError } from '../errors.ts';
import type { LoadedConfig } from '../config/loadConfig.ts';
import { loadTask } from '../tasks/loadTask.ts';
import type { Task } from '../tasks/Task.ts';
import { log } from '../log/Logger.ts';
import { logSyncEvent } from '../log/logSyncEvent.ts';
import { formatBytes, formatRate, formatTable } from './format.ts';
import { Progress } from './Progress.ts';

export interface SyncCommandOptions {
  task?: string;
  vm?: string;
  disk?: string[];
  target?: string;
  readers?: number;
  writers?: number;
  parallelDisks?: number;
  blockSize?: number;
  full?: boolean;
  json?: boolean;
}

/** `hamal sync`: one VM, from flags or a task file, into the target. Returns the exit code. */
export async function syncCommand(opts: SyncCommandOptions, config: LoadedConfig): Promise<number> {
  const task = opts.task ? await loadTask(opts.task) : undefined;
  if (task && (opts.vm || opts.disk?.length)) {
    throw new UsageError('USAGE', 'give either --task or --vm/--disk, not both');
  }
  if (!task && (!opts.vm || !opts.disk?.length)) {
    throw new UsageError('USAGE', 'sync needs --task FILE, or --vm NAME with at least one --disk');
  }
  const vm = task?.source.vm ?? opts.vm!;
  const runnable: Task = task ?? { version: 1, source: { platform: 'local', vm, disks: opts.disk!.map((d) => parseLocalDisk(d)) } };
  const progress = new Progress(!opts.json);
  const sub = log.child('sync');
  const onEvent = (e: SyncEvent) => {
    progress.onSyncEvent(e);
    logSyncEvent(e);
  };
  // SIGTERM/SIGINT: stop reading, remove the snapshot, drop the lock, then exit.
  const abort = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled = sig;
    sub.warn(`${sig}: stopping; the snapshot and the repository lock are being released`);
    abort.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  // The VM's own log, as serve writes it, when the log directory exists (an installed proxy).
  const c = config.values;
  const vmLog = (await fsp.access(c.hamal.log_dir, constants.W_OK).then(() => true, () => false))
    ? new VmLog(c.hamal.log_dir, vm, rotationOf(c.DEFAULT))
    : undefined;
  const withVmLog = <T>(fn: () => Promise<T>) => (vmLog ? vmLog.run(fn) : fn());
  let result;
  try {
    result = await withVmLog(() =>
      executeTask(runnable, config, {
        label: opts.task ? `task ${opts.task}` : `VM ${vm}`,
        overrides: { target: opts.target, readers: opts.readers, writers: opts.writers, parallelDisks: opts.parallelDisks, blockSize: opts.blockSize, full: opts.full },
        onEvent: (e) => {
          if (e.type === 'snapshot') vmLog?.identify(e.vmInfo.name, e.vmInfo.id);
          onEvent(e);
        },
        signal: abort.signal,
      }),
    );
    if (vmLog) await withVmLog(async () => sub.info(`VM ${vm}: sync ${result!.failed.length ? 'failed' : 'succeeded'}`));
  } catch (err) {
    if (vmLog) await withVmLog(async () => sub.error(`VM ${vm}: sync failed: ${describeError(err)}`));
    progress.stop();
    if (!signalled) throw err;
    await Promise.allSettled([...releasing]);
    sub.error(`sync of VM ${vm} interrupted by ${signalled}; no version was committed for the disks in progress`);
    return signalled === 'SIGINT' ? 130 : 143;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await vmLog?.close();
  }
  progress.stop();
  if (opts.json) process.stdout.write(JSON.stringify(syncSummary(result), null, 2) + '\n');
  else process.stdout.write(syncTable(result) + '\n');
  for (const f of result.failed) sub.error(`disk ${f.disk} failed: ${describeError(f.error)}`);
  return result.failed.length ? 1 : 0;
}

export function syncSummary(result: VmSyncResult) {
  return {
    vm: result.vm,
    snapshotId: result.snapshotId,
    durationMs: result.durationMs,
    disks: result.versions.map((m) => ({ disk: m.disk, version: m.version, parent: m.parent, capacity: m.capacity, ...m.stats })),
    failed: result.failed.map((f) => ({ disk: f.disk, error: describeError(f.error) })),
  };
}

export function syncTable(result: VmSyncResult): string {
  // stored: the blocks' own size; written: what they took on the target (compressed, sealed).
  const rows = [['disk', 'version', 'capacity', 'read', 'changed', 'stored', 'written', 'dedup', 'zero', 'time', 'rate']];
  for (const m of result.versions) {
    const s = m.stats;
    rows.push([
      m.disk,
      m.version,
      formatBytes(m.capacity),
      formatBytes(s.readBytes),
      formatBytes(s.changedBytes),
      formatBytes(s.storedBytes),
      s.writtenBytes === undefined ? '-' : formatBytes(s.writtenBytes),
      formatBytes(s.dedupBytes),
      formatBytes(s.zeroBytes),
      `${s.durationMs} ms`,
      formatRate(s.readBytes, s.durationMs),
    ]);
  }
  return formatTable(rows);
}

