import { LocalSource } from '../sources/local/LocalSource.ts';
import { parseLocalDisk } from '../sources/local/LocalDisk.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { runVmSync, type VmSyncResult } from '../streams/runVmSync.ts';
import type { VmSyncOptions } from '../streams/syncVm.ts';
import { describeError } from '../errors.ts';
import { formatBytes, formatRate, formatTable } from './format.ts';
import { Progress } from './Progress.ts';

export interface SyncCommandOptions {
  vm: string;
  disk: string[];
  target: string;
  json?: boolean;
  blockSize?: number;
  sync?: VmSyncOptions;
}

/** `hamal sync`: one VM of local disks into the target. Returns the exit code. */
export async function syncCommand(opts: SyncCommandOptions): Promise<number> {
  const disks = opts.disk.map(parseLocalDisk);
  const source = new LocalSource({ vms: { [opts.vm]: disks } });
  const store = await openStore(opts.target);
  try {
    const repo = await Repository.open(store, { create: true, blockSize: opts.blockSize });
    const progress = new Progress(!opts.json);
    const result = await runVmSync(source, opts.vm, repo, opts.sync, (e) => progress.onSyncEvent(e));
    progress.stop();
    if (opts.json) process.stdout.write(JSON.stringify(syncSummary(result), null, 2) + '\n');
    else process.stdout.write(syncTable(result) + '\n');
    for (const f of result.failed) process.stderr.write(`hamal: disk ${f.disk} failed: ${describeError(f.error)}\n`);
    return result.failed.length ? 1 : 0;
  } finally {
    await store.close();
  }
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
