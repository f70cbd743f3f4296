import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ObjectStore } from './ObjectStore.ts';
import { FsStore } from './fs/FsStore.ts';
import { UsageError } from '../errors.ts';

/**
 * The store a target URL names: `file:///abs/path` or a plain path (a directory).
 * Other schemes come with their stores. `create`: a sync may create the target.
 */
export async function openStore(target: string, options: { create?: boolean } = {}): Promise<ObjectStore> {
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
  throw new UsageError('BAD_TARGET', `target scheme ${scheme}:// is not supported; use file:///path or a directory path`, {
    subject: scheme,
  });
}
