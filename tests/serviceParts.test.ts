// Parts of service mode on their own: signed-task checks, task-file schedules, log rotation.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, createPublicKey } from 'node:crypto';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { AUTH_KEY, ControlPlaneStandIn } from './helpers/ControlPlaneStandIn.ts';
import { HttpControlPlane } from '../src/service/HttpControlPlane.ts';
import { HamalError } from '../src/errors.ts';
import { TaskAnswered, TaskElsewhere, TaskRejected, acceptTask, type AcceptedTask } from '../src/service/SignedTask.ts';
import { TaskLedger } from '../src/service/TaskLedger.ts';
import { TaskFiles } from '../src/service/TaskFiles.ts';
import { LogFile } from '../src/log/LogFile.ts';
import { canonicalJson } from '../src/canonicalJson.ts';
import { tempDir } from './helpers/disks.ts';
import { Observable, defer, of, throwError } from 'rxjs';
import { Service } from '../src/service/Service.ts';
import type { ResultReport } from '../src/service/ControlPlane.ts';

const cp = new ControlPlaneStandIn();
const key = createPublicKey(cp.publicKeyPem);
const task = { version: 1, source: { platform: 'local', vm: 'web', disks: [{ path: '/dev/null' }] } };

test('canonical JSON: sorted keys at every level, no whitespace', () => {
  assert.is(canonicalJson({ b: 1, a: [{ d: 'x', c: null }], e: undefined }), '{"a":[{"c":null,"d":"x"}],"b":1}');
});

test('a signed task is accepted once: a tampered task, a bad schema, a short nonce are rejected with the reason', async () => {
  const dir = await tempDir();
  const ledger = new TaskLedger(join(dir, 'tasks'));
  const signed = cp.signed('t-1', 'p', task);
  const ok = (await acceptTask(signed, key, 'p', ledger)) as AcceptedTask;
  assert.is(ok.id, 't-1');
  assert.is(ok.task.source.vm, 'web');
  assert.is(ok.again, undefined);
  const reason = (p: Promise<unknown>) => p.then(() => 'accepted', (e: TaskRejected) => (assert.instance(e, TaskRejected), e.message));
  const tampered = cp.signed('t-2', 'p', task);
  (tampered.envelope.task as typeof task).source.vm = 'db';
  assert.match(await reason(acceptTask(tampered, key, 'p', ledger)), 'task t-2 rejected: bad signature');
  assert.match(await reason(acceptTask({ envelope: { id: 't-3' } }, key, 'p', ledger)), 'not a signed task');
  assert.match(await reason(acceptTask(cp.signed('t-4', 'p', { version: 1, source: { platform: 'vmwar', vm: 'x' } }), key, 'p', ledger)), 'source.platform: must be one of');
  assert.match(await reason(acceptTask(cp.signed('t-5', 'p', task, { nonce: 'short' }), key, 'p', ledger)), 'nonce');
  await fsp.rm(dir, { recursive: true, force: true });
});

