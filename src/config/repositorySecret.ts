import { promises as fsp } from 'node:fs';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import type { RepositorySecret } from '../repo/MasterKey.ts';
import type { HamalConfig } from './schema.ts';

/**
 * The fewest characters a passphrase may have when a key is made with it (`hamal init`,
 * `hamal key add`): Unicode code points after NFC normalisation, the form the key is
 * derived from. A copy of the bucket can be attacked offline; scrypt (N=2^17) makes each
 * guess cost, and 12 characters is the floor at which that cost is worth anything. Keys
 * made before with shorter passphrases still open their repositories.
 */
export const MIN_PASSPHRASE_CHARS = 12;

/** A secret and where it came from (an environment variable's name, or a file and its key), for errors. */
interface FoundSecret {
  secret: RepositorySecret;
  from: string;
}

/**
 * What opens encrypted repositories: HAMAL_PASSPHRASE, else `[hamal] passphrase_file`,
 * else `[hamal] key_file`; undefined when none is set. Never from the command line.
 */
export async function repositorySecret(c: Pick<HamalConfig, 'hamal'> | undefined): Promise<RepositorySecret | undefined> {
  return (await findSecret(c))?.secret;
}

/** The same secret, for a repository created now: a passphrase must have MIN_PASSPHRASE_CHARS. */
export async function newRepositorySecret(c: Pick<HamalConfig, 'hamal'> | undefined): Promise<RepositorySecret | undefined> {
  const found = await findSecret(c);
  return found && checkNewSecret(found.secret, found.from);
}

/**
 * Refuses a passphrase shorter than MIN_PASSPHRASE_CHARS for a new key; key files are
 * checked when read. `from` names where it came from, never the value.
 */
export function checkNewSecret(secret: RepositorySecret, from: string): RepositorySecret {
  if ('passphrase' in secret && [...secret.passphrase.normalize('NFC')].length < MIN_PASSPHRASE_CHARS) {
    throw new UsageError(
      'PASSPHRASE_SHORT',
      `the passphrase from ${from} is shorter than ${MIN_PASSPHRASE_CHARS} characters, the minimum for a new key (keys made before with shorter ones still open)`,
      { subject: from },
    );
  }
  return secret;
}

async function findSecret(c: Pick<HamalConfig, 'hamal'> | undefined): Promise<FoundSecret | undefined> {
  const env = process.env.HAMAL_PASSPHRASE;
  if (env) {
    log.addSecret(env);
    return { secret: { passphrase: env }, from: 'HAMAL_PASSPHRASE' };
  }
  const h = c?.hamal;
  if (h?.passphrase_file) return { secret: await secretFromFile(h.passphrase_file, 'passphrase', '[hamal] passphrase_file'), from: `${h.passphrase_file} ([hamal] passphrase_file)` };
  if (h?.key_file) return { secret: await secretFromFile(h.key_file, 'key-file', '[hamal] key_file'), from: `${h.key_file} ([hamal] key_file)` };
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

/** Files already warned about: the service reads the secret for every task, one warning is enough. */
const warned = new Set<string>();

/** The file's bytes; a warning when group or others may read it (as for hamal.conf). */
async function read(path: string, key: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(path);
  } catch (err) {
    throw new UsageError('SECRET_UNREADABLE', `cannot read ${path} (${key}): ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: key });
  }
  const mode = (await fsp.stat(path).catch(() => undefined))?.mode ?? 0;
  if (mode & 0o077 && !warned.has(path)) {
    warned.add(path);
    log.warn(`${path} (${key}) is readable by group or others (mode ${(mode & 0o777).toString(8)}): chmod 600 ${path}`);
  }
  return bytes;
}
