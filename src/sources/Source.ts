import type { Observable } from 'rxjs';
import type { Extent } from '../streams/Extent.ts';
import type { ChangeId } from './ChangeId.ts';

/** A disk as the platform reports it in a snapshot. */
export interface DiskInfo {
  /** Stable across syncs: versions of the same disk are chained by it. */
  readonly id: string;
  /** Human-facing name, for logs. */
  readonly label: string;
  /** Bytes. */
  readonly capacity: number;
  /** The disk's ChangeId in this snapshot; `null` when the platform tracks no changes. */
  readonly changeId: ChangeId | null;
}

/**
 * A VM frozen for reading: the platform snapshot is taken when the Snapshot is made and
 * removed by `release()`, which the pipeline always calls, also after a failure.
 */
export interface Snapshot {
  readonly vm: { readonly id: string; readonly name: string };
  /** Platform's id of the snapshot, recorded in each manifest. */
  readonly id: string;
  readonly platform: string;
  readonly disks: readonly DiskInfo[];
  /** What the platform says of the VM (hardware, NICs, guest IPs), for the VM metadata. */
  readonly info?: Record<string, unknown>;

  /**
   * The areas of `disk` to read, in ascending offset order (see toBlocks). With
   * `since = null`: every area that may hold data (areas left out are zero). With a
   * ChangeId from an earlier snapshot of this disk: every area that may have changed
   * since then (areas left out are unchanged). The pipeline trusts this to the byte: it
   * may read only these areas (in whole 4 KiB pages) and take the rest of a block from
   * the parent version or as zeros. Cold: nothing is asked until subscribed.
   */
  changes(disk: DiskInfo, since: ChangeId | null): Observable<Extent>;

  /**
   * Exactly `length` bytes of `disk` at `offset`, from the snapshot. Precondition:
   * the range lies within the disk's capacity. Reads into `into` (at least `length`
   * long) when the source can and returns that part of it; the caller reuses `into`
   * afterwards, so a source must not keep it. Rejects naming the disk and offset.
   */
  read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer>;

  /**
   * Why changes since `since` cannot be asked for (tracking was reset, ...): the pipeline
   * then syncs the disk in full and reports the reason. `null`: they can. Optional.
   */
  checkSince?(disk: DiskInfo, since: ChangeId): Promise<string | null>;
  /**
   * At most this many disks read at once, whatever the pipeline's parallelDisks: a
   * platform whose disks share one data channel (FusionCompute) says 1. Optional.
   */
  readonly parallelDisks?: number;
  /**
   * The pipeline is done reading `disk` (its version committed, or the disk failed):
   * frees what reading it held (a data channel) before `release`. Optional, never rejects.
   */
  diskDone?(disk: DiskInfo): Promise<void>;

  /**
   * Removes the platform snapshot and frees handles. Idempotent. `committed`: the disks
   * whose versions were committed from this snapshot; a source that diffs snapshots
   * against each other (RBD) keeps the snapshot of those disks as the base of the next
   * diff and removes their older ones.
   */
  release(committed?: readonly string[]): Promise<void>;
}

/** A platform: turns a VM reference into a Snapshot. Knows nothing of targets. */
export interface SnapshotOptions {
  /**
   * Ids of snapshots that interrupted syncs were reading (their journals name them): a
   * source that finds one of them still there may reuse it instead of taking a new one,
   * so the sync resumes. Other leftovers of ours are removed.
   */
  reuse?: readonly string[];
  /**
   * The changeId of each disk's newest version in the repository, by disk id: a source
   * whose change tracking is fixed when the snapshot is taken (libvirt starts a backup
   * job from one checkpoint per disk) starts from these. Others ignore it.
   */
  since?: Readonly<Record<string, ChangeId>>;
}

export interface Source {
  readonly platform: string;
  /** Whether `snapshot` wants SnapshotOptions.since (syncVm reads each disk's newest manifest for it). */
  readonly needsSince?: boolean;
  snapshot(vm: string, options?: SnapshotOptions): Promise<Snapshot>;
}
