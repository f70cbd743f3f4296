import type { Manifest } from '../repo/Manifest.ts';

/** What the stream graph of one VM sync emits, in order per disk: start, block*, done | failed. */
export type SyncEvent =
  | { type: 'snapshot'; vm: string; snapshotId: string; disks: Array<{ id: string; capacity: number }> }
  | { type: 'disk-start'; disk: string; capacity: number; parent: string | null; incremental: boolean; note?: string }
  | { type: 'block'; disk: string; index: number; offset: number; bytes: number; stored: boolean }
  | { type: 'disk-done'; disk: string; manifest: Manifest }
  | { type: 'disk-failed'; disk: string; error: Error };
