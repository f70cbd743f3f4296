import { promises as fsp } from 'node:fs';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import type { RepositorySecret } from '../repo/MasterKey.ts';
import type { HamalConfig } from './schema.ts';

/**
 * What opens encrypted repositories: HAMAL_PASSPHRASE, else `[hamal] passphrase_file`,
 * else `[hamal] key_file`; undefined when none is set. Never from the command line.
 */
export async function repositorySecret(c: Pick<HamalConfig, 'hamal'> | undefined): Promise<RepositorySecret | undefined> {
  const env = process.env.HAMAL_PASSPHRASE;
  if (env) {
    log.addSecret(env);
    return { passphrase: env };
  }
  const h = c?.hamal;
  if (h?.passphrase_file) return secretFromFile(h.passphrase_file, 'passphrase', '[hamal] passphrase_file');
  if (h?.key_file) return secretFromFile(h.key_file, 'key-file', '[hamal] key_file');
  return undefined;
}

/** A secret from a file: the config's, or one named on the command line (`hamal key add`); the path may show, never the secret. */
export async function secretFromFile(path: string, kind: 'passphrase' | 'key-file', key = kind === 'passphrase' ? '--passphrase-file' : '--key-file'): Promise<RepositorySecret> {
  const bytes = await read(path, key);
  if (kind === 'key-file') {
    if (bytes.length < 16) throw new UsageError('KEY_FILE_SHORT', `${path} (${key}) holds ${bytes.length} bytes; a key file needs at least 16`, { subject: key });
    return { keyFile: bytes, path };
  }
  const passphrase = bytes.toString('utf8').split(/\r?\n/)[0]!;
  if (!passphrase) throw new UsageError('PASSPHRASE_EMPTY', `${path} (${key}) holds no passphrase on its first line`, { subject: key });
  log.addSecret(passphrase);
  return { passphrase };
}

async function read(path: string, key: string): Promise<Buffer> {
  try {
    return await fsp.readFile(path);
  } catch (err) {
    throw new UsageError('SECRET_UNREADABLE', `cannot read ${path} (${key}): ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: key });
  }
}
