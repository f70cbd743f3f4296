import type { LoadedConfig } from '../config/loadConfig.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { repositorySecret } from '../config/repositorySecret.ts';
import { verifyRepository } from '../repo/verifyRepository.ts';
import { CountBar } from './CountBar.ts';

/** `hamal verify`: exit 0 when every version is restorable, 1 with one line per problem otherwise. */
export async function verifyCommand(opts: { target: string; vm?: string; deep?: boolean; json?: boolean }, config?: LoadedConfig): Promise<number> {
  const store = await openStore(opts.target, { config: config?.values });
  try {
    let bar: CountBar | undefined;
    const report = await verifyRepository(await Repository.open(store, { secret: () => repositorySecret(config?.values) }), {
      vm: opts.vm,
      deep: opts.deep,
      onChunk: (checked, total) => {
        bar ??= new CountBar(opts.deep ? 'verifying (deep)' : 'verifying', total, 'chunks', !opts.json);
        bar.add(1);
      },
    }).finally(() => bar?.stop());
    if (opts.json) {
      process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    } else {
      for (const p of report.problems) {
        process.stdout.write(`${p.kind}: ${p.key}: ${p.detail}${p.versions.length ? ` (needed by ${p.versions.join(', ')})` : ''}\n`);
      }
      process.stdout.write(
        `${report.versions} versions, ${report.chunks} chunks checked${opts.deep ? ' (deep)' : ''}: ` +
          `${report.problems.length ? `${report.problems.length} problems` : 'all restorable'}\n`,
      );
    }
    return report.problems.length ? 1 : 0;
  } finally {
    await store.close();
  }
}
