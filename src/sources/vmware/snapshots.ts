import { HamalError } from '../../errors.ts';
import type { Args, Mor, VsphereClient } from './VsphereClient.ts';
import { objectProps } from './inventory.ts';

type Obj = Record<string, unknown>;

/** Snapshots hamal creates carry this prefix, so leftovers of a crashed run can be found and removed. */
export const SNAPSHOT_PREFIX = 'hamal-sync-';

/** Waits for a task to end; its result on success, a HamalError naming the task on failure or timeout. */
export async function waitTask(client: VsphereClient, task: Mor, what: string, timeoutMs: number): Promise<unknown> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 50; ; delay = Math.min(delay * 2, 2000)) {
    const p = await objectProps(client, task, ['info.state', 'info.error', 'info.result']);
    const state = String(p['info.state']);
    if (state === 'success') return p['info.result'];
    if (state === 'error') {
      throw new HamalError('VSPHERE_TASK_FAILED', `${what} failed on ${client.url.host}: ${JSON.stringify(p['info.error']).slice(0, 300)}`, { subject: task.value });
    }
    if (Date.now() > deadline) {
      throw new HamalError('VSPHERE_TASK_TIMEOUT', `${what} did not finish within ${timeoutMs / 1000} s on ${client.url.host}`, { subject: task.value, retryable: true });
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

function morText(o: unknown, type: string): Mor {
  const v = typeof o === 'object' && o !== null ? String((o as Obj)['#text']) : String(o);
  return { type, value: v };
}

async function runTask(client: VsphereClient, method: string, target: Mor, args: Args, what: string, timeoutMs: number): Promise<unknown> {
  const [task] = await client.call(method, target, args);
  return waitTask(client, morText(task, 'Task'), what, timeoutMs);
}

/** Takes a crash-consistent snapshot (no memory; quiesced on request). Returns its reference. */
export async function createSnapshot(client: VsphereClient, vm: Mor, name: string, options: { quiesce?: boolean; timeoutMs?: number } = {}): Promise<Mor> {
  const result = await runTask(
    client,
    'CreateSnapshot_Task',
    vm,
    { name, description: 'hamal sync', memory: false, quiesce: !!options.quiesce },
    `snapshot ${name} of ${vm.value}`,
    options.timeoutMs ?? 3600_000,
  );
  // The task's result is rebuilt as a reference rather than sent back as it came.
  return morText(result, 'VirtualMachineSnapshot');
}

export async function removeSnapshot(client: VsphereClient, snapshot: Mor, timeoutMs = 3600_000): Promise<void> {
  await runTask(client, 'RemoveSnapshot_Task', snapshot, { removeChildren: false, consolidate: true }, `removal of snapshot ${snapshot.value}`, timeoutMs);
}

export interface SnapshotInfo {
  name: string;
  mor: Mor;
  createTime?: string;
  quiesced: boolean;
}

/** Every snapshot of the VM, flattened from its snapshot tree. */
export async function listSnapshots(client: VsphereClient, vm: Mor): Promise<SnapshotInfo[]> {
  const p = await objectProps(client, vm, ['snapshot']);
  const out: SnapshotInfo[] = [];
  const walk = (nodes: unknown) => {
    const list = (Array.isArray(nodes) ? nodes : nodes ? [nodes] : []) as Obj[];
    for (const n of list) {
      out.push({ name: String(n.name), mor: morText(n.snapshot, 'VirtualMachineSnapshot'), createTime: n.createTime as string | undefined, quiesced: String(n.quiesced) === 'true' });
      walk(n.childSnapshotList);
    }
  };
  walk((p.snapshot as Obj | undefined)?.rootSnapshotList);
  return out;
}

/** Removes snapshots of ours left by a run that crashed; returns their names. */
export async function removeLeftoverSnapshots(client: VsphereClient, vm: Mor, timeoutMs?: number): Promise<string[]> {
  const ours = (await listSnapshots(client, vm)).filter((s) => s.name.startsWith(SNAPSHOT_PREFIX));
  for (const s of ours) await removeSnapshot(client, s.mor, timeoutMs);
  return ours.map((s) => s.name);
}

/**
 * Turns Changed Block Tracking on when it is off, and activates it with a snapshot
 * create/remove cycle (tracking starts at the next stun). Returns whether it was off.
 */
export async function ensureChangeTracking(client: VsphereClient, vm: Mor, timeoutMs?: number): Promise<boolean> {
  const p = await objectProps(client, vm, ['config.changeTrackingEnabled']);
  if (String(p['config.changeTrackingEnabled']) === 'true') return false;
  await runTask(client, 'ReconfigVM_Task', vm, { spec: { changeTrackingEnabled: true } }, `enabling change tracking on ${vm.value}`, timeoutMs ?? 3600_000);
  const snap = await createSnapshot(client, vm, `${SNAPSHOT_PREFIX}cbt-activation`, { timeoutMs });
  await removeSnapshot(client, snap, timeoutMs);
  return true;
}
