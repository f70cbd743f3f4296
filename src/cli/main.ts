import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { HamalError, describeError } from '../errors.ts';
import { VERSION } from '../version.ts';
import { log } from '../log/Logger.ts';
import { oneLine } from '../log/oneLine.ts';
import { formatConfig } from '../config/loadConfig.ts';
import { setup, type GlobalOptions } from './context.ts';
import { SCHEMA } from '../config/schema.ts';
import { TASK_SCHEMA } from '../tasks/taskSchema.ts';
// Commands load on use: platform and target libraries (soap, the AWS SDK) cost start-up time.

type Range = readonly [min: number, max: number];
type IntKey = { type: { min: number; max: number } };
type IntOption = { minimum: number; maximum: number };

/** An integer flag from `min` to `max`: anything else is bad usage (exit 2), naming the flag and the range. */
function intInRange(name: string, [min, max]: Range) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

/** A flag overrides both a hamal.conf key and a task option: it gets what both accept. */
const both = (key: IntKey, option: IntOption): Range => [Math.max(key.type.min, option.minimum), Math.min(key.type.max, option.maximum)];
const TASK_OPTIONS = TASK_SCHEMA.properties.options.properties;
const READERS = both(SCHEMA.data_sync_v2.pre_disk_readers_count, TASK_OPTIONS.readers);
const WRITERS = both(SCHEMA.hamal.writers_per_disk, TASK_OPTIONS.writers);
const PARALLEL_DISKS = both(SCHEMA.data_sync_v2.parallel_sync_disks_count, TASK_OPTIONS.parallelDisks);
const BLOCK_SIZE_MB = both(SCHEMA.hamal.block_size_mb, TASK_OPTIONS.blockSizeMb);
/** Beyond any retention anyone keeps (hourly versions for 11 years); catches typos and overflow. */
const KEEP_LAST: Range = [1, 100_000];

/** `sync --block-size <bytes>`: a multiple of 4096 within the block sizes of block_size_mb. */
function blockSizeBytes(value: string): number {
  const [min, max] = [4096, BLOCK_SIZE_MB[1] * 1024 * 1024];
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max || n % 4096 !== 0) {
    throw new InvalidArgumentError(`--block-size must be a multiple of 4096 from ${min} to ${max} (${max / 1048576} MiB)`);
  }
  return n;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** The global flags given after a command name (`hamal sync ... --debug`). */
const pick = (o: GlobalOptions): GlobalOptions => ({
  ...(o.config ? { config: o.config } : {}),
  ...(o.debug ? { debug: true } : {}),
  ...(o.verbose ? { verbose: true } : {}),
});

