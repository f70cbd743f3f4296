import { IntegrityError } from '../errors.ts';
import { canonicalJson } from '../canonicalJson.ts';
import type { Compression, Encryption } from './ChunkCodec.ts';

/** Repository formats this hamal reads (docs/format.md). */
export const FORMATS = [1, 2];
const MIN_BLOCK_SIZE = 4096;
const MAX_BLOCK_SIZE = 64 * 1024 * 1024;

/** The `config` object of a repository (docs/format.md, config). */
export interface RepositoryConfig {
  format: number;
  kind: 'hamal-repository';
  id: string;
  blockSize: number;
  hash: 'sha256';
  createdAt: string;
  /** Format 2: how chunks are named: SHA-256 of the plaintext, or HMAC-SHA-256 under a key of the repository. */
  chunkNames?: 'sha256' | 'hmac-sha256';
  /** Format 2: applied to chunks written from now on (each chunk records its own). */
  encryption?: Encryption;
  compression?: Compression;
  /**
   * `sealed` (set when a repository is created with encryption): manifests, partial
   * indexes and VM metadata are stored in the chunk envelope, their object key as
   * associated data, and a plain one is refused. Absent: stored as plain JSON.
   */
  documents?: 'sealed';
  /**
   * A repository with keys: HMAC-SHA-256 (hex) of the rest of this config in canonical
   * JSON, under a key derived from the master key. A config edited by anyone without
   * the key (encryption switched off, another block size) fails it.
   */
  mac?: string;
}

/** Whether a block size is one a repository can have: a multiple of 4096 up to 64 MiB. */
export function isBlockSize(n: unknown): n is number {
  return Number.isSafeInteger(n) && (n as number) >= MIN_BLOCK_SIZE && (n as number) <= MAX_BLOCK_SIZE && (n as number) % MIN_BLOCK_SIZE === 0;
}

/** The bytes a config's MAC covers: every field but `mac`, canonical JSON. */
export function configMacInput(config: RepositoryConfig): Buffer {
  const { mac: _mac, ...rest } = config;
  return Buffer.from(canonicalJson(rest));
}

/**
 * Checks a parsed config field by field; fails naming the field and what it holds. Every
 * field matters to a reader: `id` names journal folders on the proxy, `blockSize` sizes
 * every buffer and every restored block.
 */
export function checkConfig(c: unknown, location: string): RepositoryConfig {
  const bad = (field: string, what: string) =>
    new IntegrityError('CONFIG_INVALID', `repository config at ${location}: ${field} ${what}`, { subject: `config: ${field}` });
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw bad('(the whole)', 'is not a JSON object');
  const r = c as Record<string, unknown>;
  if (r.kind !== 'hamal-repository' || !FORMATS.includes(r.format as number)) {
    throw new IntegrityError(
      'FORMAT_UNKNOWN',
      `${location} holds a repository of kind ${String(r.kind)} format ${String(r.format)}; this hamal reads hamal-repository formats ${FORMATS.join(', ')}`,
      { subject: location },
    );
  }
  const shown = (v: unknown) => JSON.stringify(v)?.slice(0, 80) ?? String(v);
  if (typeof r.id !== 'string' || !/^[0-9a-f]{32}$/.test(r.id)) throw bad('id', `is ${shown(r.id)}, not 32 lowercase hex digits`);
  if (!isBlockSize(r.blockSize)) throw bad('blockSize', `is ${shown(r.blockSize)}, not a multiple of 4096 from 4096 to 64 MiB`);
  if (r.hash !== 'sha256') throw bad('hash', `is ${shown(r.hash)}, not "sha256"`);
  if (typeof r.createdAt !== 'string') throw bad('createdAt', 'is not a string');
  const oneOf = (field: string, values: unknown[]) => {
    if (!values.includes(r[field])) throw bad(field, `is ${shown(r[field])}, not one of ${values.map(shown).join(', ')}`);
  };
  if (r.format === 1) {
    for (const f of ['chunkNames', 'encryption', 'compression', 'documents', 'mac']) if (f in r) throw bad(f, 'is set in a format 1 repository (it has no transforms)');
  } else {
    oneOf('chunkNames', ['sha256', 'hmac-sha256']);
    oneOf('encryption', ['none', 'aes-256-gcm']);
    oneOf('compression', ['none', 'zstd']);
    oneOf('documents', [undefined, 'sealed']);
    // Encryption comes with keyed names, always, and with sealed documents since they exist
    // (encrypted repositories from before have none: their config MAC covers the absence).
    const encrypted = r.encryption !== 'none';
    if (encrypted !== (r.chunkNames === 'hmac-sha256') || (!encrypted && r.documents === 'sealed')) {
      throw bad('encryption', `${shown(r.encryption)} disagrees with chunkNames ${shown(r.chunkNames)} and documents ${shown(r.documents)}`);
    }
    if (r.mac !== undefined && (typeof r.mac !== 'string' || !/^[0-9a-f]{64}$/.test(r.mac))) throw bad('mac', `is ${shown(r.mac)}, not 64 hex digits`);
  }
  return r as unknown as RepositoryConfig;
}
