import type { LoadedConfig } from '../config/loadConfig.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import type { Manifest } from '../repo/Manifest.ts';
import { repositorySecret } from '../config/repositorySecret.ts';
import { restoreDisk, type RestoreOptions, type RestoreResult } from '../streams/restoreDisk.ts';
import { log } from '../log/Logger.ts';
import { describeError } from '../errors.ts';
import { formatBytes, formatRate } from './format.ts';
import { CountBar } from './CountBar.ts';

export interface RestoreCommandOptions {
  target: string;
  vm: string;
  disk: string;
  version?: string;
  out: string;
  from?: string;
  /** Replace an existing regular file, or write a block device (RawImage). */
  force?: boolean;
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
    const options: RestoreOptions = { from, force: opts.force, concurrency: config?.values.hamal.restore_concurrency, onBlock: (bytes) => bar.add(bytes) };
    const result = await stoppable(opts, (signal) => restoreDisk(repo, manifest, opts.out, { ...options, signal })).finally(() => bar.stop());
    if (typeof result === 'number') return result;
    printResult(opts, from, result);
    return 0;
  } finally {
    await store.close();
  }
}

/**
 * Runs the restore with SIGTERM/SIGINT handlers that stop it cleanly (the partial file
 * removed); resolves to the exit code 143/130 when a signal stopped it. Every signal is
 * caught while it runs: a second one must not kill us before the partial file is gone.
 */
async function stoppable(opts: RestoreCommandOptions, run: (signal: AbortSignal) => Promise<RestoreResult>): Promise<RestoreResult | number> {
  const abort = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (!signalled) log.child('restore').warn(`${sig}: stopping the restore to ${opts.out}`);
    signalled ??= sig;
    abort.abort();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    return await run(abort.signal);
  } catch (err) {
    if (!signalled) throw err;
    log.child('restore').error(`interrupted by ${signalled}: ${describeError(err)}`);
    return signalled === 'SIGINT' ? 130 : 143;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

function printResult(opts: RestoreCommandOptions, from: Manifest | null, result: RestoreResult): void {
  if (opts.json) {
    process.stdout.write(JSON.stringify({ vm: opts.vm, disk: opts.disk, out: opts.out, from: from?.version ?? null, ...result }, null, 2) + '\n');
    return;
  }
  process.stdout.write(
    `restored ${opts.vm}/${opts.disk} version ${result.version} to ${opts.out}: ${formatBytes(result.capacity)}, ` +
      `wrote ${formatBytes(result.writtenBytes)} in ${result.writtenBlocks} blocks (${result.skippedBlocks} unchanged or holes), ` +
      `${result.durationMs} ms, ${formatRate(result.writtenBytes, result.durationMs)}\n`,
  );
}
