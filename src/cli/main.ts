import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { HamalError, describeError } from '../errors.ts';
import { VERSION } from '../version.ts';
import { syncCommand } from './sync.ts';
import { restoreCommand } from './restore.ts';
import { versionsCommand } from './versions.ts';
import { demoCommand } from './demo.ts';

function positiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a whole number of at least 1`);
    return n;
  };
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Builds the `hamal` command; each action resolves to a process exit code. */
export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('hamal')
    .description('Agentless sync proxy: replicates VM disks to object storage, full once and incrementally after.')
    .version(VERSION, '--version')
    .option('--debug', 'print stack traces with errors')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');

  const run = (fn: () => Promise<number>) => async () => setExit(await fn());

  program
    .command('sync')
    .description('Sync a VM (a named set of local raw disks) into a target repository')
    .requiredOption('--vm <name>', 'VM name the versions are filed under')
    .requiredOption('--disk <[id=]path>', 'raw image or block device; repeat for more disks (id defaults to the file name)', collect)
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .option('--readers <n>', 'reads per disk at once (pre_disk_readers_count)', positiveInt('--readers'))
    .option('--writers <n>', 'chunk writes per disk at once', positiveInt('--writers'))
    .option('--parallel-disks <n>', 'disks synced at once (parallel_sync_disks_count)', positiveInt('--parallel-disks'))
    .addOption(new Option('--block-size <bytes>', 'block size of a repository created now').argParser(positiveInt('--block-size')))
    .option('--json', 'print a JSON summary instead of a table')
    .action(function (this: Command, o) {
      return run(() =>
        syncCommand({
          vm: o.vm,
          disk: o.disk,
          target: o.target,
          json: o.json,
          blockSize: o.blockSize,
          sync: { readers: o.readers, writers: o.writers, parallelDisks: o.parallelDisks },
        }),
      )();
    });

  program
    .command('restore')
    .description('Write one version of a disk to a raw image file or block device')
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .requiredOption('--vm <name>', 'VM name')
    .requiredOption('--disk <id>', 'disk id')
    .option('--version <id>', 'version id, or latest', 'latest')
    .requiredOption('--out <path>', 'file or block device to write')
    .option('--from <version>', '--out already holds this version: write only the blocks that differ')
    .option('--json', 'print a JSON summary')
    .action((o) => run(() => restoreCommand(o))());

  program
    .command('versions')
    .description('List the versions in a repository')
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .option('--vm <name>', 'only this VM')
    .option('--json', 'print a JSON array')
    .action((o) => run(() => versionsCommand(o))());

  program
    .command('demo')
    .description('Sync, change, sync again and restore two sample disks; needs nothing outside this machine')
    .option('--dir <path>', 'work here (kept) instead of a temporary directory (removed)')
    .option('--keep', 'keep the temporary directory')
    .action((o) => run(() => demoCommand(o))());

  return program;
}

export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const program = buildProgram((c) => (code = c));
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      return err.exitCode === 0 ? 0 : 2;
    }
    const debug = argv.includes('--debug');
    process.stderr.write(`hamal: ${describeError(err)}\n`);
    if (debug && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
    return err instanceof HamalError ? err.exitCode : 1;
  }
}
