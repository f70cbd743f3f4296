import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { HamalError } from '../errors.ts';
import { parseTask } from '../tasks/loadTask.ts';
import type { Task } from '../tasks/Task.ts';
import { canonicalJson } from '../canonicalJson.ts';
import type { ResultReport } from './ControlPlane.ts';
import type { TaskLedger } from './TaskLedger.ts';

/** What the control plane signs (docs/control-plane.md, "Signed tasks"). */
export interface TaskEnvelope {
  id: string;
  proxyId: string;
  issuedAt: string;
  expiresAt: string;
  nonce: string;
  task: unknown;
  /** Present when several proxies share the work: the task runs under this lease (docs/control-plane.md, Leases). */
  lease?: TaskLease;
}

/** A task's lease as the control plane grants it; renewed every ttlSeconds / 3. */
export interface TaskLease {
  /** Grows each time the task is handed to another proxy; the repository fences older ones. */
  epoch: number;
  /** The lease ends this long after its last renewal; past it the control plane may hand the task on. */
  ttlSeconds: number;
}

export interface SignedTask {
  envelope: TaskEnvelope;
  /** Ed25519 over the UTF-8 bytes of canonicalJson(envelope), base64. */
  signature: string;
}

export interface AcceptedTask {
  id: string;
  task: Task;
  expiresAt: string;
  lease?: TaskLease;
  /** Accepted by this proxy before, never ended (it was killed): run again, resuming from the journal. */
  again?: true;
}

/** A task listed again after it ended here: answered with its result, never run again. */
export class TaskAnswered {
  constructor(readonly result: ResultReport) {}
  get taskId(): string {
    return this.result.taskId;
  }
}

/** A task another hamal process on this lib dir accepted and still runs: left to it. */
export class TaskElsewhere {
  constructor(
    readonly taskId: string,
    readonly pid: number,
  ) {}
}

/** What a poll for tasks yields. */
export type PolledTask = AcceptedTask | TaskRejected | TaskAnswered;

/** Clocks of the control plane and the proxy may differ by this much. */
const SKEW_MS = 5 * 60_000;

/** Why a task was refused; reported to the control plane, never run. */
export class TaskRejected extends HamalError {
  constructor(
    readonly taskId: string,
    reason: string,
  ) {
    super('TASK_REJECTED', `task ${taskId} rejected: ${reason}`, { subject: taskId });
  }
}

/** The control plane's Ed25519 public key (PEM) from `public_key_path`. */
export async function loadPublicKey(path: string): Promise<KeyObject> {
  let pem: string;
  try {
    pem = await fsp.readFile(path, 'utf8');
  } catch (err) {
    throw new HamalError('PUBLIC_KEY', `cannot read the control plane's public key ${path} ([mass] public_key_path): ${(err as NodeJS.ErrnoException).code ?? err}`, {
      subject: 'public_key_path',
    });
  }
  try {
    const key = createPublicKey(pem);
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`an ${key.asymmetricKeyType} key, not ed25519`);
    return key;
  } catch (err) {
    throw new HamalError('PUBLIC_KEY', `${path} ([mass] public_key_path) is not an Ed25519 public key in PEM: ${(err as Error).message}`, { subject: 'public_key_path' });
  }
}

/**
 * Checks a task from the control plane before anything of it runs: the signature, that it
 * is addressed to this proxy, its validity window, its nonce (no replay), and the task
 * itself (the JSON Schema of docs/tasks.md). Throws TaskRejected naming the reason. A task
 * whose nonce this proxy already ran to an end is answered with that result (its expiry
 * does not matter then: the control plane lists a task until it has the result).
 */
export async function acceptTask(signed: unknown, key: KeyObject, proxyId: string, ledger: TaskLedger, now = Date.now()): Promise<AcceptedTask | TaskAnswered | TaskElsewhere> {
  const s = signed as Partial<SignedTask> | null;
  const e = s?.envelope as Partial<TaskEnvelope> | undefined;
  const id = typeof e?.id === 'string' && e.id ? e.id : '(no id)';
  if (!e || typeof e !== 'object' || typeof s?.signature !== 'string') throw new TaskRejected(id, 'not a signed task (envelope and signature expected)');
  let ok = false;
  try {
    ok = verify(null, Buffer.from(canonicalJson(e), 'utf8'), key, Buffer.from(s.signature, 'base64'));
  } catch {
    ok = false;
  }
  if (!ok) throw new TaskRejected(id, 'bad signature');
  if (e.proxyId !== proxyId) throw new TaskRejected(id, `addressed to proxy ${String(e.proxyId)}, this is ${proxyId}`);
  if (typeof e.nonce !== 'string' || e.nonce.length < 16) throw new TaskRejected(id, 'nonce missing or shorter than 16 characters');
  const before = await ledger.lookup(e.nonce);
  if (before.kind === 'finished') return new TaskAnswered(before.result);
  const issued = Date.parse(String(e.issuedAt));
  const expires = Date.parse(String(e.expiresAt));
  if (!Number.isFinite(issued) || !Number.isFinite(expires)) throw new TaskRejected(id, 'issuedAt and expiresAt must be ISO 8601 times');
  // A task accepted before (while valid) and never ended runs again whatever the time now.
  if (before.kind === 'new') {
    if (issued > now + SKEW_MS) throw new TaskRejected(id, `issued in the future (${e.issuedAt})`);
    if (expires < now - SKEW_MS) throw new TaskRejected(id, `expired at ${e.expiresAt}`);
  }
  let task: Task;
  try {
    task = parseTask(JSON.stringify(e.task), `task ${id}`);
  } catch (err) {
    throw new TaskRejected(id, (err as Error).message);
  }
  let lease: TaskLease | undefined;
  if (e.lease !== undefined) {
    const l = e.lease as Partial<TaskLease> | null;
    if (!l || !Number.isSafeInteger(l.epoch) || l.epoch! < 1 || !Number.isSafeInteger(l.ttlSeconds) || l.ttlSeconds! < 3 || l.ttlSeconds! > 86400) {
      throw new TaskRejected(id, 'lease must be { epoch: integer >= 1, ttlSeconds: integer 3..86400 }');
    }
    lease = { epoch: l.epoch!, ttlSeconds: l.ttlSeconds! };
  }
  const claim = await ledger.claim(e.nonce, { id, ...(lease ? { epoch: lease.epoch } : {}), expiresAtMs: expires }, now);
  if (claim.kind === 'finished') return new TaskAnswered(claim.result);
  if (claim.kind === 'elsewhere') return new TaskElsewhere(id, claim.owner.pid);
  return { id, task, expiresAt: e.expiresAt!, ...(lease ? { lease } : {}), ...(claim.kind === 'unfinished' ? { again: true as const } : {}) };
}
