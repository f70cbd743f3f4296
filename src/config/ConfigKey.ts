/**
 * The declaration of one hamal.conf key: its type, default, bounds and what it does here.
 * docs/configuration.md is generated from these declarations (`npm run docs`), and a
 * test keeps the two equal, so no key goes undocumented.
 */
export type ConfigKeyType =
  | { kind: 'bool' }
  | { kind: 'int'; min: number; max: number; unit?: 'seconds' | 'MB' | 'ms per MB' | 'files' | 'blocks' | 'connections' | 'threads' | 'disks' | 'bytes' | 'percent' }
  | { kind: 'string' }
  | { kind: 'path' }
  | { kind: 'url'; schemes: string[]; optional: true }
  | { kind: 'ip'; optional: true }
  | { kind: 'enum'; values: string[] };

export interface ConfigKey {
  type: ConfigKeyType;
  /** The value used when the file does not set the key, as it would be written in the file. */
  default: string;
  /** Never printed, logged or put in an error. */
  secret?: boolean;
  /** `used`: hamal acts on it; `accepted`: loaded and checked, then ignored (say why). */
  status: 'used' | 'accepted';
  /** What it does here, or why it is accepted and ignored. */
  doc: string;
}

export type ConfigSection = Record<string, ConfigKey>;
