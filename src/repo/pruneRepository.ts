import type { Repository } from './Repository.ts';
import { RepositoryLock, type LockOptions } from './RepositoryLock.ts';
import type { ChunkId } from './ChunkId.ts';
import { chunkKey } from './ChunkId.ts';
import { Journal } from './Journal.ts';
import { IntegrityError, UsageError } from '../errors.ts';

export interface PruneOptions {
  /** Versions kept per disk, newest first. */
  keepLast: number;
  /** Only this VM's versions are pruned; chunks are shared, so all VMs' versions are read. */
  vm?: string;
  /** Report what would go, delete nothing. @default false */
  dryRun?: boolean;
  /** The exclusive repository lock; `false`: none. @default {} */
  lock?: LockOptions | false;
}

export interface PruneReport {
  deletedVersions: string[];
  /** Partial indexes of versions in flight that can no longer resume (their parent is not the latest version). */
  deletedPartials: string[];
  keptVersions: number;
  deletedChunks: number;
  freedBytes: number;
}

/**
 * Deletes all but the last `keepLast` versions of each disk, then every chunk no remaining
 * version names (docs/format.md, invariant 6: manifests first, then chunks).
 *
 * It holds the exclusive repository lock, so no sync runs meanwhile (a running sync's new
 * chunks are named by no manifest yet), and works in two phases: mark (what no kept
 * version names), then, after checking the locks again, sweep.
 */
export async function pruneRepository(repo: Repository, options: PruneOptions): Promise<PruneReport> {
  if (!Number.isSafeInteger(options.keepLast) || options.keepLast < 1) {
    throw new UsageError('BAD_KEEP_LAST', `keepLast must be a whole number of at least 1, got ${options.keepLast}`, { subject: 'keepLast' });
  }
  const lock = options.lock === false || options.dryRun ? null : await RepositoryLock.acquire(repo.store, 'exclusive', { ...options.lock, purpose: 'prune' });
  try {
    return await prune(repo, options, lock);
  } finally {
    await lock?.release();
  }
}

async function prune(repo: Repository, options: PruneOptions, lock: RepositoryLock | null): Promise<PruneReport> {
  const report: PruneReport = { deletedVersions: [], deletedPartials: [], keptVersions: 0, deletedChunks: 0, freedBytes: 0 };
  // Every version listed first: nothing is deleted while the listing may hide some.
  const disks: Array<{ vm: string; disk: string; versions: string[] }> = [];
  for (const vm of await repo.listVms()) {
    for (const disk of await repo.listDisks(vm)) disks.push({ vm, disk, versions: await repo.listVersions(vm, disk) });
  }
  // What a link in vms/ hides could be versions: deleting "unreferenced" chunks would lose them.
  const hidden = (repo.store.skipped?.() ?? []).filter((k) => k.startsWith('vms/'));
  if (hidden.length) {
    throw new IntegrityError(
      'PRUNE_UNSAFE',
      `prune stopped before deleting anything: ${hidden.length} entries under vms/ in ${repo.store.location} are not objects hamal can read (first: ${hidden[0]}, a link or special file); what they hide may be versions whose chunks prune would delete. Remove or replace them, then prune again`,
      { subject: hidden[0] },
    );
  }
  const referenced = new Set<ChunkId>();
  for (const { vm, disk, versions } of disks) {
    const cut = vm === options.vm || options.vm === undefined ? Math.max(0, versions.length - options.keepLast) : 0;
    for (const version of versions.slice(0, cut)) {
      if (!options.dryRun) await repo.deleteVersion(vm, disk, version);
      report.deletedVersions.push(`${vm}/${disk}@${version}`);
    }
    for (const version of versions.slice(cut)) {
      const m = await repo.readManifest(vm, disk, version);
      for (const id of m.blocks) if (id !== null) referenced.add(id);
      report.keptVersions++;
    }
  }
  // A version in flight that another proxy may resume keeps its chunks (docs/format.md).
  for (const { vm, disk } of await repo.listPartials()) {
    const bytes = await repo.getPartial(vm, disk);
    const header = bytes && Journal.headerOf(bytes);
    const parsed = header ? Journal.parse(bytes!, header) : null;
    if (parsed?.status === 'resumed' && header!.parent === (await repo.latestVersion(vm, disk))) {
      for (const id of parsed.entries.values()) if (id !== null) referenced.add(id);
      continue;
    }
    if (!options.dryRun) await repo.deletePartial(vm, disk);
    report.deletedPartials.push(`${vm}/${disk}`);
  }
  if (!options.dryRun) {
    await repo.store.flush();
    // Syncs elsewhere re-check the chunks they deduplicated against before committing.
    await repo.bumpGeneration();
  }
  // Mark, then sweep.
  const unreferenced: ChunkId[] = [];
  for await (const id of repo.listChunks()) if (!referenced.has(id)) unreferenced.push(id);
  await lock?.assertHeld();
  for (const id of unreferenced) {
    // A chunk that is not a regular file (planted) counts nothing, and goes like the others.
    report.freedBytes += (await repo.store.head(chunkKey(id)).catch(() => null))?.size ?? 0;
    report.deletedChunks++;
    if (!options.dryRun) await repo.deleteChunk(id);
  }
  if (!options.dryRun) await repo.store.flush();
  return report;
}
