import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ObjectStore } from './ObjectStore.ts';
import { FsStore } from './fs/FsStore.ts';
import { UsageError } from '../errors.ts';
import type { HamalConfig } from '../config/schema.ts';
import { parseS3Target } from './s3/S3Target.ts';

export interface OpenStoreOptions {
  /** A sync may create the target (a directory; S3 buckets are never created). */
  create?: boolean;
  /** hamal.conf: [s3] and the request timeout ceiling. */
  config?: HamalConfig;
}

/**
 * The store a target URL names: `file:///abs/path` or a plain path (a directory), or
 * `s3://bucket/prefix[?endpoint=&region=&path_style=]`.
 */
export async function openStore(target: string, options: OpenStoreOptions = {}): Promise<ObjectStore> {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(target)?.[1]?.toLowerCase();
  if (scheme === undefined) return FsStore.open(resolve(target), options);
  if (scheme === 'file') {
    let path: string;
    try {
      path = fileURLToPath(target);
    } catch (err) {
      throw new UsageError('BAD_TARGET', `target ${target} is not a valid file:// URL (use file:///absolute/path)`, {
        subject: target,
        cause: err,
      });
    }
    return FsStore.open(path, options);
  }
  if (scheme === 's3') {
    const c = options.config;
    const s3 = parseS3Target(target, c?.s3);
    // Loaded on demand: the AWS SDK costs every other command ~0.2 s of start-up.
    const { S3Store } = await import('./s3/S3Store.ts');
    const store = await S3Store.open(s3, {
      maxSockets: c?.s3.max_sockets,
      retryMode: c?.s3.retry_mode as 'standard' | 'adaptive' | undefined,
      maxAttempts: c?.s3.max_attempts,
      partSize: c ? c.s3.part_size_mb * 1024 * 1024 : undefined,
      queueSize: c?.s3.queue_size,
      caFile: c?.s3.ca_file || undefined,
      requestTimeoutMs: c ? c.mass.default_request_timeout * 1000 : undefined,
    });
    // Multipart uploads open for an hour were left by a killed sync (one chunk never takes that long).
    if (options.create) await store.sweepStaleUploads(3600_000);
    return store;
  }
  throw new UsageError('BAD_TARGET', `target scheme ${scheme}:// is not supported; use s3://bucket/prefix, file:///path or a directory path`, {
    subject: scheme,
  });
}
