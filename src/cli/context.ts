import { loadConfig, configSecrets, type LoadedConfig } from '../config/loadConfig.ts';
import { log, type LogLevel } from '../log/Logger.ts';
import { HashWorkers } from '../repo/HashWorkers.ts';

export interface GlobalOptions {
  config?: string;
  debug?: boolean;
  verbose?: boolean;
}

/** Loads hamal.conf and sets up the logger (from it and the global flags) and the hash threads. */
export async function setup(opts: GlobalOptions): Promise<LoadedConfig> {
  const config = await loadConfig(opts.config);
  const d = config.values.DEFAULT;
  const level: LogLevel = opts.debug || d.debug ? 'debug' : opts.verbose || d.verbose ? 'verbose' : 'info';
  log.configure({ level, secrets: configSecrets(config) });
  HashWorkers.configure(config.values.hamal.hash_threads);
  for (const w of config.warnings) log.warn(w);
  if (config.file) log.debug(`config loaded`, { file: config.file });
  return config;
}
