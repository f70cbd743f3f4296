import { createStream, type RotatingFileStream } from 'rotating-file-stream';
import { mkdirSync } from 'node:fs';
import { basename, dirname } from 'node:path';

/** Rotation of a log file, from the seed's `log_rotation_type`, `max_logfile_size_mb`, `max_logfile_count`. */
export interface Rotation {
  /** `size`: when the file reaches `maxBytes`; `time`: daily (and still at `maxBytes`). @default 'size' */
  type?: 'size' | 'time';
  /** @default 64 MiB */
  maxBytes?: number;
  /** Rotated files kept beside the live one (`name.1` newest ... `name.N`). @default 10 */
  maxCount?: number;
}

/** The rotation `[DEFAULT]` of hamal.conf asks for. */
export function rotationOf(d: { log_rotation_type: string; max_logfile_size_mb: number; max_logfile_count: number }): Rotation {
  return { type: d.log_rotation_type === 'time' ? 'time' : 'size', maxBytes: d.max_logfile_size_mb * 1024 * 1024, maxCount: d.max_logfile_count };
}

/** Log lines name VMs, hosts and errors: the owner's alone, whatever the umask (which can only take bits away). */
export const LOG_FILE_MODE = 0o600;
export const LOG_DIR_MODE = 0o700;

/**
 * One log file with classic logrotate-style rotation (`hamal-period.log`, `.1`, `.2`, ...)
 * by rotating-file-stream. Writes are buffered by the stream; `close` flushes. A new file
 * is created 0600 (rotation renames the old one and creates the next the same way), and a
 * missing directory 0700; an existing directory or file keeps the mode the operator gave it.
 */
export class LogFile {
  private readonly _stream: RotatingFileStream;
  private _closed = false;

  constructor(
    readonly path: string,
    rotation: Rotation = {},
  ) {
    // Before the stream, which would create a missing directory with the umask's mode; a
    // failure here is the stream's to report (below), once.
    try {
      mkdirSync(dirname(path), { recursive: true, mode: LOG_DIR_MODE });
    } catch {
      /* reported by the stream */
    }
    this._stream = createStream(basename(path), {
      path: dirname(path),
      size: `${Math.max(1, Math.floor((rotation.maxBytes ?? 64 * 1024 * 1024) / 1024))}K`,
      ...(rotation.type === 'time' ? { interval: '1d' } : {}),
      rotate: rotation.maxCount ?? 10,
      mode: LOG_FILE_MODE,
    });
    // A log that cannot be written must not take the proxy down: say it once on stderr.
    this._stream.once('error', (err) => process.stderr.write(`hamal: log file ${path}: ${err.message}\n`));
  }

  write(line: string): void {
    if (!this._closed) this._stream.write(line + '\n');
  }

  close(): Promise<void> {
    if (this._closed) return Promise.resolve();
    this._closed = true;
    return new Promise((resolve) => this._stream.end(resolve));
  }
}
