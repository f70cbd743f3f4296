/**
 * Every error hamal raises on purpose: a stable code, the object at fault (a disk, a key,
 * a chunk, a file), whether retrying can help, and the cause it wraps. The CLI prints
 * `message` as one line and maps `exitCode`; nothing here may carry a secret.
 */
export interface HamalErrorOptions {
  /** The object at fault: disk id, chunk key, config key, file path. */
  subject?: string;
  /** True when the same call may succeed later (network, busy target). @default false */
  retryable?: boolean;
  cause?: unknown;
}

export class HamalError extends Error {
  readonly code: string;
  readonly subject?: string;
  readonly retryable: boolean;
  /** Process exit code when this error ends the CLI: 1 = the job failed, 2 = bad usage or config. */
  readonly exitCode: number = 1;

  constructor(code: string, message: string, options: HamalErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.subject = options.subject;
    this.retryable = options.retryable ?? false;
  }
}

/** Bad command line, config file or task file: exit code 2. */
export class UsageError extends HamalError {
  override readonly exitCode = 2;
}

/** Stored data does not match its name or its format: never retryable. */
export class IntegrityError extends HamalError {}

/** A named object (version, chunk, VM, disk) does not exist. */
export class NotFoundError extends HamalError {}

/**
 * One line for an operator: the message, plus the cause's message when it adds something
 * (not when the message already names the cause's errno code).
 */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause instanceof Error ? err.cause : undefined;
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  if (!cause || err.message.includes(cause.message) || (code && err.message.includes(code))) return err.message;
  return `${err.message}: ${cause.message}`;
}
