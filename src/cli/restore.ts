import type { LoadedConfig } from '../config/loadConfig.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { repositorySecret } from '../config/repositorySecret.ts';
import { restoreDisk } from '../streams/restoreDisk.ts';
import { formatBytes, formatRate } from './format.ts';
import { CountBar } from './CountBar.ts';

export interface RestoreCommandOptions {
  target: string;
  vm: string;
  disk: string;
  version?: string;
  out: string;
  from?: string;
  json?: boolean;
}

/** `hamal restore`: one version of one disk to a raw image. Returns the exit code. */
export async function restoreCommand(opts: RestoreCommandOptions, config?: LoadedConfig): Promise<number> {
  const store = await openStore(opts.target, { config: config?.values });
  try {
    const repo = await Repository.open(store, { secret: () => repositorySecret(config?.values) });
    const manifest = await repo.readManifest(opts.vm, opts.disk, opts.version ?? 'latest');
    const from = opts.from ? await repo.readManifest(opts.vm, opts.disk, opts.from) : null;
    const bar = new CountBar(`restoring ${opts.vm}/${opts.disk}`, manifest.capacity, 'bytes', !opts.json);
    const result = await restoreDisk(repo, manifest, opts.out, { from, concurrency: config?.values.hamal.restore_concurrency, onBlock: (bytes) => bar.add(bytes) }).finally(() => bar.stop());
    if (opts.json) {
      process.stdout.write(JSON.stringify({ vm: opts.vm, disk: opts.disk, out: opts.out, from: from?.version ?? null, ...result }, null, 2) + '\n');
    } else {
      process.stdout.write(
        `restored ${opts.vm}/${opts.disk} version ${result.version} to ${opts.out}: ${formatBytes(result.capacity)}, ` +
          `wrote ${formatBytes(result.writtenBytes)} in ${result.writtenBlocks} blocks (${result.skippedBlocks} unchanged or holes), ` +
          `${result.durationMs} ms, ${formatRate(result.writtenBytes, result.durationMs)}\n`,
      );
    }
    return 0;
  } finally {
    await store.close();
  }
}
