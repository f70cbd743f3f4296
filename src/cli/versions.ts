import type { LoadedConfig } from '../config/loadConfig.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { repositorySecret } from '../config/repositorySecret.ts';
import { formatBytes, formatTable } from './format.ts';
import { IntegrityError, describeError } from '../errors.ts';
import { oneLine } from '../log/oneLine.ts';

export interface VersionRow {
  vm: string;
  disk: string;
  version: string;
  parent: string | null;
  createdAt: string;
  capacity: number;
  changedBytes: number;
  storedBytes: number;
  snapshotId: string;
  changeId: string | null;
  /** Why a version with a parent was read in full (a change tracking reset, --full); absent otherwise. */
  fullReason?: string;
}

/**
 * Every version in the repository, oldest first per disk; a manifest that cannot be read
 * (damaged, not sealed) is one of `unreadable`, the others are still listed.
 */
export async function listVersionRows(repo: Repository, vm?: string): Promise<{ rows: VersionRow[]; unreadable: Error[] }> {
  const rows: VersionRow[] = [];
  const unreadable: Error[] = [];
  for (const v of vm ? [vm] : await repo.listVms()) {
    for (const disk of await repo.listDisks(v)) {
      for (const id of await repo.listVersions(v, disk)) {
        let m;
        try {
          m = await repo.readManifest(v, disk, id);
        } catch (err) {
          if (!(err instanceof IntegrityError)) throw err;
          unreadable.push(err);
          continue;
        }
        rows.push({
          vm: v,
          disk,
          version: m.version,
          parent: m.parent,
          createdAt: m.createdAt,
          capacity: m.capacity,
          changedBytes: m.stats.changedBytes,
          storedBytes: m.stats.storedBytes,
          snapshotId: m.source.snapshotId,
          changeId: m.source.changeId,
          ...(m.stats.fullReason ? { fullReason: m.stats.fullReason } : {}),
        });
      }
    }
  }
  return { rows, unreadable };
}

/** `hamal versions`. Returns the exit code. */
export async function versionsCommand(opts: { target: string; vm?: string; metadata?: boolean; json?: boolean }, config?: LoadedConfig): Promise<number> {
  const store = await openStore(opts.target, { config: config?.values });
  try {
    const repo = await Repository.open(store, { secret: () => repositorySecret(config?.values) });
    if (opts.metadata) {
      // In an encrypted repository these documents can be read only this way.
      const docs: Array<{ vm: string; key: string; document: unknown }> = [];
      for (const vm of opts.vm ? [opts.vm] : await repo.listVms()) {
        for (const key of await repo.listVmMetadata(vm)) docs.push({ vm, key, document: await repo.getVmMetadata(key) });
      }
      process.stdout.write(JSON.stringify(docs, null, 2) + '\n');
      return 0;
    }
    const { rows, unreadable } = await listVersionRows(repo, opts.vm);
    if (opts.json) {
      process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    } else {
      const table = [['vm', 'disk', 'version', 'parent', 'created', 'capacity', 'changed', 'stored', 'full because']];
      for (const r of rows) {
        table.push([r.vm, r.disk, r.version, r.parent ?? '-', r.createdAt, formatBytes(r.capacity), formatBytes(r.changedBytes), formatBytes(r.storedBytes), r.fullReason ?? '']);
      }
      process.stdout.write(formatTable(table) + '\n');
    }
    for (const err of unreadable) process.stderr.write(oneLine(`hamal: ${describeError(err)}`) + '\n');
    return unreadable.length ? 1 : 0;
  } finally {
    await store.close();
  }
}
