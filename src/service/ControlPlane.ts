import type { ObservableInput } from 'rxjs';
import type { PolledTask } from './SignedTask.ts';
import type { ProgressReport } from './TaskProgress.ts';

/** What the proxy tells the control plane about itself (docs/control-plane.md, Heartbeat). */
export interface Heartbeat {
  proxyId: string;
  version: string;
  startedAt: string;
  hostIps: string[];
  publicIps: string[];
  capacity: { maxTasks: number; parallelDisks: number; readersPerDisk: number };
  running: ProgressReport[];
  at: string;
}

/** How a task ended. `rejected`: refused before it ran (signature, expiry, replay, schema). */
export interface ResultReport {
  taskId: string;
  vm?: string;
  state: 'succeeded' | 'failed' | 'rejected' | 'interrupted';
  /** The lease epoch the task ran under, when it had one: a result of an older epoch is stale. */
  epoch?: number;
  error?: string;
  versions?: Array<{ disk: string; version: string; parent: string | null; readBytes: number; storedBytes: number; writtenBytes: number; resumedBytes: number }>;
  failedDisks?: Array<{ disk: string; error: string }>;
  startedAt?: string;
  durationMs?: number;
  at: string;
}

export type Report = { kind: 'progress'; body: ProgressReport } | { kind: 'result'; body: ResultReport };

/**
 * Where tasks come from: the control plane (signed, checked by acceptTask) or the task
 * files of standalone mode. Each poll answers the tasks due now, accepted or rejected.
 * Observable inputs so tests can run the service in virtual time.
 */
export interface TaskFeed {
  poll(): ObservableInput<PolledTask[]>;
  /**
   * Called once a task ended, before its result is saved for delivery: standalone
   * schedules advance, the control plane's ledger keeps the result for a task listed again.
   */
  done?(taskId: string, result: ResultReport): ObservableInput<void>;
}

/** Where the service reports: the control plane; absent in standalone mode (the log only). */
export interface Reporter {
  heartbeat(h: Heartbeat): ObservableInput<void>;
  report(r: Report): ObservableInput<void>;
  /**
   * Renews the lease of a running task; fails with LEASE_LOST (not retryable) when the
   * control plane gave the task to another proxy.
   */
  renewLease?(taskId: string, epoch: number): ObservableInput<void>;
}
