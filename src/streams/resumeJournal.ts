import { lastValueFrom, tap } from 'rxjs';
import type { DiskInfo, Snapshot } from '../sources/Source.ts';
import type { Repository } from '../repo/Repository.ts';
import type { ChunkId } from '../repo/ChunkId.ts';
import { Journal, SNAPSHOT_FIELDS, type JournalHeader } from '../repo/Journal.ts';
import { toBlocks } from './toBlocks.ts';

/** Where the sync of one disk version starts (docs/format.md, Journal and Partial indexes). */
export interface ResumePoint {
  /** The journal this sync appends to: the interrupted one going on, or a new one. */
  journal: Journal;
  /** Blocks an interrupted sync of this version stored that still hold: index -> chunk (null: zero). */
  resumed: Map<number, ChunkId | null>;
  /** What was found and why it was (not) used, for the disk-start event. */
  notes: string[];
  /** A partial index of this disk may be in the repository (deleted at commit). */
  partial: boolean;
}

interface Prior {
  entries: Map<number, ChunkId | null>;
  header: JournalHeader;
  where: string;
}

/**
 * Opens the journal of one disk version, resuming what an interrupted sync of the same
 * version left: its local journal, else the partial index in the repository. What it
 * stored is kept only where it still holds: blocks the disk did not change since (another
 * snapshot, asked of the source's change tracking), chunks no prune deleted since (another
 * generation, one listing of the repository). `partialIndexes`: whether partial indexes
 * are written and read at all.
 */
export async function resumeJournal(
  journalDir: string,
  header: JournalHeader,
  snapshot: Snapshot,
  disk: DiskInfo,
  repo: Repository,
  partialIndexes: boolean,
): Promise<ResumePoint> {
  const path = Journal.pathFor(journalDir, header);
  // A journal of another snapshot is usable where the disk did not change since it; one of
  // another generation where its chunks are still there.
  const loose: Array<keyof JournalHeader> = [...(disk.changeId ? SNAPSHOT_FIELDS : []), 'generation'];
  const recovery = await Journal.recover(path, header, loose);
  const notes: string[] = [];
  let prior: Prior | null = null;
  let unused: string | undefined;
  let partial = false;
  if (recovery.status === 'resumed') {
    prior = { ...recovery, where: 'local journal' };
    // One of an earlier run of ours may be in the repository too.
    partial = partialIndexes;
  } else {
    // Another proxy may have started this version: its partial index is in the repository.
    const stored = partialIndexes ? await repo.getPartial(header.vm, header.disk) : null;
    partial = stored !== null;
    const inRepo = stored ? Journal.parse(stored, header, loose) : null;
    if (inRepo?.status === 'resumed') prior = { ...inRepo, where: 'partial index in the repository' };
    if (recovery.status !== 'none') unused = `${recovery.status}: ${recovery.detail}`;
  }
  if (prior && prior.header.snapshotId !== header.snapshotId) prior = await carryOver(prior, snapshot, disk, header.blockSize, notes);
  if (prior && prior.header.generation !== header.generation) await dropPruned(prior, repo, notes);

  // The local journal goes on where it stopped; otherwise a new one starts with what is kept
  // (and the header of now: this snapshot, this generation).
  const sameFile = recovery.status === 'resumed' && prior?.header.snapshotId === header.snapshotId && prior.header.generation === header.generation;
  const journal = sameFile ? await Journal.open(path, header, { bytes: recovery.bytes }) : await Journal.open(path, header);
  const resumed = prior?.entries ?? new Map<number, ChunkId | null>();
  if (prior) {
    if (!sameFile) for (const [index, id] of resumed) journal.record(index, id);
    if (recovery.status !== 'resumed' && !notes.length) notes.push(`resuming from the partial index in the repository${unused ? ` (local journal not used: ${unused})` : ''}`);
  } else if (unused && !notes.length) {
    notes.push(`journal of an interrupted sync not used (${unused}); starting this version over`);
  }
  return { journal, resumed, notes, partial };
}

/** A prior run of another snapshot: keeps the blocks that did not change since; null when none can be kept. */
async function carryOver(prior: Prior, snapshot: Snapshot, disk: DiskInfo, blockSize: number, notes: string[]): Promise<Prior | null> {
  const was = `the ${prior.where} of an interrupted sync read snapshot ${prior.header.snapshotId}, not this one`;
  const kept = await unchangedSince(snapshot, disk, prior.header.changeId, prior.entries, blockSize);
  if (typeof kept === 'string') {
    notes.push(`${was}, and cannot be carried over (${kept}); starting this version over`);
    return null;
  }
  notes.push(`${was}: ${kept.size} of its ${prior.entries.size} blocks did not change since and are kept`);
  return { ...prior, entries: kept };
}

/**
 * A prior run of an earlier generation: a prune ran since, and may have deleted chunks
 * only that run had stored (its lock expired with it). Their blocks are read again.
 */
async function dropPruned(prior: Prior, repo: Repository, notes: string[]): Promise<void> {
  const gone = await repo.missingChunks(prior.entries.values());
  if (!gone.size) return;
  let dropped = 0;
  for (const [index, id] of prior.entries) {
    if (id !== null && gone.has(id)) {
      prior.entries.delete(index);
      dropped++;
    }
  }
  notes.push(`a prune since the interrupted sync deleted ${gone.size} of the chunks its ${prior.where} names: ${dropped} blocks are read again`);
}

/**
 * The journal entries of an interrupted sync of an earlier snapshot (changeId `then`)
 * whose blocks did not change between it and `snapshot`: those stored then hold what the
 * disk holds now. A string says why none can be kept (no changeId, tracking reset, the
 * source cannot diff against it).
 */
async function unchangedSince(
  snapshot: Snapshot,
  disk: DiskInfo,
  then: string | null,
  entries: Map<number, ChunkId | null>,
  blockSize: number,
): Promise<Map<number, ChunkId | null> | string> {
  if (!then) return 'it had no changeId';
  const why = snapshot.checkSince ? await snapshot.checkSince(disk, then) : null;
  if (why) return why;
  const kept = new Map(entries);
  try {
    await lastValueFrom(snapshot.changes(disk, then).pipe(toBlocks(blockSize, disk.capacity, `disk ${disk.id}`), tap((ref) => kept.delete(ref.index))), { defaultValue: null });
  } catch (err) {
    return `changes since ${then}: ${(err as Error).message}`;
  }
  return kept;
}
