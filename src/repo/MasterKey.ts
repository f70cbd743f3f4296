import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { HamalError } from '../errors.ts';

/**
 * What opens an encrypted repository: a passphrase, or the bytes of a key file. Comes from
 * hamal.conf or the environment, never from the command line; never logged.
 */
export type RepositorySecret = { passphrase: string } | { keyFile: Uint8Array; path: string };

/** scrypt cost of a new wrapping: 2^17 x 8 x 128 bytes = 128 MiB and ~0.3 s, once per process (derive). */
const SCRYPT = { N: 2 ** 17, r: 8, p: 1 };

/** One wrapping of the master key, stored in the repository as `keys/<id>.json`. */
export interface KeyRecord {
  format: 1;
  id: string;
  kind: 'passphrase' | 'key-file';
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  /** AES-256-GCM of the 64-byte master key under the key scrypt derived: nonce, ciphertext, tag (base64). */
  nonce: string;
  wrapped: string;
  tag: string;
  createdAt: string;
}

/**
 * The repository's master key (64 random bytes), from which the two working keys are
 * derived with HKDF-SHA-256: one names chunks (HMAC-SHA-256 of their plaintext, so equal
 * blocks still deduplicate while names say nothing of content), one encrypts them.
 */
export class MasterKey {
  readonly encryptionKey: Buffer;
  private readonly _macKey: Buffer;
  private readonly _configKey: Buffer;

  private constructor(private readonly _bytes: Buffer) {
    this.encryptionKey = Buffer.from(hkdfSync('sha256', _bytes, Buffer.alloc(0), 'hamal chunk encryption', 32));
    this._macKey = Buffer.from(hkdfSync('sha256', _bytes, Buffer.alloc(0), 'hamal chunk names', 32));
    this._configKey = Buffer.from(hkdfSync('sha256', _bytes, Buffer.alloc(0), 'hamal repository config', 32));
  }

  static generate(): MasterKey {
    return new MasterKey(randomBytes(64));
  }

  /** A chunk's name: HMAC-SHA-256 of its plaintext, lowercase hex. */
  chunkId(data: Uint8Array): string {
    return createHmac('sha256', this._macKey).update(data).digest('hex');
  }

  /** The key chunk names are the HMAC under (for ChunkHasher, which may compute them on another thread). */
  get chunkNameKey(): Uint8Array {
    return this._macKey;
  }

  /** The MAC of a repository config's canonical bytes (RepositoryConfig.mac), lowercase hex. */
  configMac(bytes: Uint8Array): string {
    return createHmac('sha256', this._configKey).update(bytes).digest('hex');
  }

  /** Whether `mac` is the config MAC of `bytes` (compared in constant time). */
  checkConfigMac(bytes: Uint8Array, mac: string): boolean {
    const want = Buffer.from(this.configMac(bytes), 'hex');
    const got = Buffer.from(mac, 'hex');
    return got.length === want.length && timingSafeEqual(got, want);
  }

  /** Wraps this key under `secret` into a new key record. */
  async wrap(secret: RepositorySecret): Promise<KeyRecord> {
    const salt = randomBytes(32);
    const kek = await derive(secret, { ...SCRYPT, salt });
    const nonce = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', kek, nonce);
    const wrapped = Buffer.concat([cipher.update(this._bytes), cipher.final()]);
    return {
      format: 1,
      id: randomBytes(8).toString('hex'),
      kind: 'passphrase' in secret ? 'passphrase' : 'key-file',
      kdf: { name: 'scrypt', ...SCRYPT, salt: salt.toString('base64') },
      nonce: nonce.toString('base64'),
      wrapped: wrapped.toString('base64'),
      tag: cipher.getAuthTag().toString('base64'),
      createdAt: new Date().toISOString(),
    };
  }

  /** The master key a record wraps, or null when `secret` does not open it (the GCM tag says). */
  static async unwrap(record: KeyRecord, secret: RepositorySecret): Promise<MasterKey | null> {
    const k = record.kdf;
    if (k?.name !== 'scrypt' || ![k.N, k.r, k.p].every((v) => Number.isSafeInteger(v) && v > 0) || k.N < 2 || k.N > 2 ** 22 || (k.N & (k.N - 1)) !== 0 || k.r > 32 || k.p > 16) {
      throw new HamalError('KEY_CORRUPT', `key ${record.id}: unsupported or unsafe key derivation ${JSON.stringify(k)}`, { subject: `keys/${record.id}.json` });
    }
    const kek = await derive(secret, { N: k.N, r: k.r, p: k.p, salt: Buffer.from(k.salt, 'base64') });
    try {
      const decipher = createDecipheriv('aes-256-gcm', kek, Buffer.from(record.nonce, 'base64'));
      decipher.setAuthTag(Buffer.from(record.tag, 'base64'));
      const bytes = Buffer.concat([decipher.update(Buffer.from(record.wrapped, 'base64')), decipher.final()]);
      return bytes.length === 64 ? new MasterKey(bytes) : null;
    } catch {
      return null;
    }
  }

  /** Same key (compared in constant time): for tests and key rotation checks. */
  equals(other: MasterKey): boolean {
    return timingSafeEqual(createHash('sha256').update(this._bytes).digest(), createHash('sha256').update(other._bytes).digest());
  }
}

/**
 * Keys scrypt derived in this process: the service opens a repository again for each task,
 * and each derivation costs ~0.3 s of CPU and 128 MiB here. A passphrase stays in this
 * process anyway (the logger's redaction holds it), and while a repository is open so
 * does its master key; what this adds is a key file's derived key, kept until the process
 * ends. Named by an HMAC under a key of this process alone, so the names are no fast test
 * of a guessed passphrase for anyone reading this process's memory. A failed derivation
 * is not kept.
 */
const derived = new Map<string, Promise<Buffer>>();
const DERIVED_NAME_KEY = randomBytes(32);
/** Entries kept, least recently used dropped first: one per key record tried, a few repositories. */
const DERIVED_MAX = 32;
let derivations = 0;

/** scrypt runs in this process so far: for tests of the cache above. */
export function keyDerivations(): number {
  return derivations;
}

function derive(secret: RepositorySecret, k: { N: number; r: number; p: number; salt: Buffer }): Promise<Buffer> {
  const input = 'passphrase' in secret ? Buffer.from(secret.passphrase.normalize('NFC'), 'utf8') : Buffer.from(secret.keyFile);
  // Unambiguous: space-ended numbers, then the salt after its length, then the secret.
  const id = createHmac('sha256', DERIVED_NAME_KEY).update(`scrypt ${k.N} ${k.r} ${k.p} ${k.salt.length} `).update(k.salt).update(input).digest('hex');
  const known = derived.get(id);
  if (known) {
    derived.delete(id);
    derived.set(id, known);
    return known;
  }
  derivations++;
  const kek = new Promise<Buffer>((resolve, reject) =>
    scrypt(input, k.salt, 32, { N: k.N, r: k.r, p: k.p, maxmem: 256 * k.N * k.r + (1 << 20) }, (err, key) => (err ? reject(err) : resolve(key))),
  );
  if (derived.size >= DERIVED_MAX) derived.delete(derived.keys().next().value!);
  derived.set(id, kek);
  kek.catch(() => derived.get(id) === kek && derived.delete(id));
  return kek;
}