/** Claims `nonce` in a child process (another hamal on the same lib dir); `stay` keeps it running. */
async function claimInChild(tasks: string, nonce: string, id: string, stay: boolean): Promise<ChildProcess> {
  const ledger = new URL('../src/service/TaskLedger.js', import.meta.url).href;
  const code = `const { TaskLedger } = await import(${JSON.stringify(ledger)});
await new TaskLedger(${JSON.stringify(tasks)}).claim(${JSON.stringify(nonce)}, { id: ${JSON.stringify(id)}, expiresAtMs: Date.now() + 3600000 }, Date.now());
console.log('claimed');
if (${stay}) setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => (stay || c !== 0 ? reject(new Error(`claiming child exited ${c}`)) : undefined));
  });
  if (!stay) await new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r(undefined)));
  return child;
}

test('a task listed again: answered with its stored result after it ended (even past its expiry, across a restart), run again when its process died first, left alone while another process runs it; never "rejected: replayed"', async () => {
  const dir = await tempDir();
  const tasks = join(dir, 'service', 'tasks');
  const ended = cp.signed('t-ended', 'p', task);
  const first = new TaskLedger(tasks);
  assert.not.instance(await acceptTask(ended, key, 'p', first), TaskAnswered);
  const result: ResultReport = { taskId: 't-ended', vm: 'web', state: 'succeeded', at: '2026-12-02T10:00:00.000Z', versions: [] };
  await first.finish(result);
  // Listed again in this process while it runs, before it ended: the same task, not news.
  const running = cp.signed('t-running', 'p', task);
  await acceptTask(running, key, 'p', first);
  assert.is(((await acceptTask(running, key, 'p', new TaskLedger(tasks))) as AcceptedTask).again, undefined);

  // A restart: a new ledger on the same folder, hours later.
  const again = await acceptTask(ended, key, 'p', new TaskLedger(tasks), Date.now() + 2 * 3600_000);
  assert.instance(again, TaskAnswered);
  assert.equal((again as TaskAnswered).result, result, 'the same result, whole');

  // Accepted by a process killed before the task ended: run again.
  const killed = cp.signed('t-killed', 'p', task);
  await claimInChild(tasks, killed.envelope.nonce, 't-killed', false);
  const second = new TaskLedger(tasks);
  const rerun = (await acceptTask(killed, key, 'p', second)) as AcceptedTask;
  assert.equal([rerun.id, rerun.again], ['t-killed', true]);
  await second.finish({ taskId: 't-killed', state: 'failed', error: 'x', at: '2026-12-02T11:00:00.000Z' });
  assert.is(((await acceptTask(killed, key, 'p', new TaskLedger(tasks))) as TaskAnswered).result.state, 'failed');
  // A result for a task this process did not claim is not kept.
  await second.finish({ taskId: 't-stranger', state: 'succeeded', at: '' });
  assert.is((await fsp.readdir(tasks)).length, 3);

  // Accepted by another process on this lib dir that still runs: left to it, until it is gone.
  const shared = cp.signed('t-shared', 'p', task);
  const other = await claimInChild(tasks, shared.envelope.nonce, 't-shared', true);
  try {
    const t = await acceptTask(shared, key, 'p', new TaskLedger(tasks));
    assert.instance(t, TaskElsewhere);
    assert.is((t as TaskElsewhere).pid, other.pid);
  } finally {
    other.kill('SIGKILL');
    await new Promise((r) => (other.exitCode === null && other.signalCode === null ? other.once('exit', r) : r(undefined)));
  }
  assert.is(((await acceptTask(shared, key, 'p', new TaskLedger(tasks))) as AcceptedTask).again, true);

  for (const f of await fsp.readdir(tasks)) assert.is(((await fsp.stat(join(tasks, f))).mode & 0o777).toString(8), '600', f);
  assert.is(((await fsp.stat(tasks)).mode & 0o777).toString(8), '700');
  await fsp.rm(dir, { recursive: true, force: true });
});

test('ledger: a task killed past its expiry still runs again; two takeovers of one dead entry give one run; a FIFO or link in the folder never hangs a poll', async () => {
  const dir = await tempDir();
  const tasks = join(dir, 'tasks');
  const killed = cp.signed('t-late', 'p', task, { expiresInMs: 3600_000 });
  await claimInChild(tasks, killed.envelope.nonce, 't-late', false);
  const later = Date.now() + 3 * 3600_000; // the sync ran longer than the task's hour
  assert.is(((await acceptTask(killed, key, 'p', new TaskLedger(tasks), later)) as AcceptedTask).again, true, 'not "rejected: expired"');

  // Two processes find the same dead owner at once: exactly one takes the task over.
  const dead = cp.signed('t-dead', 'p', task);
  await claimInChild(tasks, dead.envelope.nonce, 't-dead', false);
  const racers = await Promise.all([0, 1, 2].map(() => new TaskLedger(tasks).claim(dead.envelope.nonce, { id: 't-dead', expiresAtMs: Date.now() + 3600_000 }, Date.now())));
  const kinds = racers.map((r) => r.kind).sort();
  // In one test process the losers see the winner alive as themselves ("mine").
  assert.is(kinds.filter((k) => k === 'unfinished' || k === 'new').length, 1, kinds.join());
  // Across processes: three children take over one dead entry at once; one wins, the
  // others see it running elsewhere.
  const orphan = cp.signed('t-orphan', 'p', task);
  await claimInChild(tasks, orphan.envelope.nonce, 't-orphan', false);
  const ledgerUrl = new URL('../src/service/TaskLedger.js', import.meta.url).href;
  const racer = `const { TaskLedger } = await import(${JSON.stringify(ledgerUrl)});
const c = await new TaskLedger(${JSON.stringify(tasks)}).claim(${JSON.stringify(orphan.envelope.nonce)}, { id: 't-orphan', expiresAtMs: Date.now() + 3600000 }, Date.now());
console.log(c.kind); setTimeout(() => {}, 1500);`;
  const across = await Promise.all(
    [0, 1, 2].map(
      () =>
        new Promise<string>((resolve) => {
          const child = spawn(process.execPath, ['--input-type=module', '-e', racer], { stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          child.stdout!.on('data', (d) => (out += d));
          child.on('close', () => resolve(out.trim()));
        }),
    ),
  );
  assert.equal(across.sort(), ['elsewhere', 'elsewhere', 'unfinished'], across.join());

  // Hostile files: a FIFO and a link to /dev/zero among the entries, a FIFO at a nonce's name.
  execFileSync('mkfifo', [join(tasks, 'fifo.json')]);
  await fsp.symlink('/dev/zero', join(tasks, 'zero.json'));
  const sweeping = new TaskLedger(tasks);
  const t0 = Date.now();
  await sweeping.claim('sweep-nonce-0123456789', { id: 't-sweep', expiresAtMs: Date.now() + 3600_000 }, Date.now() + 2 * 24 * 3600_000);
  assert.ok(Date.now() - t0 < 5000, 'the sweep did not block');
  const trap = cp.signed('t-trap', 'p', task);
  execFileSync('mkfifo', [join(tasks, `${createHash('sha256').update(trap.envelope.nonce).digest('hex').slice(0, 40)}.json`)]);
  const err = await acceptTask(trap, key, 'p', new TaskLedger(tasks)).then(() => undefined, (e: unknown) => e);
  assert.instance(err, HamalError);
  assert.match((err as Error).message, /task ledger .*\.json: not a regular file/);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('the ledger takes over the nonce list of 0.1.0 and sweeps entries a day past their expiry', async () => {
  const dir = await tempDir();
  const legacy = join(dir, 'nonces.json');
  const old = cp.signed('t-old', 'p', task);
  await fsp.writeFile(legacy, JSON.stringify({ [old.envelope.nonce]: Date.parse(old.envelope.expiresAt) }));
  const ledger = new TaskLedger(join(dir, 'tasks'), { legacyNonces: legacy });
  const t = (await acceptTask(old, key, 'p', ledger)) as AcceptedTask;
  assert.is(t.again, true, 'a nonce of 0.1.0 is a task accepted before, never known to have ended');
  await fsp.access(legacy).then(() => assert.unreachable('the old list is removed'), () => {});

  const now = Date.now();
  await ledger.claim('gone-nonce-0123456789', { id: 't-gone', expiresAtMs: now - 25 * 3600_000 }, now);
  const later = new TaskLedger(join(dir, 'tasks'));
  await later.claim('fresh-nonce-0123456789', { id: 't-fresh', expiresAtMs: now + 3600_000 }, now);
  assert.equal(await later.lookup('gone-nonce-0123456789'), { kind: 'new' }, 'swept');
  assert.equal(await later.lookup(old.envelope.nonce), { kind: 'unfinished' }, 'kept until a day past its expiry');
  await fsp.rm(dir, { recursive: true, force: true });
});

test("mass_endpoint with or without the seed's trailing /v1: the same paths, never /v1/v1", async () => {
  const cp = new ControlPlaneStandIn();
  await cp.start();
  const dir = await tempDir();
  try {
    for (const endpoint of [cp.url, `${cp.url}/v1`, `${cp.url}/v1/`]) {
      const plane = new HttpControlPlane({ endpoint, authKey: AUTH_KEY, proxyId: 'p', timeoutMs: 5000, publicKey: createPublicKey(cp.publicKeyPem), ledger: new TaskLedger(join(dir, 'tasks')) });
      const before = cp.heartbeats.length;
      await plane.heartbeat({ proxyId: 'p', at: new Date().toISOString() } as never);
      assert.is(cp.heartbeats.length, before + 1, endpoint);
      assert.equal(await plane.poll(), [], endpoint);
    }
    assert.equal(cp.unauthorized, []);
  } finally {
    await cp.stop();
  }
});

test('401 from the control plane (a wrong auth_key): a result is kept for retry, not dropped; the error says what to check', async () => {
  const cp = new ControlPlaneStandIn();
  await cp.start();
  const dir = await tempDir();
  try {
    const plane = new HttpControlPlane({ endpoint: cp.url, authKey: 'not-the-key-0123', proxyId: 'p', timeoutMs: 5000, publicKey: createPublicKey(cp.publicKeyPem), ledger: new TaskLedger(join(dir, 'tasks')) });
    const err = await plane.report({ kind: 'result', body: { taskId: 't-1', state: 'succeeded', at: '' } }).then(() => undefined, (e: unknown) => e);
    assert.instance(err, HamalError);
    assert.ok((err as HamalError).retryable, 'retried, so the outbox keeps it');
    assert.match((err as HamalError).message, 'HTTP 401 (check [mass] auth_key and hyper_exporter_id)');
    assert.not.match((err as HamalError).message, 'not-the-key-0123');
    assert.equal(cp.results, []);
  } finally {
    await cp.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('task files: `every` and cron schedules, edits picked up, a bad file reported once', async () => {
  const dir = await tempDir();
  let now = Date.parse('2026-01-01T00:00:30Z');
  const state = join(await tempDir(), 'state.json');
  const feed = new TaskFiles(dir, state, () => now);
  await fsp.writeFile(join(dir, 'a.json'), JSON.stringify({ ...task, schedule: { every: 60 } }));
  await fsp.writeFile(join(dir, 'b.json'), JSON.stringify({ ...task, schedule: { cron: '*/5 * * * *' } }));
  await fsp.writeFile(join(dir, 'c.json'), JSON.stringify({ ...task, schedule: { cron: '61 * * * *' } }));
  const ids = async () => ((await feed.poll()) as Array<AcceptedTask | TaskRejected>).map((t) => (t instanceof TaskRejected ? `!${t.taskId}: ${t.message}` : t.id)).sort();
  const first = await ids();
  assert.is(first.length, 3);
  assert.match(first[0]!, /^!c@invalid: .*c\.json: schedule\.cron/);
  assert.equal(first.slice(1), ['a@2026-01-01T00:00:30.000Z', 'b@2026-01-01T00:00:30.000Z']);
  now += 30_000;
  assert.equal(await ids(), [], 'nothing due, and the bad file is not reported again');
  now = Date.parse('2026-01-01T00:01:31Z');
  assert.equal(await ids(), ['a@2026-01-01T00:01:31.000Z']);
  now = Date.parse('2026-01-01T00:05:00Z');
  const due = await ids();
  assert.equal(due, ['a@2026-01-01T00:05:00.000Z', 'b@2026-01-01T00:05:00.000Z']);
  for (const id of due) await feed.done(id, { taskId: id, state: 'succeeded', at: new Date(now).toISOString() } as ResultReport);
  // The schedule state survives a restart (finished runs are not run again).
  const again = new TaskFiles(dir, state, () => now);
  assert.equal(((await again.poll()) as unknown[]).filter((t) => !(t instanceof TaskRejected)), []);
});

test('task files: a run left unfinished (interrupted, or killed before any outcome) runs again at the next start, schedule or not; a finished one does not', async () => {
  const dir = await tempDir();
  const tasks = join(dir, 'tasks.d');
  await fsp.mkdir(tasks);
  const task = (schedule?: object) => JSON.stringify({ version: 1, source: { platform: 'local', vm: 'v', disks: [{ path: '/dev/null' }] }, target: dir, ...(schedule ? { schedule } : {}) });
  for (const n of ['stopped', 'killed', 'done']) await fsp.writeFile(join(tasks, `${n}.json`), task());
  await fsp.writeFile(join(tasks, 'daily.json'), task({ every: 86400 }));
  const state = join(dir, 'state.json');
  const at = new Date(Date.now() - 60_000).toISOString();
  await fsp.writeFile(state, JSON.stringify({ 'stopped.json': { lastStart: at, lastState: 'interrupted' }, 'killed.json': { lastStart: at }, 'done.json': { lastStart: at, lastState: 'succeeded' }, 'daily.json': { lastStart: at, lastState: 'interrupted' } }));
  const files = new TaskFiles(tasks, state);
  const ids = (await files.poll()).map((t) => (t as AcceptedTask).id.split('@')[0]).sort();
  assert.equal(ids, ['daily', 'killed', 'stopped']);
  assert.equal(await files.poll(), [], 'only at the first poll of a start');
  await fsp.rm(dir, { recursive: true });
});

test('log rotation: with a tiny size, files rotate and never exceed the count', async () => {
  const dir = await tempDir();
  const file = new LogFile(join(dir, 'hamal-period.log'), { maxBytes: 2048, maxCount: 3 });
  for (let i = 0; i < 200; i++) {
    file.write(`line ${i} ${'x'.repeat(90)}`);
    if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
  }
  await file.close();
  const names = (await fsp.readdir(dir)).filter((n) => n.startsWith('hamal-period.log')).sort();
  assert.equal(names, ['hamal-period.log', 'hamal-period.log.1', 'hamal-period.log.2', 'hamal-period.log.3']);
  for (const n of names) assert.ok((await fsp.stat(join(dir, n))).size <= 2048 + 100, n);
  assert.match(await fsp.readFile(join(dir, 'hamal-period.log'), 'utf8'), 'line 199 ');
});

test('the wall clock set back an hour mid-task does not keep a lease alive: renewals failing for a ttl still give it up', async () => {
  const realNow = Date.now;
  let renewals = 0;
  const results: ResultReport[] = [];
  const leased: AcceptedTask = { id: 'L', task: task as AcceptedTask['task'], expiresAt: '', lease: { epoch: 1, ttlSeconds: 3 } };
  let served = false;
  const svc = new Service(
    {
      feed: { poll: () => of(served ? [] : ((served = true), [leased])) },
      reporter: {
        heartbeat: () => of(undefined),
        report: (r) => defer(() => (r.kind === 'result' && results.push(r.body), of(undefined))),
        renewLease: () =>
          defer(() => {
            // The first renewal goes through; then the clock is set back and the network is gone.
            if (++renewals === 1) {
              Date.now = () => realNow() - 3600_000;
              return of(undefined);
            }
            return throwError(() => new Error('unreachable'));
          }),
      },
      runTask: () => new Observable<ResultReport>(() => {}),
      facts: () => ({ proxyId: 'p', version: 't', startedAt: '', hostIps: [], publicIps: [], capacity: { maxTasks: 1, parallelDisks: 1, readersPerDisk: 1 } }),
    },
    { pollMs: 100, heartbeatMs: 0, progressMs: 60_000, maxTasks: 1, flushMs: 100 },
  );
  const started = performance.now();
  const sub = svc.run().subscribe();
  try {
    for (let waited = 0; !results.length && waited < 15_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
  } finally {
    Date.now = realNow;
    svc.stop();
    sub.unsubscribe();
  }
  assert.is(results.length, 1, 'the lease was given up');
  assert.match(results[0]!.error!, /lease lost: no renewal for \d+ s, longer than its ttl of 3 s/);
  const seconds = (performance.now() - started) / 1000;
  assert.ok(seconds > 3 && seconds < 8, `${seconds} s`);
});

test.run();
