import type { Snapshot } from '../sources/Source.ts';
import type { Manifest } from '../repo/Manifest.ts';

export const VM_METADATA_FORMAT = 1;

/**
 * What one VM sync knew of the VM (seed: `upload_metadata_to_oss`,
 * `save_local_snapshot_metadata`): enough to rebuild the machine around its disks.
 */
export interface VmMetadata {
  format: number;
  vm: { id: string; name: string };
  platform: string;
  snapshot: { id: string; takenAt: string };
  /** Hardware, NICs, guest IPs: what the platform reports (the local source: nothing). */
  platformInfo: Record<string, unknown>;
  disks: Array<{ id: string; label: string; capacity: number; changeId: string | null; version: string | null; failed?: string }>;
  createdAt: string;
}

export function vmMetadata(snapshot: Snapshot, versions: Manifest[], failed: Array<{ disk: string; error: Error }>, takenAt: Date): VmMetadata {
  return {
    format: VM_METADATA_FORMAT,
    vm: { ...snapshot.vm },
    platform: snapshot.platform,
    snapshot: { id: snapshot.id, takenAt: takenAt.toISOString() },
    platformInfo: snapshot.info ?? {},
    disks: snapshot.disks.map((d) => {
      const f = failed.find((x) => x.disk === d.id);
      return {
        id: d.id,
        label: d.label,
        capacity: d.capacity,
        changeId: d.changeId,
        version: versions.find((m) => m.disk === d.id)?.version ?? null,
        ...(f ? { failed: f.error.message } : {}),
      };
    }),
    createdAt: new Date().toISOString(),
  };
}
