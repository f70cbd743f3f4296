import type { Manifest } from '../repo/Manifest.ts';

/** What the stream graph of one VM sync emits, in order per disk: start, (block | checkpoint)*, done | failed. */
export type SyncEvent =
  | {
      type: 'snapshot';
      vm: string;
      /** The VM as the platform knows it: its name and stable id (instance UUID, server id). */
      vmInfo: { id: string; name: string };
      /** What the platform reported of the VM (hardware, NICs): Snapshot.info. */
      platformInfo: Record<string, unknown>;
      snapshotId: string;
      disks: Array<{ id: string; capacity: number }>;
    }
  | {
      type: 'disk-start';
      disk: string;
      capacity: number;
      parent: string | null;
      incremental: boolean;
      /** Blocks taken from the journal of an interrupted sync: not read again. */
      resumedBlocks: number;
      /** Things an operator should know: a capacity change, a journal not trusted, a resume. */
      notes: string[];
    }
  | {
      type: 'block';
      disk: string;
      index: number;
      offset: number;
      bytes: number;
      stored: boolean;
      /** Something an operator should know of this block (its parent's chunk could not be read). */
      note?: string;
    }
  | { type: 'checkpoint'; disk: string; records: number }
  | { type: 'disk-done'; disk: string; manifest: Manifest }
  | { type: 'disk-failed'; disk: string; error: Error }
  | { type: 'metadata'; vm: string; key?: string; path?: string };
