import { LocalSource } from '../sources/local/LocalSource.ts';
import { VmwareSource } from '../sources/vmware/VmwareSource.ts';
import type { Source } from '../sources/Source.ts';
import { resolveSecret } from '../tasks/resolveSecret.ts';
import { parseLocalDisk } from '../sources/local/LocalDisk.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { runVmSync, type VmSyncResult } from '../streams/runVmSync.ts';
import { releasing } from '../streams/usingResource.ts';
import type { SyncEvent } from '../streams/SyncEvent.ts';
import { HamalError, UsageError, describeError } from '../errors.ts';
import type { LoadedConfig } from '../config/loadConfig.ts';
import { loadTask } from '../tasks/loadTask.ts';
import type { Task } from '../tasks/Task.ts';
import { log } from '../log/Logger.ts';
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
  const { source, disks, releaseCpuMsPerMb } = task
    ? await taskSource(task, opts.task!, config)
    : { source: new LocalSource({ vms: { [vm]: opts.disk!.map(parseLocalDisk) } }), disks: undefined, releaseCpuMsPerMb: config.values.hamal.local_release_cpu_time };
  const target = opts.target ?? task?.target ?? (config.values.hamal.target || undefined);
  if (!target) throw new UsageError('USAGE', 'no target: give --target, a "target" in the task, or [hamal] target in hamal.conf');
  const c = config.values;
  const readers = opts.readers ?? task?.options?.readers ?? c.data_sync_v2.pre_disk_readers_count;
  if (readers > c.data_sync_v2.max_pre_disk_readers_count) {
    throw new UsageError('USAGE', `readers ${readers} exceeds max_pre_disk_readers_count (${c.data_sync_v2.max_pre_disk_readers_count})`);
  }
  const parallelDisks = opts.parallelDisks ?? task?.options?.parallelDisks ?? c.data_sync_v2.parallel_sync_disks_count;
  if (parallelDisks > c.data_sync_v2.max_parallel_sync_disks_count) {
    throw new UsageError('USAGE', `parallel disks ${parallelDisks} exceeds max_parallel_sync_disks_count (${c.data_sync_v2.max_parallel_sync_disks_count})`);
  }
  const writers = opts.writers ?? task?.options?.writers ?? c.hamal.writers_per_disk;
  const blockSize = opts.blockSize ?? (task?.options?.blockSizeMb ?? c.hamal.block_size_mb) * 1024 * 1024;

  const store = await openStore(target, { create: true, config: c });
  try {
    const repo = await Repository.open(store, { create: true, blockSize });
    const progress = new Progress(!opts.json);
    const sub = log.child('sync');
    sub.info(`syncing ${source.platform} VM ${vm} to ${store.location}`, { readers, writers, parallelDisks });
    const onEvent = (e: SyncEvent) => {
      progress.onSyncEvent(e);
      logEvent(e);
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
    let result;
    try {
      result = await runVmSync(
      source,
      vm,
      repo,
      {
        readers,
        writers,
        parallelDisks,
        journalDir: c.DEFAULT.hamal_lib_dir,
        checkpointSeconds: c.data_sync_v2.fsync_period_frequency,
        checkpointTimeoutSeconds: c.data_sync_v2.fsync_timeout,
        releaseCpuMsPerMb,
        disks,
        lock: { ttlSeconds: c.hamal.lock_ttl, clockSkewSeconds: c.hamal.lock_clock_skew },
        metadata: {
          upload: c.sync.upload_metadata_to_oss,
          localDir: c.sync.save_local_snapshot_metadata ? c.DEFAULT.hamal_lib_dir : undefined,
        },
      },
      onEvent,
      abort.signal,
    );
    } catch (err) {
      if (!signalled) throw err;
      progress.stop();
      await Promise.allSettled([...releasing]);
      sub.error(`sync of VM ${vm} interrupted by ${signalled}; no version was committed for the disks in progress`);
      return signalled === 'SIGINT' ? 130 : 143;
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    }
    progress.stop();
    if (opts.json) process.stdout.write(JSON.stringify(syncSummary(result), null, 2) + '\n');
    else process.stdout.write(syncTable(result) + '\n');
    for (const f of result.failed) sub.error(`disk ${f.disk} failed: ${describeError(f.error)}`);
    return result.failed.length ? 1 : 0;
  } finally {
    await store.close();
  }
}

