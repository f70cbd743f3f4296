import {
  EMPTY,
  Observable,
  ReplaySubject,
  Subject,
  asyncScheduler,
  catchError,
  concat,
  concatMap,
  defaultIfEmpty,
  defer,
  exhaustMap,
  filter,
  finalize,
  from,
  ignoreElements,
  interval,
  map,
  merge,
  mergeMap,
  of,
  retry,
  share,
  switchMap,
  take,
  takeUntil,
  tap,
  timer,
  type SchedulerLike,
} from 'rxjs';
import { HamalError, describeError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import type { Heartbeat, Report, Reporter, ResultReport, TaskFeed } from './ControlPlane.ts';
import { MemoryOutbox, type Outbox } from './Outbox.ts';
import { TaskAnswered, TaskRejected, type AcceptedTask, type PolledTask } from './SignedTask.ts';
import { TaskProgress } from './TaskProgress.ts';
import { Metrics } from './Metrics.ts';
import type { LastSuccess } from './LastSuccess.ts';

export interface ServiceOptions {
  /** Between two polls for tasks (seed: [period] interval). Polls never overlap. */
  pollMs: number;
  /** Between two heartbeats, never overlapping either; 0: none (enable_heartbeat_msg = False). */
  heartbeatMs: number;
  /** Between two progress reports of a running task (seed: task_update_wait_time). */
  progressMs: number;
  /** Tasks (VMs) run at once; more wait for a free slot. */
  maxTasks: number;
  /** Report retries back off from 1 s, doubling, up to this. @default 60 s */
  retryMaxMs?: number;
  /** After a stop, how long undelivered reports keep being tried. @default 10 s */
  flushMs?: number;
  /** Consecutive failed heartbeats after which /healthz says unhealthy. @default 3 */
  unhealthyAfter?: number;
}

export interface ServiceDeps {
  feed: TaskFeed;
  /** The control plane; absent in standalone mode, where reports only reach the log. */
  reporter?: Reporter;
  /** Runs one task; unsubscribing stops it (snapshot removed, journal kept). */
  runTask(task: AcceptedTask, progress: TaskProgress): Observable<ResultReport>;
  /** The host facts of a heartbeat (cached by the caller; cheap to call). */
  facts(): Omit<Heartbeat, 'running' | 'at'>;
  outbox?: Outbox;
  scheduler?: SchedulerLike;
  metrics?: Metrics;
  /** Per-VM time of the last success, kept across restarts (absent: in memory only). */
  lastSuccess?: LastSuccess;
}

export interface ServiceHealth {
  healthy: boolean;
  reasons: string[];
}

/**
 * The proxy as a service: timer-driven streams merged into one graph.
 *   polls$      timer -> exhaustMap(poll)      tasks due now; a slow poll is never stacked
 *   tasks       mergeMap(run, maxTasks)        each task with its own progress timer
 *   heartbeats$ timer -> exhaustMap(heartbeat)
 *   reports$    concatMap(deliver + retry)     in order; results kept in the outbox until
 *                                              delivered, a progress report skipped once a
 *                                              newer one of its task is queued
 * stop(): polls and heartbeats end, running tasks are stopped (their snapshots released
 * or kept as the source decides, their journals kept for the next start), results reported, the graph completes.
 */
export class Service {
  readonly metrics: Metrics;
  private readonly _running = new Map<string, TaskProgress>();
  private readonly _seen = new Set<string>();
  private readonly _latest = new Map<string, Report>();
  /** When the control plane took each result delivered by this process (see _answerDue). */
  private readonly _taken = new Map<string, number>();
  /** Results recorded in the ledger, not yet in the outbox. */
  private readonly _finishing = new Set<string>();
  private readonly _reports = new Subject<Report>();
  /** Replayed: a task that leaves the queue after the stop sees it too (a plain Subject, completed, never fires for late subscribers). */
  private readonly _stopping = new ReplaySubject<void>(1);
  private readonly _outbox: Outbox;
  private readonly _sched: SchedulerLike;
  private _heartbeatFailures = 0;
  private _pollFailures = 0;
  private _lastPollError?: string;
  private _stopped = false;
  private readonly _log = log.child('service');

  constructor(
    private readonly _deps: ServiceDeps,
    private readonly _options: ServiceOptions,
  ) {
    this._outbox = _deps.outbox ?? new MemoryOutbox();
    this._sched = _deps.scheduler ?? asyncScheduler;
    this.metrics = _deps.metrics ?? new Metrics();
    for (const [vm, at] of Object.entries(_deps.lastSuccess?.all() ?? {})) this.metrics.set('hamal_vm_last_success_timestamp_seconds', at / 1000, { vm });
  }

  /** Tasks running now, as their latest progress. */
  running(): ReturnType<TaskProgress['report']>[] {
    return [...this._running.values()].map((p) => p.report(new Date(this._sched.now())));
  }

  health(): ServiceHealth {
    const reasons: string[] = [];
    const n = this._options.unhealthyAfter ?? 3;
    if (this._heartbeatFailures >= n) reasons.push(`control plane unreachable for ${this._heartbeatFailures} heartbeats`);
    if (this._lastPollError) reasons.push(`last poll for tasks failed: ${this._lastPollError}`);
    if (this._stopped) reasons.push('stopping');
    return { healthy: !reasons.length, reasons };
  }

  /** Stops polling and heartbeats, stops running tasks; the graph completes once reports are flushed. */
  stop(): void {
    if (this._stopped) return;
    this._stopped = true;
    this._log.info(`stopping: ${this._running.size} task(s) running are stopped, their journals kept for the next start`);
    this._stopping.next();
    this._stopping.complete();
  }

  /** The whole graph; subscribe to start. Completes after stop(). */
  run(): Observable<never> {
    const o = this._options;
    const tasks$ = timer(0, o.pollMs, this._sched).pipe(
      exhaustMap(() => {
        const askedAt = this._sched.now();
        return defer(() => this._deps.feed.poll()).pipe(
          map((list) => list.filter((t) => !(t instanceof TaskAnswered) || this._answerDue(t, askedAt))),
          tap(() => {
            if (this._pollFailures) this._log.info(`polling for tasks works again after ${this._pollFailures} failure(s)`);
            this._pollFailures = 0;
            this._lastPollError = undefined;
          }),
          catchError((err) => {
            this._lastPollError = describeError(err);
            this._pollFailures++;
            this.metrics.add('hamal_poll_failures_total');
            // A wrong auth_key fails every poll: the first and every tenth, not each.
            if (this._pollFailures === 1 || this._pollFailures % 10 === 0) this._log.warn(`polling for tasks failed (${this._pollFailures} in a row): ${this._lastPollError}`);
            return EMPTY;
          }),
        );
      }),
      // After the poll, not before: a poll in flight (a control plane that never answers)
      // is dropped at the stop instead of holding it up to its timeout. Running tasks go on
      // below until they have stopped.
      takeUntil(this._stopping),
      mergeMap((list) => from(list)),
      filter((t) => this._firstSight(t)),
      // Answers and rejections at once, not queued behind the maxTasks cap of running tasks.
      mergeMap((t) => (t instanceof TaskAnswered ? this._answer(t) : t instanceof TaskRejected ? of(this._rejected(t)) : of(t))),
      mergeMap((t) => (isReport(t) ? of(t) : this._runOnce(t)), o.maxTasks),
      concatMap((r) => this._finish(r)),
      finalize(() => this._reports.complete()),
    );

    // Exported only where heartbeats are sent (alerts tell "none yet" from "off" by it).
    if (this._deps.reporter && o.heartbeatMs > 0) this.metrics.set('hamal_heartbeat_last_success_timestamp_seconds', 0);
    const heartbeats$ = this._deps.reporter && o.heartbeatMs > 0
      ? timer(0, o.heartbeatMs, this._sched).pipe(
          exhaustMap(() =>
            defer(() => this._deps.reporter!.heartbeat({ ...this._deps.facts(), running: this.running(), at: new Date(this._sched.now()).toISOString() })).pipe(
              tap(() => {
                this.metrics.set('hamal_heartbeat_last_success_timestamp_seconds', this._sched.now() / 1000);
                if (this._heartbeatFailures) this._log.info(`control plane reachable again after ${this._heartbeatFailures} failed heartbeat(s)`);
                this._heartbeatFailures = 0;
              }),
              catchError((err) => {
                this._heartbeatFailures++;
                this.metrics.add('hamal_heartbeat_failures_total');
                if (this._heartbeatFailures === 1 || this._heartbeatFailures % 10 === 0) {
                  this._log.warn(`heartbeat failed (${this._heartbeatFailures} in a row): ${describeError(err)}`);
                }
                return EMPTY;
              }),
            ),
          ),
          takeUntil(this._stopping),
        )
      : EMPTY;

    const flushDeadline$ = this._stopping.pipe(
      defaultIfEmpty(undefined),
      switchMap(() => timer(o.flushMs ?? 10_000, this._sched)),
    );
    const reports$ = defer(() => {
      // Results of an earlier run that never reached the control plane go first. Emitted
      // here, not pushed into the Subject: nothing listens to it yet, they would be lost.
      this._outboxChanged();
      const earlier = this._outbox.pending().map((r): Report => {
        this._log.info(`result of task ${r.taskId} (${r.state}) from an earlier run is delivered now`);
        this._latest.delete(r.taskId);
        return { kind: 'result', body: r };
      });
      return concat(from(earlier), this._reports);
    }).pipe(
      concatMap((r) => this._deliver(r)),
      takeUntil(flushDeadline$),
    );

    return merge(tasks$.pipe(ignoreElements()), heartbeats$.pipe(ignoreElements()), reports$.pipe(ignoreElements())) as Observable<never>;
  }

  /**
   * The control plane lists a task until it has the result, so polls see it again: only
   * its first sight here counts. A task handed back under a newer lease epoch is a new run.
   */
  private _firstSight(t: PolledTask): boolean {
    // An ended task's result is sent again each time it is listed (the control plane lost it).
    if (t instanceof TaskAnswered) return true;
    const epoch = t instanceof TaskRejected ? undefined : t.lease?.epoch;
    const id = t instanceof TaskRejected ? t.taskId : t.id;
    const key = epoch === undefined ? id : `${id}#${epoch}`;
    if (this._seen.has(key)) return false;
    this._seen.add(key);
    if (!(t instanceof TaskRejected)) this._seen.add(id);
    // Months of periodic tasks: remember the latest ids only.
    if (this._seen.size > 10_000) this._seen.delete(this._seen.values().next().value!);
    return true;
  }

  /**
   * Whether an ended task listed by a poll sent at `askedAt` needs its result again: not
   * while the result waits for delivery (that delivery is the answer), nor when the poll
   * was asked before the control plane took the result (its list predates it). Listed by a
   * later poll, the control plane has lost the result: it is sent again.
   */
  private _answerDue(t: TaskAnswered, askedAt: number): boolean {
    const taken = this._taken.get(t.taskId);
    if (this._finishing.has(t.taskId) || (taken !== undefined && askedAt <= taken)) return false;
    return !this._pending(t.taskId);
  }

  /** A task that ended here, listed again: its result is sent again as it was. */
  private _answer(t: TaskAnswered): Observable<never> {
    const r = t.result;
    this._log.info(`task ${r.taskId} is listed again; it ended here at ${r.at} (${r.state}): that result is sent again, the task is not run again`);
    if (this._deps.reporter) this._outbox.save(r);
    this._outboxChanged();
    this._queue({ kind: 'result', body: r });
    return EMPTY;
  }

  /** A task accepted before this start that never ended (the proxy was killed): run again, unless its result waits in the outbox. */
  private _runOnce(t: AcceptedTask): Observable<ResultReport> {
    if (!t.again) return this._run(t);
    if (this._pending(t.id)) {
      this._log.info(`task ${t.id} is listed again; its result from an earlier run is being delivered, the task is not run again`);
      return EMPTY;
    }
    this._log.info(`task ${t.id} was accepted before this start and never ended here: it runs again and resumes from its journal`);
    return this._run(t);
  }

  private _outboxChanged(): void {
    this.metrics.set('hamal_outbox_results', this._outbox.pending().length);
  }

  private _pending(taskId: string): ResultReport | undefined {
    return this._outbox.pending().find((p) => p.taskId === taskId);
  }

  private _run(t: AcceptedTask): Observable<ResultReport> {
    return defer(() => {
      const progress = new TaskProgress(t.id, t.task.source.vm);
      this._running.set(t.id, progress);
      this.metrics.set('hamal_tasks_running', this._running.size);
      const started = this._sched.now();
      this._log.info(`task ${t.id}: sync of ${t.task.source.platform} VM ${t.task.source.vm} started`);
      const result$ = this._deps.runTask(t, progress).pipe(
        takeUntil(this._stopping),
        take(1),
        defaultIfEmpty(undefined),
        map((r): ResultReport => r ?? { taskId: t.id, vm: t.task.source.vm, state: 'interrupted', error: 'the proxy was stopped; the next run resumes from the journal', at: '' }),
        catchError((err) => of<ResultReport>({ taskId: t.id, vm: t.task.source.vm, state: 'failed', error: describeError(err), at: '' })),
        map((r) => ({ ...r, startedAt: new Date(started).toISOString(), durationMs: this._sched.now() - started, at: new Date(this._sched.now()).toISOString() })),
        share(),
      );
      const ticks$ = interval(this._options.progressMs, this._sched).pipe(
        tap(() => this._queue({ kind: 'progress', body: progress.report(new Date(this._sched.now())) })),
        ignoreElements(),
      );
      return merge(ticks$, result$, this._leaseLost(t)).pipe(
        map((r) => (t.lease ? { ...r, epoch: t.lease.epoch } : r)),
        take(1),
        finalize(() => {
          this._running.delete(t.id);
          this.metrics.set('hamal_tasks_running', this._running.size);
        }),
      );
    });
  }

  /**
   * The lease stream of a leased task: a renewal every ttl / 3, never two at once. It ends
   * the task (which unsubscribes the sync: journal kept, snapshot released) when the
   * control plane refuses a renewal or none succeeded for a whole ttl, since by then the
   * task may run elsewhere. The repository fences this proxy off in any case.
   */
  private _leaseLost(t: AcceptedTask): Observable<ResultReport> {
    const renew = this._deps.reporter?.renewLease?.bind(this._deps.reporter);
    if (!t.lease || !renew) return EMPTY;
    const { epoch, ttlSeconds } = t.lease;
    const ttlMs = ttlSeconds * 1000;
    // Time without a renewal, summed from the steps between outcomes: a clock set back
    // adds nothing for that step instead of a negative span that would keep the lease alive.
    let last = this._sched.now();
    let silent = 0;
    const step = () => {
      const now = this._sched.now();
      silent += Math.max(0, now - last);
      last = now;
    };
    const lost = (why: string): ResultReport => {
      this._log.warn(`task ${t.id}: lease epoch ${epoch} lost (${why}); stopping it here`);
      this.metrics.add('hamal_leases_lost_total');
      return { taskId: t.id, vm: t.task.source.vm, state: 'interrupted', error: `lease lost: ${why}`, at: new Date(this._sched.now()).toISOString() };
    };
    return timer(ttlMs / 3, ttlMs / 3, this._sched).pipe(
      exhaustMap(() =>
        defer(() => renew(t.id, epoch)).pipe(
          map(() => {
            step();
            silent = 0;
            return null;
          }),
          catchError((err) => {
            if (err instanceof HamalError && err.code === 'LEASE_LOST') return of(lost(describeError(err)));
            this._log.warn(`task ${t.id}: lease renewal failed: ${describeError(err)}`);
            step();
            return of(silent >= ttlMs ? lost(`no renewal for ${Math.round(silent / 1000)} s, longer than its ttl of ${ttlSeconds} s`) : null);
          }),
        ),
      ),
      filter((r): r is ResultReport => r !== null),
    );
  }

  private _rejected(t: TaskRejected): ResultReport {
    this._log.error(t.message);
    this.metrics.add('hamal_errors_total', 1, { code: t.code });
    return { taskId: t.taskId, state: 'rejected', error: t.message, at: new Date(this._sched.now()).toISOString() };
  }

  private _finish(r: ResultReport): Observable<never> {
    const line = `task ${r.taskId}: ${r.state}${r.error ? `: ${r.error}` : ''}`;
    if (r.state === 'succeeded') this._log.info(line, { ms: r.durationMs });
    else if (r.state !== 'rejected') this._log.error(line);
    this.metrics.add('hamal_tasks_total', 1, { outcome: r.state });
    if (r.durationMs !== undefined) this.metrics.observe('hamal_task_duration_seconds', r.durationMs / 1000, { outcome: r.state });
    if (r.state === 'succeeded' && r.vm) {
      const at = Date.parse(r.at) || this._sched.now();
      this.metrics.set('hamal_vm_last_success_timestamp_seconds', at / 1000, { vm: r.vm });
      this._deps.lastSuccess?.record(r.vm, at).catch((err) => this._log.warn(`time of the last success of VM ${r.vm} not saved: ${describeError(err)}`));
    }
    for (const v of r.versions ?? []) {
      this.metrics.add('hamal_read_bytes_total', v.readBytes, { vm: r.vm ?? '' });
      this.metrics.add('hamal_stored_bytes_total', v.storedBytes, { vm: r.vm ?? '' });
    }
    // Recorded (the ledger, the schedule) before it is saved for delivery: a crash in
    // between then leaves a result the next start delivers, never a task run twice.
    this._finishing.add(r.taskId);
    const recorded$ = this._deps.feed.done
      ? defer(() => this._deps.feed.done!(r.taskId, r)).pipe(
          ignoreElements(),
          catchError((err) => {
            this._log.warn(`task ${r.taskId}: its result was not recorded: ${describeError(err)}`);
            return EMPTY;
          }),
        )
      : EMPTY;
    return concat(
      recorded$,
      defer(() => {
        const waiting = this._pending(r.taskId);
        // A rejection (say, expired) of a task whose real result waits is not a second result.
        if (r.state === 'rejected' && waiting && waiting.state !== 'rejected') return EMPTY;
        if (this._deps.reporter) this._outbox.save(r);
        this._outboxChanged();
        this._queue({ kind: 'result', body: r });
        return EMPTY;
      }),
    ).pipe(finalize(() => this._finishing.delete(r.taskId)));
  }

  private _queue(r: Report): void {
    if (r.kind === 'progress') this._latest.set(r.body.taskId, r);
    else this._latest.delete(r.body.taskId);
    this._reports.next(r);
  }

  private _deliver(r: Report): Observable<never> {
    const reporter = this._deps.reporter;
    if (!reporter) return EMPTY;
    // A progress report that a newer one (or the result) of its task replaced is not sent,
    // nor tried again: a late one would set a finished task back to running.
    const superseded = () => r.kind === 'progress' && this._latest.get(r.body.taskId) !== r;
    const max = this._options.retryMaxMs ?? 60_000;
    return defer(() => (superseded() ? EMPTY : reporter.report(r))).pipe(
      retry({
        delay: (err, n) => {
          if (err instanceof HamalError && !err.retryable) throw err;
          // Refused for this proxy's credentials: a result stays in the outbox for the next
          // start rather than hold up every later report behind it.
          if (r.kind === 'result' && err instanceof HamalError && err.code === 'CONTROL_PLANE_AUTH' && n > AUTH_RETRIES) throw err;
          this.metrics.add('hamal_report_retries_total');
          if (n === 1) this._log.warn(`${r.kind} report of task ${r.body.taskId} not delivered, retrying: ${describeError(err)}`);
          return timer(Math.min(1000 * 2 ** (n - 1), max), this._sched);
        },
      }),
      tap(() => {
        if (r.kind !== 'result') return;
        this._outbox.remove(r.body.taskId);
        this._outboxChanged();
        this._taken.set(r.body.taskId, this._sched.now());
        if (this._taken.size > 10_000) this._taken.delete(this._taken.keys().next().value!);
      }),
      ignoreElements(),
      catchError((err) => {
        if (r.kind === 'result' && err instanceof HamalError && err.code === 'CONTROL_PLANE_AUTH') {
          this._log.error(`result of task ${r.body.taskId} not taken (${describeError(err)}); kept in the outbox for the next start`);
          return EMPTY;
        }
        this._log.error(`${r.kind} report of task ${r.body.taskId} refused by the control plane, dropped: ${describeError(err)}`);
        if (r.kind === 'result') {
          this._outbox.remove(r.body.taskId);
          // Refused for good: not answered again each time a poll lists the task.
          this._taken.set(r.body.taskId, this._sched.now());
        }
        this._outboxChanged();
        return EMPTY;
      }),
    );
  }
}

/** Tries of a result refused with 401/403 before it waits in the outbox for the next start (about 17 min at the default backoff). */
const AUTH_RETRIES = 20;

function isReport(t: AcceptedTask | ResultReport): t is ResultReport {
  return 'state' in t;
}
