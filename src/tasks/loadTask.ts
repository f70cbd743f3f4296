import { promises as fsp } from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import { TASK_SCHEMA } from './taskSchema.ts';
import type { Task } from './Task.ts';

let validate: ReturnType<Ajv['compile']> | undefined;

/** Reads and validates a task file; errors name the file and the field. */
export async function loadTask(file: string): Promise<Task> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new UsageError('TASK_NOT_FOUND', `cannot read task file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: file });
  }
  const task = parseTask(text, file);
  // An inline password in a file others can read: say so (passwordFile/passwordEnv avoid it).
  const mode = (await fsp.stat(file).catch(() => undefined))?.mode ?? 0;
  if (mode & 0o077 && typeof task.source.connection?.password === 'string') {
    log.warn(`task file ${file} holds a password and is readable by group or others (mode ${(mode & 0o777).toString(8)}): chmod 600 it, or use passwordFile or passwordEnv`);
  }
  return task;
}

export function parseTask(text: string, file: string): Task {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UsageError('TASK_INVALID', `task file ${file} is not valid JSON: ${(err as Error).message}`, { subject: file });
  }
  validate ??= new Ajv({ allErrors: true, strict: false }).compile(TASK_SCHEMA);
  if (!validate(value)) {
    const problems = describe(validate.errors ?? [], value);
    throw new UsageError('TASK_INVALID', `task file ${file}: ${problems.join('; ')}`, {
      subject: problems[0]?.split(':')[0],
    });
  }
  return value as Task;
}

/** Ajv's errors as `field: what is wrong`, most specific first, without the if/then noise. */
function describe(errors: ErrorObject[], value: unknown): string[] {
  const lines: string[] = [];
  for (const e of errors) {
    if (e.keyword === 'if' || e.keyword === 'allOf') continue;
    const path = e.instancePath.split('/').filter(Boolean).join('.') || '(top level)';
    const field = (name: string) => (path === '(top level)' ? name : `${path}.${name}`);
    let line: string;
    switch (e.keyword) {
      case 'required':
        line = `${field(String(e.params.missingProperty))}: is required`;
        break;
      case 'additionalProperties':
        line = `${field(String(e.params.additionalProperty))}: is not a known field`;
        break;
      case 'enum':
        line = `${path}: must be one of ${(e.params.allowedValues as unknown[]).join(', ')}${path.endsWith('platform') ? ` (got ${JSON.stringify(at(value, e.instancePath))})` : ''}`;
        break;
      case 'const':
        line = `${path}: must be ${JSON.stringify(e.params.allowedValue)}`;
        break;
      case 'oneOf':
        line = path.endsWith('schedule') ? `${path}: must be {"every": seconds} or {"cron": "expression"}` : `${path}: needs exactly one of password, passwordFile, passwordEnv`;
        break;
      case 'not':
        // The one `not` of the schema: libvirt's connection takes at most one secret.
        line = path.endsWith('connection') && /"source":\s*\{[^]*"platform":\s*"libvirt"/.test(JSON.stringify(value)) ? `${path}: takes at most one of password, passwordFile, passwordEnv` : `${path}: has a field its platform does not take`;
        break;
      default:
        line = `${path}: ${e.message}`;
    }
    if (!lines.includes(line)) lines.push(line);
  }
  // A missing secret also fails each branch of oneOf: say it once.
  // A bad schedule fails both of its forms: say what it must be, once.
  const badSchedule = lines.some((l) => l.startsWith('schedule: must be'));
  return lines.filter((l) => !(l.endsWith(': is required') && /\.(password|passwordFile|passwordEnv):/.test(l)) && !(badSchedule && l.startsWith('schedule.')));
}

function at(value: unknown, pointer: string): unknown {
  return pointer
    .split('/')
    .filter(Boolean)
    .reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined), value);
}