function logEvent(e: SyncEvent): void {
  const sub = log.child('sync');
  if (e.type === 'disk-start') {
    sub.verbose(`disk ${e.disk}: ${e.incremental ? 'incremental' : 'full'} sync started`, { capacity: e.capacity, parent: e.parent ?? undefined });
    for (const note of e.notes) sub.warn(`disk ${e.disk}: ${note}`);
  } else if (e.type === 'block') {
    if (sub.enabled('debug')) sub.debug(`disk ${e.disk}: block ${e.index}`, { offset: e.offset, bytes: e.bytes, stored: e.stored });
  } else if (e.type === 'metadata') {
    sub.verbose(`VM ${e.vm}: metadata saved`, { key: e.key, path: e.path });
  } else if (e.type === 'checkpoint') {
    sub.debug(`disk ${e.disk}: checkpoint`, { blocks: e.records });
  } else if (e.type === 'disk-done') {
    const s = e.manifest.stats;
    sub.info(`disk ${e.disk}: version ${e.manifest.version} committed`, {
      read: s.readBytes,
      changed: s.changedBytes,
      stored: s.storedBytes,
      ms: s.durationMs,
    });
  }
}

/** The source a task names, with its disk selection and the throttle of its platform. */
async function taskSource(task: Task, file: string, config: LoadedConfig): Promise<{ source: Source; disks?: string[]; releaseCpuMsPerMb: number }> {
  const c = config.values;
  const src = task.source;
  if (src.platform === 'local') {
    const disks = (src.disks ?? []) as Array<{ id?: string; path: string }>;
    const local = disks.map((d) => (d.id ? { id: d.id, path: d.path } : parseLocalDisk(d.path)));
    return { source: new LocalSource({ vms: { [src.vm]: local } }), releaseCpuMsPerMb: c.hamal.local_release_cpu_time };
  }
  if (src.platform === 'vmware') {
    const conn = src.connection as { host: string; port?: number; username: string; thumbprint?: string; caFile?: string; transport?: string; quiesce?: boolean };
    const password = await resolveSecret(src.connection!, `task ${file}`);
    return {
      source: new VmwareSource({
        connection: { url: `https://${conn.host}${conn.port ? `:${conn.port}` : ''}/sdk`, username: conn.username, password, thumbprint: conn.thumbprint, caFile: conn.caFile, timeoutMs: c.mass.default_request_timeout * 1000 },
        skipDiskFlag: c.vmware.skip_disk_flag,
        diskFlagSizeMb: c.vmware.disk_flag_size,
        maxReadBytes: c.vmware.max_read_blocks * 512,
        transport: conn.transport === 'nbd' ? 'nbd' : 'https',
        quiesce: conn.quiesce === true,
        nbdkitTemplate: c.hamal.vmware_nbdkit_command || undefined,
        workDir: c.DEFAULT.hamal_lib_dir,
      }),
      disks: src.disks as string[] | undefined,
      releaseCpuMsPerMb: c.period.vmware_release_cpu_time,
    };
  }
  throw new HamalError('PLATFORM_UNAVAILABLE', `task ${file}: platform ${src.platform} is not available in this build of hamal`, {
    subject: 'source.platform',
  });
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
  const rows = [['disk', 'version', 'capacity', 'read', 'changed', 'stored', 'dedup', 'zero', 'time', 'rate']];
  for (const m of result.versions) {
    const s = m.stats;
    rows.push([
      m.disk,
      m.version,
      formatBytes(m.capacity),
      formatBytes(s.readBytes),
      formatBytes(s.changedBytes),
      formatBytes(s.storedBytes),
      formatBytes(s.dedupBytes),
      formatBytes(s.zeroBytes),
      `${s.durationMs} ms`,
      formatRate(s.readBytes, s.durationMs),
    ]);
  }
  return formatTable(rows);
}

