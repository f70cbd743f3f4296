// The service's timer graph in virtual time (RxJS TestScheduler): cadence, non-overlapping
// polls, and a control plane that is down for five minutes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { TestScheduler } from 'rxjs/testing';
import { map, of, throwError, timer, defer, NEVER, Observable } from 'rxjs';
import { Service, type ServiceDeps } from '../src/service/Service.ts';
import type { Report, ResultReport } from '../src/service/ControlPlane.ts';
import { TaskAnswered, TaskRejected, type AcceptedTask } from '../src/service/SignedTask.ts';
import { MemoryOutbox } from '../src/service/Outbox.ts';
import { log } from '../src/log/Logger.ts';

const scheduler = () => new TestScheduler((a, b) => assert.equal(a, b));
const facts = () => ({ proxyId: 'p1', version: 't', startedAt: '', hostIps: [], publicIps: [], capacity: { maxTasks: 2, parallelDisks: 4, readersPerDisk: 2 } });
const task = (id: string): AcceptedTask => ({ id, task: { version: 1, source: { platform: 'local', vm: `vm-${id}`, disks: [{ path: '/dev/null' }] } }, expiresAt: '' });
const quiet = () => {
  const lines: string[] = [];
  log.configure({ sink: (l) => lines.push(l) });
  return lines;
};

test('polls never overlap: a poll slower than the interval is not stacked; heartbeats keep their cadence', () => {
  const lines = quiet();
  scheduler().run(({ flush }) => {
    let polling = 0;
    let maxPolling = 0;
    const pollTimes: number[] = [];
    const beatTimes: number[] = [];
    let now = 0;
    const deps: ServiceDeps = {
      feed: {
        poll: () =>
          defer(() => {
            polling++;
            maxPolling = Math.max(maxPolling, polling);
            pollTimes.push(now);
            return timer(2500).pipe(map(() => (polling--, [])));
          }),
      },
      reporter: { heartbeat: () => defer(() => (beatTimes.push(now), of(undefined))), report: () => of(undefined) },
      runTask: () => of(),
      facts,
    };
    const svc = new Service(deps, { pollMs: 1000, heartbeatMs: 5000, progressMs: 1000, maxTasks: 2 });
    const clock = timer(0, 100).subscribe((i) => (now = i * 100));
    const sub = svc.run().subscribe();
    timer(10_050).subscribe(() => {
      svc.stop();
      clock.unsubscribe();
    });
    flush();
    sub.unsubscribe();
    assert.is(maxPolling, 1);
    assert.equal(pollTimes, [0, 3000, 6000, 9000]);
    assert.equal(beatTimes, [0, 5000, 10000]);
  });
  log.configure({ sink: (l) => process.stderr.write(l + '\n') });
  void lines;
});

test('control plane down for five minutes: the task finishes, its result and heartbeats get through after, nothing lost', () => {
  const lines = quiet();
  scheduler().run(({ flush }) => {
    let now = 0;
    const down = () => now < 300_000;
    const delivered: Report[] = [];
    const beats: number[] = [];
    let polls = 0;
    const outbox = new MemoryOutbox();
    const deps: ServiceDeps = {
      // The task was fetched just before the control plane went down.
      feed: { poll: () => defer(() => (polls++ === 0 ? of([task('t1')]) : down() ? throwError(() => new Error('connect ECONNREFUSED')) : of([]))) },
      reporter: {
        heartbeat: () => defer(() => (down() ? throwError(() => new Error('connect ECONNREFUSED')) : (beats.push(now), of(undefined)))),
        report: (r) => defer(() => (down() ? throwError(() => new Error('connect ECONNREFUSED')) : (delivered.push(r), of(undefined)))),
      },
      runTask: (t, progress): Observable<ResultReport> =>
        timer(60_000).pipe(
          map(() => {
            progress.onEvent({ type: 'snapshot', vm: 'x', vmInfo: { id: 'x', name: 'x' }, platformInfo: {}, snapshotId: 's', disks: [{ id: 'd', capacity: 10 }] });
            return { taskId: t.id, vm: t.task.source.vm, state: 'succeeded', versions: [], at: '' };
          }),
        ),
      facts,
      outbox,
    };
    const svc = new Service(deps, { pollMs: 10_000, heartbeatMs: 30_000, progressMs: 5_000, maxTasks: 2, retryMaxMs: 60_000 });
    const clock = timer(0, 1000).subscribe((i) => (now = i * 1000));
    svc.run().subscribe();
    timer(400_000).subscribe(() => {
      assert.is(svc.health().healthy, true);
      svc.stop();
      clock.unsubscribe();
    });
    timer(200_000).subscribe(() => {
      assert.is(svc.health().healthy, false);
      assert.match(svc.health().reasons.join(), /control plane unreachable for \d+ heartbeats/);
      assert.is(outbox.pending().length, 1, 'the undelivered result is kept in the outbox');
    });
    flush();
    const results = delivered.filter((r) => r.kind === 'result');
    assert.is(results.length, 1);
    assert.is(results[0]!.body.taskId, 't1');
    assert.is((results[0]!.body as ResultReport).state, 'succeeded');
    assert.is((results[0]!.body as ResultReport).durationMs, 60_000);
    assert.ok(beats.length >= 3 && beats[0]! >= 300_000, `heartbeats resumed after the outage: ${beats}`);
    assert.equal(outbox.pending(), []);
    // Progress reports queued during the outage were superseded by the result: none was sent late.
    assert.ok(delivered.every((r) => r.kind === 'result'));
  });
  log.configure({ sink: (l) => process.stderr.write(l + '\n') });
  assert.ok(lines.some((l) => /heartbeat failed/.test(l)));
  assert.ok(lines.some((l) => /control plane reachable again/.test(l)));
});