/** Builds the `hamal` command; `setExit` receives each action's exit code. */
export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('hamal')
    .description('Agentless sync proxy: replicates VM disks to object storage, full once and incrementally after.')
    .version(VERSION, '--version', 'print the version')
    .option('--config <path>', 'hamal.conf to read (default: $HAMAL_CONFIG, else /etc/hamal/hamal.conf when present)')
    .option('--debug', 'log at debug level; print stack traces with errors')
    .option('--verbose', 'log at verbose level')
    // Options after a command are that command's: `restore --version ID` is not `hamal --version`.
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(log.redact(s)) })
    .showHelpAfterError('(run with --help for usage)');

  // Every command but demo loads the config first (a bad one exits 2 before anything runs).
  const withConfig =
    <O>(fn: (o: O, config: Awaited<ReturnType<typeof setup>>) => Promise<number>) =>
    async (o: O) => {
      const config = await setup({ ...program.opts<GlobalOptions>(), ...pick(o as GlobalOptions) });
      setExit(await fn(o, config));
    };

  program
    .command('sync')
    .description('Sync one VM into a target repository: from a task file, or local disks given as flags')
    .option('--task <file>', 'task file (JSON, see docs/tasks.md)')
    .option('--vm <name>', 'VM name the versions are filed under')
    .option('--disk <[id=]path>', 'raw image or block device; repeat for more disks (id: the file name unless given)', collect)
    .option('--target <url>', 'repository: file:///path or a directory (else the task\'s, else [hamal] target)')
    .option('--readers <n>', `reads per disk at once (pre_disk_readers_count; ${READERS.join('..')}, at most max_pre_disk_readers_count)`, intInRange('--readers', READERS))
    .option('--writers <n>', `chunk writes per disk at once ([hamal] writers_per_disk; ${WRITERS.join('..')})`, intInRange('--writers', WRITERS))
    .option('--parallel-disks <n>', `disks synced at once (parallel_sync_disks_count; ${PARALLEL_DISKS.join('..')}, at most max_parallel_sync_disks_count)`, intInRange('--parallel-disks', PARALLEL_DISKS))
    .option('--block-size <bytes>', `block size of a repository created now: a multiple of 4096 up to ${BLOCK_SIZE_MB[1]} MiB`, blockSizeBytes)
    .option('--full', 'read every disk in full instead of the changes since its last version (as after a change tracking reset)')
    .option('--json', 'print a JSON summary instead of a table')
    .action(withConfig(async (o: Parameters<typeof import('./sync.ts').syncCommand>[0], c) => (await import('./sync.ts')).syncCommand(o, c)));

  program
    .command('restore')
    .description('Write one version of a disk to a raw image file, a block device, an NBD export or an RBD image (docs/recovery.md)')
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .requiredOption('--vm <name>', 'VM name')
    .requiredOption('--disk <id>', 'disk id')
    .option('--version <id>', 'version id, or latest', 'latest')
    .requiredOption('--out <path|url>', 'file or block device to write; an NBD export: nbd+unix:///EXPORT?socket=PATH, nbd://HOST:PORT/EXPORT (a target volume served by qemu-nbd); an RBD image: rbd:POOL/IMAGE[:id=USER][:conf=PATH][:keyring=PATH] (written by rbd import-diff, created when missing)')
    .option('--from <version>', '--out already holds this version: write only the blocks that differ (an RBD image must have its snapshot hamal-VERSION)')
    .option('--force', 'replace an existing regular file (written beside it, renamed over it), or write a block device, NBD export or existing RBD image: a device only when it is not mounted, not used as swap, not held by another program and at least the version\'s size; without it both are refused')
    .option('--json', 'print a JSON summary')
    .action(withConfig(async (o: Parameters<typeof import('./restore.ts').restoreCommand>[0], c) => (await import('./restore.ts')).restoreCommand(o, c)));

  const CACHE_MIB: Range = [SCHEMA.hamal.export_cache_mb.type.min, SCHEMA.hamal.export_cache_mb.type.max];
  program
    .command('export')
    .description('Serve one version of a disk as an NBD export until SIGTERM (instant recovery: boot or copy it without restoring; docs/export.md)')
    .requiredOption('--target <url>', 'repository: file:///path, a directory, or s3://bucket/prefix')
    .requiredOption('--vm <name>', 'VM name')
    .requiredOption('--disk <id>', 'disk id')
    .option('--version <id>', 'version id, or latest', 'latest')
    .option('--listen <address>', 'unix:PATH (a socket, mode 0600) or tcp:HOST:PORT (needs --tls-cert/--tls-key or --no-tls)', 'unix:hamal-export.sock')
    .option('--writable', 'accept writes, into --overlay (never into the repository)')
    .option('--overlay <file>', 'copy-on-write overlay file for --writable (FILE.map beside it); reopening it continues it')
    .option('--tls-cert <file>', 'PEM certificate: clients must start TLS')
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .option('--tls-client-ca <file>', 'PEM CA: clients must present a certificate it signed')
    .option('--no-tls', 'allow tcp: without TLS (the disk travels in the clear)')
    .option('--cache-mib <n>', `chunk cache in MiB ([hamal] export_cache_mb; ${CACHE_MIB.join('..')})`, intInRange('--cache-mib', CACHE_MIB))
    .action(withConfig(async (o: Parameters<typeof import('./export.ts').exportCommand>[0], c) => (await import('./export.ts')).exportCommand(o, c)));

  program
    .command('versions')
    .description('List the versions in a repository')
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .option('--vm <name>', 'only this VM')
    .option('--metadata', "print the VM metadata documents stored by [sync] upload_metadata_to_oss instead (JSON; opened with the repository's key)")
    .option('--json', 'print a JSON array')
    .action(withConfig(async (o: Parameters<typeof import('./versions.ts').versionsCommand>[0], c) => (await import('./versions.ts')).versionsCommand(o, c)));

  program
    .command('init')
    .description('Create a repository with the options chosen now: encryption and compression (docs/format.md)')
    .requiredOption('--target <url>', 'repository: file:///path, a directory, or s3://bucket/prefix')
    .option('--encryption <mode>', 'aes-256-gcm or none (the passphrase comes from HAMAL_PASSPHRASE or [hamal] passphrase_file/key_file)', 'none')
    .option('--compression <mode>', 'zstd or none', 'none')
    .option('--block-size-mb <n>', `block size in MiB (${BLOCK_SIZE_MB.join('..')})`, intInRange('--block-size-mb', BLOCK_SIZE_MB))
    .option('--json', 'print the repository config as JSON')
    .action(withConfig(async (o: Parameters<typeof import('./init.ts').initCommand>[0], c) => (await import('./init.ts')).initCommand(o, c)));

  const key = program.command('key').description('Keys of an encrypted repository: list, add, remove (no chunk is rewritten)');
  const keyTarget = (cmd: Command) => cmd.requiredOption('--target <url>', 'repository: file:///path, a directory, or s3://bucket/prefix').option('--json', 'print JSON');
  keyTarget(key.command('list').description('List the wrappings of the master key')).action(
    withConfig(async (o: { target: string; json?: boolean }, c) => (await import('./key.ts')).keyCommand('list', o, c)),
  );
  keyTarget(key.command('add').description('Wrap the master key under one more passphrase or key file'))
    .option('--passphrase-file <path>', 'file whose first line is the new passphrase (or set HAMAL_NEW_PASSPHRASE)')
    .option('--key-file <path>', 'key file (at least 16 bytes) for the new wrapping')
    .action(withConfig(async (o: { target: string; passphraseFile?: string; keyFile?: string }, c) => (await import('./key.ts')).keyCommand('add', o, c)));
  keyTarget(key.command('seal-config').description('Add the MAC to the config of an encrypted repository created before config MACs (check the config is as you created it first)')).action(
    withConfig(async (o: { target: string; json?: boolean }, c) => (await import('./key.ts')).keyCommand('seal-config', o, c)),
  );
  keyTarget(key.command('remove').description('Remove one wrapping (not the last)'))
    .argument('<id>', 'key id, from `hamal key list`')
    .action(async (id: string, o: { target: string }) => {
      const config = await setup({ ...program.opts<GlobalOptions>(), ...pick(o as GlobalOptions) });
      setExit(await (await import('./key.ts')).keyCommand('remove', { ...o, id }, config));
    });

  program
    .command('verify')
    .description('Check that every version can be restored: its chunks exist (--deep: and hash to their names)')
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .option('--vm <name>', 'only this VM\'s versions')
    .option('--deep', 'read every chunk and check its hash')
    .option('--json', 'print the report as JSON')
    .action(withConfig(async (o: Parameters<typeof import('./verify.ts').verifyCommand>[0], c) => (await import('./verify.ts')).verifyCommand(o, c)));

  program
    .command('prune')
    .description('Delete all but the newest versions of each disk, then the chunks nothing uses')
    .requiredOption('--target <url>', 'repository: file:///path or a directory')
    .requiredOption('--keep-last <n>', `versions kept per disk (${KEEP_LAST.join('..')})`, intInRange('--keep-last', KEEP_LAST))
    .option('--vm <name>', 'only this VM\'s versions')
    .option('--dry-run', 'report, delete nothing')
    .option('--json', 'print the report as JSON')
    .action(withConfig(async (o: Parameters<typeof import('./prune.ts').pruneCommand>[0], c) => (await import('./prune.ts')).pruneCommand(o, c)));

  program
    .command('serve')
    .description('Run as a service: tasks from the control plane ([mass] mass_endpoint) or from task files ([hamal] tasks_dir), until SIGTERM')
    .option('--config <path>', 'hamal.conf to read (default: $HAMAL_CONFIG, else /etc/hamal/hamal.conf)')
    .action(withConfig(async (o: Parameters<typeof import('./serve.ts').serveCommand>[0], c) => (await import('./serve.ts')).serveCommand(o, c)));

  program
    .command('health')
    .description('Ask the running service for its health ([hamal] health_listen): exit 0 healthy, 1 not')
    .option('--config <path>', 'hamal.conf to read')
    .action(withConfig(async (o: Parameters<typeof import('./health.ts').healthCommand>[0], c) => (await import('./health.ts')).healthCommand(o, c)));

  program
    .command('doctor')
    .description("Check this host against the seed's requirements and the proxy's reach (config, dirs, control plane, target, tools)")
    .option('--config <path>', 'hamal.conf to check')
    .option('--json', 'print the checks as JSON')
    .action(async (o: { config?: string; json?: boolean }) => setExit(await (await import('./doctor.ts')).doctorCommand({ ...o, config: o.config ?? program.opts<GlobalOptions>().config })));

  const config = program.command('config').description('Configuration commands');
  config
    .command('check')
    .description('Load hamal.conf, report problems, print the effective config with secrets masked')
    .option('--config <path>', 'hamal.conf to check')
    .action(async (o: GlobalOptions) => {
      const loaded = await setup({ ...program.opts<GlobalOptions>(), ...pick(o), ...(o.config ? { config: o.config } : {}) });
      process.stdout.write(`# ${loaded.file ?? 'no config file: built-in defaults'}\n${formatConfig(loaded)}`);
      setExit(0);
    });

  program
    .command('demo')
    .description('Sync, change, sync again and restore two sample disks; needs nothing outside this machine')
    .option('--dir <path>', 'work here (kept) instead of a temporary directory (removed)')
    .option('--keep', 'keep the temporary directory')
    .action(async (o) => setExit(await (await import('./demo.ts')).demoCommand(o)));

  for (const cmd of [...program.commands, ...config.commands, ...key.commands]) {
    if (cmd.name() === 'config' || cmd.name() === 'key') continue;
    cmd.option('--debug', 'log at debug level; print stack traces with errors').option('--verbose', 'log at verbose level');
    if (cmd.name() !== 'demo' && !cmd.options.some((o) => o.long === '--config')) cmd.option('--config <path>', 'hamal.conf to read');
  }
  return program;
}

/** Runs the CLI; resolves to the exit code: 0 ok, 1 failed, 2 usage or config error. */
export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const program = buildProgram((c) => (code = c));
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    // --help and --version end here too, with exit code 0; commander printed the message.
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    // One line whatever names the error carries (a VM name with a newline in it).
    process.stderr.write(oneLine(log.redact(`hamal: ${describeError(err)}`)) + '\n');
    if ((argv.includes('--debug') || log.enabled('debug')) && err instanceof Error && err.stack) {
      process.stderr.write(log.redact(err.stack) + '\n');
    }
    return err instanceof HamalError ? err.exitCode : 1;
  }
}
