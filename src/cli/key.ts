import type { LoadedConfig } from '../config/loadConfig.ts';
import { checkNewSecret, repositorySecret, secretFromFile } from '../config/repositorySecret.ts';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import type { RepositorySecret } from '../repo/MasterKey.ts';

/**
 * `hamal key list|add|remove`: the wrappings of an encrypted repository's master key. No
 * chunk is rewritten. `seal-config`: adds the config MAC to a repository created before it.
 */
export async function keyCommand(
  action: 'list' | 'add' | 'remove' | 'seal-config',
  opts: { target: string; id?: string; passphraseFile?: string; keyFile?: string; json?: boolean },
  config?: LoadedConfig,
): Promise<number> {
  // The new secret first: a bad one fails before the repository is opened (scrypt, a round trip).
  const added = action === 'add' ? await newSecret(opts) : undefined;
  const store = await openStore(opts.target, { config: config?.values });
  try {
    const repo = await Repository.open(store, { secret: () => repositorySecret(config?.values), unsealedConfig: action === 'seal-config' });
    if (action === 'list') {
      const keys = await repo.listKeys();
      if (opts.json) process.stdout.write(JSON.stringify(keys.map(({ id, kind, createdAt, kdf }) => ({ id, kind, createdAt, kdf: `${kdf.name} N=${kdf.N} r=${kdf.r} p=${kdf.p}` })), null, 2) + '\n');
      else for (const k of keys) process.stdout.write(`${k.id}  ${k.kind}  ${k.createdAt}\n`);
    } else if (action === 'add') {
      const id = await repo.addKey(added!);
      process.stdout.write(`added key ${id}\n`);
    } else if (action === 'seal-config') {
      await repo.sealConfig();
      process.stdout.write(`sealed the config of ${store.location} (encryption ${repo.config.encryption}, compression ${repo.config.compression}, block size ${repo.config.blockSize}): an edit by anyone without the key is refused from now on\n`);
    } else {
      await repo.removeKey(opts.id!);
      process.stdout.write(`removed key ${opts.id}\n`);
    }
    return 0;
  } finally {
    await store.close();
  }
}

/** The new wrapping's secret: a file named on the command line, or HAMAL_NEW_PASSPHRASE; a passphrase of MIN_PASSPHRASE_CHARS at least. */
async function newSecret(opts: { passphraseFile?: string; keyFile?: string }): Promise<RepositorySecret> {
  if (opts.passphraseFile && opts.keyFile) throw new UsageError('USAGE', 'give --passphrase-file or --key-file, not both');
  if (opts.passphraseFile) return checkNewSecret(await secretFromFile(opts.passphraseFile, 'passphrase'), `${opts.passphraseFile} (--passphrase-file)`);
  if (opts.keyFile) return secretFromFile(opts.keyFile, 'key-file');
  const env = process.env.HAMAL_NEW_PASSPHRASE;
  if (!env) throw new UsageError('USAGE', 'the new key needs --passphrase-file, --key-file or HAMAL_NEW_PASSPHRASE (never a passphrase on the command line)', { subject: '--passphrase-file' });
  log.addSecret(env);
  return checkNewSecret({ passphrase: env }, 'HAMAL_NEW_PASSPHRASE');
}
