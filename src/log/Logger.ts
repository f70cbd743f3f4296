import { AsyncLocalStorage } from 'node:async_hooks';
import { oneLine } from './oneLine.ts';

/** A second sink for the lines logged inside one async scope (a VM's sync). */
export const scopeSink = new AsyncLocalStorage<(line: string) => void>();

export type LogLevel = 'error' | 'warn' | 'info' | 'verbose' | 'debug';

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, verbose: 3, debug: 4 };
const REDACTED = '***';
/** Field names whose values are secrets whatever they hold. */
const SECRET_KEY = /pass(word|wd|phrase)?|secret|token|auth_?key|api_?key|access_?key|private_?key|credential|keyring|cookie|authorization/i;
/** `password=...`, `"token": "..."`, `auth_key: ...` inside free text (not `...Error: text`). */
const PAIR_KEY = /pass(word|wd|phrase)?|secret|token|auth_?key|api_?key|access_?key|private_?key|keyring/i;
const SECRET_PAIR = new RegExp(
  `(["']?\\b(?:[\\w-]*(?:${PAIR_KEY.source})(?!\\w*(?:Error|Exception|Provider))[\\w-]*)["']?\\s*[=:]\\s*)("[^"]*"|'[^']*'|[^\\s,;&}]+)`,
  'gi',
);
/** Userinfo of a URL: `scheme://user:pass@host`. */
const URL_PASSWORD = /(\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]+:)[^\s@/]+@/gi;

export interface LoggerOptions {
  /** @default 'info' */
  level?: LogLevel;
  /** Receives each finished line, without its newline. @default stderr */
  sink?: (line: string) => void;
  /** Values that must never appear in a line (passwords, keys from the config). */
  secrets?: Iterable<string>;
}

/**
 * The one logger every part uses. Redaction happens here, on every line whatever the
 * caller passed: fields named like secrets, registered secret values anywhere, `key=value`
 * pairs with secret-looking keys in messages, and passwords in URLs. Every line is one
 * line: control characters are escaped (oneLine.ts).
 */
export class Logger {
  private readonly _state: { level: LogLevel; sink: (line: string) => void; secrets: Set<string> };
  readonly component: string;

  constructor(options: LoggerOptions = {}, component = 'hamal', state?: Logger['_state']) {
    this._state = state ?? {
      level: options.level ?? 'info',
      sink: options.sink ?? ((line) => process.stderr.write(line + '\n')),
      secrets: new Set([...(options.secrets ?? [])].filter((s) => s.length >= 3)),
    };
    this.component = component;
  }

  /** Same level, sink and secrets; lines tagged with `component`. */
  child(component: string): Logger {
    return new Logger({}, component, this._state);
  }

  configure(options: LoggerOptions): void {
    if (options.level) this._state.level = options.level;
    if (options.sink) this._state.sink = options.sink;
    for (const s of options.secrets ?? []) this.addSecret(s);
  }

  /** Registers a value to redact from every line from now on (short values are ignored: too many false hits). */
  addSecret(value: string): void {
    if (value.length >= 3) this._state.secrets.add(value);
  }

  get level(): LogLevel {
    return this._state.level;
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] <= RANK[this._state.level];
  }

  error(message: string, fields?: Record<string, unknown>): void {
    this._log('error', message, fields);
  }
  warn(message: string, fields?: Record<string, unknown>): void {
    this._log('warn', message, fields);
  }
  info(message: string, fields?: Record<string, unknown>): void {
    this._log('info', message, fields);
  }
  verbose(message: string, fields?: Record<string, unknown>): void {
    this._log('verbose', message, fields);
  }
  debug(message: string, fields?: Record<string, unknown>): void {
    this._log('debug', message, fields);
  }

  /** Redacts a string as every log line is: for messages that reach the user another way. */
  redact(text: string): string {
    let out = text;
    for (const s of this._state.secrets) out = out.split(s).join(REDACTED);
    return out.replace(SECRET_PAIR, `$1${REDACTED}`).replace(URL_PASSWORD, `$1${REDACTED}@`);
  }

  /**
   * A finished, redacted line, for a sink of the caller's own (a VM's log alone). Control
   * characters in the message or fields are escaped after redaction (so a secret is still
   * found as it was given): whatever a name holds, a line is one line.
   */
  line(level: LogLevel, message: string, fields?: Record<string, unknown>): string {
    let line = `${new Date().toISOString()} ${level.toUpperCase().padEnd(7)} [${this.component}] ${message}`;
    if (fields) {
      for (const [k, v] of Object.entries(fields)) {
        if (v === undefined) continue;
        line += ` ${k}=${SECRET_KEY.test(k) ? REDACTED : this._value(v, 0)}`;
      }
    }
    return oneLine(this.redact(line));
  }

  private _log(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    if (!this.enabled(level)) return;
    const redacted = this.line(level, message, fields);
    this._state.sink(redacted);
    // Lines logged while a VM's sync runs also go to that VM's log (vmLog.ts).
    scopeSink.getStore()?.(redacted);
  }

  private _value(v: unknown, depth: number): string {
    if (v instanceof Error) return JSON.stringify(v.message);
    if (v === null || typeof v !== 'object') return typeof v === 'string' && !/[\s"=]/.test(v) && v !== '' ? v : JSON.stringify(v) ?? String(v);
    if (depth > 3) return '"…"';
    return JSON.stringify(v, (key, value) => (key && SECRET_KEY.test(key) ? REDACTED : value instanceof Error ? value.message : value));
  }
}

/** The process's logger; the CLI configures it from hamal.conf, embedders may too. */
export const log = new Logger();
