import { promises as fsp } from 'node:fs';
import { isIP } from 'node:net';
import ini from 'ini';
import { UsageError } from '../errors.ts';
import type { ConfigKey } from './ConfigKey.ts';
import { readIni, type IniFile, type IniValue } from './readIni.ts';
import { SCHEMA, type HamalConfig } from './schema.ts';

export const DEFAULT_CONFIG_PATH = '/etc/hamal/hamal.conf';
const MASK = '********';

export interface LoadedConfig {
  /** The file read; null when none was and every key has its default. */
  file: string | null;
  values: HamalConfig;
  /** Unknown sections and keys, one line each, naming file and line. */
  warnings: string[];
  /** Where each `section.key` came from. */
  origin: Record<string, 'file' | 'DEFAULT' | 'default'>;
}

/** Where the container image keeps the sample a first start copies (Dockerfile). */
export const SAMPLE_CONFIG_PATH = '/usr/share/hamal/hamal.conf.sample';

/**
 * Loads hamal.conf. With `path` (--config): that file, which must exist. Otherwise
 * $HAMAL_CONFIG's file, else /etc/hamal/hamal.conf ($HAMAL_CONFIG set but empty: no file,
 * the defaults). Nothing at all at that path is a first start (the image's empty
 * /etc/hamal volume): the sample `sample` is copied there (mode 0600, never over anything)
 * and read, with a warning saying so; without a sample, or where it cannot be written,
 * the built-in defaults with a warning ($HAMAL_CONFIG) or silently (the default path, as
 * before). A dangling symlink, a directory or an unreadable file there is an error naming
 * it. Bad values throw a UsageError (exit code 2) naming file, line, section, key, value
 * and what is allowed.
 */
