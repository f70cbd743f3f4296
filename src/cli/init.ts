import type { LoadedConfig } from '../config/loadConfig.ts';
import { newRepositorySecret } from '../config/repositorySecret.ts';
import { HamalError, NotFoundError, UsageError } from '../errors.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import type { Compression, Encryption } from '../repo/ChunkCodec.ts';

export interface InitCommandOptions {
  target: string;
  encryption: string;
  compression: string;
  blockSizeMb?: number;
  json?: boolean;
}

/** `hamal init`: creates a repository with the options chosen now (docs/format.md). */
export async function initCommand(opts: InitCommandOptions, config?: LoadedConfig): Promise<number> {
  if (!['none', 'aes-256-gcm'].includes(opts.encryption)) throw new UsageError('USAGE', `--encryption must be aes-256-gcm or none, not ${opts.encryption}`, { subject: '--encryption' });
  if (!['none', 'zstd'].includes(opts.compression)) throw new UsageError('USAGE', `--compression must be zstd or none, not ${opts.compression}`, { subject: '--compression' });
  const store = await openStore(opts.target, { create: true, config: config?.values });
  try {
    try {
      await store.get('config');
      throw new HamalError('REPOSITORY_EXISTS', `${store.location} already holds a repository: its options were chosen when it was created`, { subject: store.location });
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
    const repo = await Repository.open(store, {
      create: true,
      blockSize: opts.blockSizeMb ? opts.blockSizeMb * 1024 * 1024 : undefined,
      encryption: opts.encryption as Encryption,
      compression: opts.compression as Compression,
      // A new key: its passphrase must be long enough (MIN_PASSPHRASE_CHARS).
      secret: () => newRepositorySecret(config?.values),
    });
    const c = repo.config;
    const keys = c.encryption === 'aes-256-gcm' ? (await repo.listKeys()).map((k) => k.id) : [];
    if (opts.json) process.stdout.write(JSON.stringify({ target: store.location, ...c, keys }, null, 2) + '\n');
    else process.stdout.write(`created repository ${c.id} at ${store.location}: format ${c.format}, block size ${c.blockSize / 1048576} MiB, encryption ${c.encryption ?? 'none'}, compression ${c.compression ?? 'none'}${keys.length ? `, key ${keys[0]}` : ''}\n`);
    return 0;
  } finally {
    await store.close();
  }
}
