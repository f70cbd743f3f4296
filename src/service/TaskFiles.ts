import { promises as fsp } from 'node:fs';
import { join, basename } from 'node:path';
import { CronExpressionParser } from 'cron-parser';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import { parseTask } from '../tasks/loadTask.ts';
import type { Task } from '../tasks/Task.ts';
import type { ResultReport, TaskFeed } from './ControlPlane.ts';
import { TaskRejected, type AcceptedTask, type PolledTask } from './SignedTask.ts';
import { replaceFile } from './replaceFile.ts';

/** When a task file runs: every N seconds, or on a cron expression (5 or 6 fields, local time). */
export type Schedule = NonNullable<Task['schedule']>;

/**
 * Standalone mode: the task files of a directory (`/etc/hamal/tasks.d/*.json`, the format
 * of docs/tasks.md plus `schedule`), read again at each poll so edits need no restart.
 * A file is due when it never ran or its schedule's next time after the last start has
 * come; the last starts are kept in `stateFile`. A file whose last run did not finish
 * (interrupted by a stop, or no outcome at all: the process was killed) is due at the first
 * poll after a start, whatever its schedule, and resumes from its journal. A bad file is
 * reported (as a rejected task naming the file and the field) and the others still run.
 */
export class TaskFiles implements TaskFeed {
  private _state: Record<string, { lastStart: string; lastState?: string }> | undefined;
  private readonly _complained = new Map<string, string>();
  /** False until the first poll: the one that takes up runs an earlier process left unfinished. */
  private _polled = false;

  constructor(
    private readonly _dir: string,
    private readonly _stateFile: string,
    private readonly _now: () => number = Date.now,
  ) {}

  async poll(): Promise<PolledTask[]> {
    const state = await this._load();
    let names: string[];
    try {
      names = (await fsp.readdir(this._dir)).filter((n) => n.endsWith('.json')).sort();
    } catch (err) {
      throw new UsageError('TASKS_DIR', `cannot read the task directory ${this._dir}: ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: this._dir });
    }
    const now = this._now();
    const first = !this._polled;
    this._polled = true;
    const out: Array<AcceptedTask | TaskRejected> = [];
    for (const name of names) {
      const file = join(this._dir, name);
      let task: Task;
      let next: number;
      try {
        task = parseTask(await fsp.readFile(file, 'utf8'), file);
        const last = state[name] ? Date.parse(state[name].lastStart) : undefined;
        // The schedule is checked even before a first run: a bad cron is reported at once.
        next = nextRun(task.schedule, last ?? now, file);
        const unfinished = last !== undefined && (state[name]!.lastState === undefined || state[name]!.lastState === 'interrupted');
        if (last === undefined || (first && unfinished)) next = now;
      } catch (err) {
        // Report a bad file once per change, not at every poll.
        const msg = (err as Error).message;
        if (this._complained.get(name) !== msg) {
          this._complained.set(name, msg);
          out.push(new TaskRejected(`${basename(name, '.json')}@invalid`, msg));
        }
        continue;
      }
      this._complained.delete(name);
      if (next > now) continue;
      const id = `${basename(name, '.json')}@${new Date(now).toISOString()}`;
      state[name] = { lastStart: new Date(now).toISOString() };
      out.push({ id, task, expiresAt: '' });
    }
    // The state changes only when a task starts: most polls write nothing.
    if (out.some((t) => !(t instanceof TaskRejected))) await this._save();
    return out;
  }

  async done(taskId: string, result: ResultReport): Promise<void> {
    const state = await this._load();
    const name = `${taskId.slice(0, taskId.lastIndexOf('@'))}.json`;
    if (state[name]) state[name].lastState = result.state;
    await this._save();
  }

  private async _load() {
    if (!this._state) {
      try {
        this._state = JSON.parse(await fsp.readFile(this._stateFile, 'utf8'));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.child('service').warn(`schedule state ${this._stateFile} unreadable, starting afresh: ${(err as Error).message}`);
        this._state = {};
      }
    }
    return this._state!;
  }

  private async _save() {
    await replaceFile(this._stateFile, JSON.stringify(this._state, null, 1));
  }
}

/** The next start after `last`; a task without a schedule runs once. */
export function nextRun(schedule: Schedule | undefined, last: number, file: string): number {
  if (!schedule) return Infinity;
  if ('every' in schedule) return last + schedule.every * 1000;
  try {
    return CronExpressionParser.parse(schedule.cron, { currentDate: new Date(last) }).next().getTime();
  } catch (err) {
    throw new UsageError('TASK_INVALID', `task file ${file}: schedule.cron: ${(err as Error).message}`, { subject: 'schedule.cron' });
  }
}