export async function loadConfig(path?: string, sample = SAMPLE_CONFIG_PATH): Promise<LoadedConfig> {
  if (path === undefined && process.env.HAMAL_CONFIG === '') return parseConfig('', null);
  const file = path ?? process.env.HAMAL_CONFIG ?? DEFAULT_CONFIG_PATH;
  const cannotRead = (err: unknown) =>
    new UsageError('CONFIG_NOT_FOUND', `cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: file });
  let text: string;
  const firstStart: string[] = [];
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    // lstat: a symlink to nothing also reads as ENOENT, but someone put it there.
    const absent = (err as NodeJS.ErrnoException).code === 'ENOENT' && (await fsp.lstat(file).then(() => false, () => true));
    if (path !== undefined || !absent) throw cannotRead(err);
    const copied = await copySample(sample, file);
    if (copied !== true) {
      if (process.env.HAMAL_CONFIG === undefined && copied === 'no sample') return parseConfig('', null);
      const loaded = parseConfig('', null);
      loaded.warnings.push(`no config file ${file} ($HAMAL_CONFIG): running on the built-in defaults (${copied}); the sample is ${sample}`);
      return loaded;
    }
    text = await fsp.readFile(file, 'utf8').catch((e: unknown) => Promise.reject(cannotRead(e)));
    firstStart.push(`first start: ${file} did not exist, so the sample ${sample} was copied there; edit it and restart`);
  }
  const loaded = parseConfig(text, file);
  loaded.warnings.unshift(...firstStart);
  // Secrets in a file others can read: say so (install.sh writes it 0600).
  const mode = (await fsp.stat(file).catch(() => undefined))?.mode ?? 0;
  if (mode & 0o077 && configSecrets(loaded).length) {
    loaded.warnings.push(`${file} holds secrets and is readable by group or others (mode ${(mode & 0o777).toString(8)}): chmod 600 ${file}`);
  }
  return loaded;
}

/** Copies the sample to `file` without replacing anything; true, or why not. */
async function copySample(sample: string, file: string): Promise<true | string> {
  let text: string;
  try {
    text = await fsp.readFile(sample, 'utf8');
  } catch {
    return 'no sample';
  }
  try {
    await fsp.writeFile(file, text, { flag: 'wx', mode: 0o600 });
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // Another process of the same first start wrote it first: read theirs.
    if (code === 'EEXIST') return true;
    return `the sample could not be copied there: ${code ?? err}`;
  }
}

/** Parses and checks config text; `file` names it in messages (null: defaults only). */
export function parseConfig(text: string, file: string | null): LoadedConfig {
  const name = file ?? '(defaults)';
  const parsed: IniFile = readIni(text, name);
  const warnings: string[] = [];
  const origin: LoadedConfig['origin'] = {};
  const values = {} as Record<string, Record<string, unknown>>;
  const defaults = parsed.get('DEFAULT') ?? new Map<string, IniValue>();
  const sectionKeys = new Set(Object.values(SCHEMA).flatMap((s) => Object.keys(s)));

  for (const [section, keys] of parsed) {
    const schema = (SCHEMA as Record<string, Record<string, ConfigKey>>)[section];
    if (!schema) {
      warnings.push(`${name}: unknown section [${section}] ignored`);
      continue;
    }
    for (const [key, v] of keys) {
      if (schema[key]) continue;
      if (section === 'DEFAULT' && sectionKeys.has(key)) continue; // inherited by the sections that have it
      if (section !== 'DEFAULT' && SCHEMA.DEFAULT[key as keyof typeof SCHEMA.DEFAULT]) {
        warnings.push(`${name}, line ${v.line}: [${section}] ${key} is read from [DEFAULT] only; this one is ignored`);
      } else {
        warnings.push(`${name}, line ${v.line}: unknown key [${section}] ${key} ignored`);
      }
    }
  }

  for (const [section, schema] of Object.entries(SCHEMA) as Array<[string, Record<string, ConfigKey>]>) {
    const own = parsed.get(section);
    const out: Record<string, unknown> = {};
    for (const [key, spec] of Object.entries(schema)) {
      // configparser: a section sees [DEFAULT]'s keys unless it sets them itself.
      const found = own?.get(key) ?? (section === 'DEFAULT' ? undefined : defaults.get(key));
      origin[`${section}.${key}`] = own?.has(key) ? 'file' : found ? 'DEFAULT' : 'default';
      const raw = found?.value ?? spec.default;
      const where = found ? `${name}, line ${found.line}: ` : `built-in default: `;
      out[key] = convert(spec, raw, (allowed) => {
        // Continuation lines are not shown: one may be a secret misplaced under another key.
        const lines = raw.split('\n');
        const shown = spec.secret ? MASK : JSON.stringify(lines[0]) + (lines.length > 1 ? ` (and ${lines.length - 1} continuation line(s), not shown)` : '');
        return new UsageError('CONFIG_INVALID', `${where}[${section}] ${key} = ${shown}: ${allowed}`, {
          subject: `[${section}] ${key}`,
        });
      });
    }
    values[section] = out;
  }

  const config = values as unknown as HamalConfig;
  const cap = (section: 'data_sync_v2', key: 'parallel_sync_disks_count' | 'pre_disk_readers_count', maxKey: 'max_parallel_sync_disks_count' | 'max_pre_disk_readers_count') => {
    const value = config[section][key];
    const max = config[section][maxKey];
    if (value > max) {
      const at = parsed.get(section)?.get(key) ?? defaults.get(key);
      throw new UsageError(
        'CONFIG_INVALID',
        `${name}${at ? `, line ${at.line}` : ''}: [${section}] ${key} = ${value}: must be from 1 to ${maxKey} (${max})`,
        { subject: `[${section}] ${key}` },
      );
    }
  };
  cap('data_sync_v2', 'parallel_sync_disks_count', 'max_parallel_sync_disks_count');
  cap('data_sync_v2', 'pre_disk_readers_count', 'max_pre_disk_readers_count');
  return { file, values: config, warnings, origin };
}

function convert(spec: ConfigKey, raw: string, bad: (allowed: string) => Error): unknown {
  const t = spec.type;
  // An indented line continues the value above (configparser): only free text may span lines.
  if (t.kind !== 'string' && raw.includes('\n')) throw bad('must be one line (the indented line below it continues it: unindent it or remove it)');
  switch (t.kind) {
    case 'bool': {
      const v = raw.toLowerCase();
      if (['1', 'yes', 'true', 'on'].includes(v)) return true;
      if (['0', 'no', 'false', 'off'].includes(v)) return false;
      throw bad('must be True or False (also yes/no, on/off, 1/0)');
    }
    case 'int': {
      const unit = t.unit ? ` ${t.unit}` : '';
      if (!/^[+-]?\d+$/.test(raw)) throw bad(`must be a whole number${unit} from ${t.min} to ${t.max}`);
      const n = Number(raw);
      if (n < t.min || n > t.max) throw bad(`must be from ${t.min} to ${t.max}${unit}`);
      return n;
    }
    case 'path':
      if (!raw.startsWith('/')) throw bad('must be an absolute path');
      return raw;
    case 'url': {
      if (raw === '') return '';
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        throw bad(`must be empty or a URL (${t.schemes.join(', ')})`);
      }
      if (!t.schemes.includes(url.protocol.slice(0, -1))) throw bad(`must be empty or a URL (${t.schemes.join(', ')})`);
      return raw;
    }
    case 'ip':
      if (raw === '' || isIP(raw)) return raw;
      throw bad('must be empty or an IPv4 or IPv6 address');
    case 'enum':
      if (t.values.includes(raw)) return raw;
      throw bad(`must be one of ${t.values.join(', ')}`);
    case 'string':
      return raw;
  }
}

/** The effective config as INI text, secrets masked: what `hamal config check` prints. */
export function formatConfig(config: LoadedConfig): string {
  const out: Record<string, Record<string, string>> = {};
  for (const [section, schema] of Object.entries(SCHEMA) as Array<[string, Record<string, ConfigKey>]>) {
    out[section] = {};
    for (const [key, spec] of Object.entries(schema)) {
      const v = (config.values as unknown as Record<string, Record<string, unknown>>)[section]![key];
      const text = typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
      out[section][key] = spec.secret && text !== '' ? MASK : text;
    }
  }
  return ini.stringify(out, { whitespace: true });
}

/** Every secret value in the config, for the logger to redact. */
export function configSecrets(config: LoadedConfig): string[] {
  const secrets: string[] = [];
  for (const [section, schema] of Object.entries(SCHEMA) as Array<[string, Record<string, ConfigKey>]>) {
    for (const [key, spec] of Object.entries(schema)) {
      const v = (config.values as unknown as Record<string, Record<string, unknown>>)[section]![key];
      if (spec.secret && typeof v === 'string' && v !== '') secrets.push(v);
    }
  }
  return secrets;
}