test('a rejected task is reported as rejected, never run', () => {
  quiet();
  scheduler().run(({ flush }) => {
    const delivered: Report[] = [];
    let ran = 0;
    const svc = new Service(
      {
        feed: { poll: () => of([new TaskRejected('forged-1', 'bad signature')]) },
        reporter: { heartbeat: () => of(undefined), report: (r) => (delivered.push(r), of(undefined)) },
        runTask: () => (ran++, of()),
        facts,
      },
      { pollMs: 1000, heartbeatMs: 1000, progressMs: 1000, maxTasks: 1 },
    );
    svc.run().subscribe();
    timer(5000).subscribe(() => svc.stop());
    flush();
    assert.is(ran, 0);
    assert.equal(
      delivered.map((r) => [r.body.taskId, (r.body as ResultReport).state, (r.body as ResultReport).error]),
      [['forged-1', 'rejected', 'task forged-1 rejected: bad signature']],
    );
  });
  log.configure({ sink: (l) => process.stderr.write(l + '\n') });
});

test('a leased task is renewed every ttl/3 and stopped once renewals failed for a whole ttl (the control plane may have moved it)', () => {
  const lines = quiet();
  scheduler().run(({ flush }) => {
    const renewals: number[] = [];
    const results: ResultReport[] = [];
    let stoppedAt = -1;
    let now = 0;
    const leased: AcceptedTask = { ...task('L'), lease: { epoch: 3, ttlSeconds: 30 } };
    let served = false;
    const deps: ServiceDeps = {
      feed: { poll: () => of(served ? [] : ((served = true), [leased])) },
      reporter: {
        heartbeat: () => of(undefined),
        report: (r: Report) => defer(() => (r.kind === 'result' && results.push(r.body), of(undefined))),
        // Reachable for the first 25 s, then the network to the control plane is gone.
        renewLease: (_id: string, epoch: number) => defer(() => (renewals.push(now), now < 25_000 ? of(undefined) : throwError(() => new Error(`unreachable (epoch ${epoch})`)))),
      },
      // A sync that would run for ten minutes; unsubscribing it is how it stops.
      runTask: () => new Observable<ResultReport>(() => () => (stoppedAt = now)),
      facts,
    };
    const svc = new Service(deps, { pollMs: 1000, heartbeatMs: 0, progressMs: 60_000, maxTasks: 1, flushMs: 0 });
    const clock = timer(0, 1000).subscribe((i) => (now = i * 1000));
    const sub = svc.run().subscribe();
    timer(120_000).subscribe(() => {
      svc.stop();
      clock.unsubscribe();
    });
    flush();
    sub.unsubscribe();
    // Every 10 s; the last good one at 20 s, so the lease is given up at 50 s.
    assert.equal(renewals.slice(0, 5), [10_000, 20_000, 30_000, 40_000, 50_000]);
    assert.is(stoppedAt, 50_000);
    assert.is(results.length, 1);
    assert.is(results[0]!.state, 'interrupted');
    assert.is(results[0]!.epoch, 3);
    assert.match(results[0]!.error!, /lease lost: no renewal for 30 s/);
  });
  log.configure({ sink: (l) => process.stderr.write(l + '\n') });
  void lines;
});

test('with every task slot busy, an ended task listed again is answered at once and once; a task queued when the stop comes is reported interrupted, not run', () => {
  const lines = quiet();
  scheduler().run(({ flush }) => {
    const delivered: Report[] = [];
    const started: string[] = [];
    const ended: ResultReport = { taskId: 'done-1', vm: 'vm-done', state: 'succeeded', at: '2026-12-01T00:00:00.000Z' };
    let polls = 0;
    const deps: ServiceDeps = {
      // The first poll hands two tasks to a proxy with one slot; every poll after lists an
      // ended task again (the control plane lost its result).
      feed: { poll: () => defer(() => of(polls++ === 0 ? [task('long'), task('queued')] : [new TaskAnswered(ended)])) },
      reporter: { heartbeat: () => of(undefined), report: (r) => defer(() => (delivered.push(r), of(undefined))) },
      runTask: (t) => defer(() => (started.push(t.id), NEVER)),
      facts,
      outbox: new MemoryOutbox(),
    };
    const svc = new Service(deps, { pollMs: 1000, heartbeatMs: 0, progressMs: 60_000, maxTasks: 1 });
    const sub = svc.run().subscribe();
    timer(10_500).subscribe(() => svc.stop());
    flush();
    sub.unsubscribe();
    const results = delivered.filter((r) => r.kind === 'result').map((r) => r.body as ResultReport);
    const answers = results.filter((r) => r.taskId === 'done-1');
    assert.ok(answers.length >= 1, 'answered while the slot was busy');
    // Listed by every poll, but each poll came after the control plane took the previous
    // answer: one answer per poll, never a pile-up released at once.
    assert.ok(answers.length <= 11, `${answers.length} answers for 11 polls`);
    assert.ok(answers.every((a) => a === ended || JSON.stringify(a) === JSON.stringify(ended)), 'identical');
    assert.equal(started, ['long'], 'the queued task never started');
    assert.equal(results.filter((r) => r.taskId !== 'done-1').map((r) => [r.taskId, r.state]).sort(), [['long', 'interrupted'], ['queued', 'interrupted']]);
  });
  log.configure({ sink: (l) => process.stderr.write(l + '\n') });
  void lines;
});

test.run();
