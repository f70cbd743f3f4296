/** A task file, once validated against TASK_SCHEMA (docs/tasks.md). */
export interface Task {
  version: 1;
  name?: string;
  source: {
    platform: 'local' | 'vmware' | 'openstack_ceph' | 'fusion_compute' | 'libvirt';
    vm: string;
    disks?: Array<{ id?: string; path: string } | string>;
    connection?: Record<string, unknown>;
  };
  target?: string;
  /** Read every disk in full this time (and every time, in a scheduled task). */
  full?: boolean;
  schedule?: { every: number } | { cron: string };
  options?: { readers?: number; writers?: number; parallelDisks?: number; blockSizeMb?: number };
}
