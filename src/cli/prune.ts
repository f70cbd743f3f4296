import type { LoadedConfig } from '../config/loadConfig.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { repositorySecret } from '../config/repositorySecret.ts';
import { pruneRepository } from '../repo/pruneRepository.ts';
import { formatBytes } from './format.ts';

/** `hamal prune --keep-last N`. */
export async function pruneCommand(opts: { target: string; keepLast: number; vm?: string; dryRun?: boolean; json?: boolean }, config?: LoadedConfig): Promise<number> {
  const store = await openStore(opts.target, { config: config?.values });
  try {
    const lock = config ? { ttlSeconds: config.values.hamal.lock_ttl, clockSkewSeconds: config.values.hamal.lock_clock_skew } : {};
    const report = await pruneRepository(await Repository.open(store, { secret: () => repositorySecret(config?.values) }), { ...opts, lock });
    if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    else {
      for (const v of report.deletedVersions) process.stdout.write(`${opts.dryRun ? 'would delete' : 'deleted'} version ${v}\n`);
      for (const p of report.deletedPartials) process.stdout.write(`${opts.dryRun ? 'would delete' : 'deleted'} the partial index of ${p} (its version can no longer resume)\n`);
      process.stdout.write(
        `${opts.dryRun ? 'would delete' : 'deleted'} ${report.deletedVersions.length} versions and ${report.deletedChunks} chunks ` +
          `(${formatBytes(report.freedBytes)}); ${report.keptVersions} versions kept\n`,
      );
    }
    return 0;
  } finally {
    await store.close();
  }
}
