import { randomBytes } from 'node:crypto';
import { SMALL_OBJECT_BYTES, putParts, type ObjectStore } from '../sinks/ObjectStore.ts';
import { HamalError, IntegrityError, NotFoundError, UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import { ChunkCodec, isEnveloped, type Compression, type Encryption } from './ChunkCodec.ts';
import { MasterKey, type KeyRecord, type RepositorySecret } from './MasterKey.ts';
import { zstd, type Zstd } from './Zstd.ts';
import { chunkKey, type ChunkId } from './ChunkId.ts';
import { ChunkHasher } from './ChunkHasher.ts';
import { BufferPool } from '../streams/BufferPool.ts';
import { encodeManifest, parseManifest, type Manifest } from './Manifest.ts';
import { isVersionId, newVersionId, type VersionId } from './VersionId.ts';
import { decodeName, encodeName } from './names.ts';
import { checkConfig, configMacInput, isBlockSize, type RepositoryConfig } from './RepositoryConfig.ts';
import { LeaseFence, type Lease } from './Lease.ts';
import { Journal } from './Journal.ts';
import { failpoint } from '../failpoints.ts';

/** Format 1: plain chunks named by SHA-256. Format 2: chunks with a transform header (docs/format.md). */
export const REPOSITORY_FORMAT = 2;
export const DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024;
/** Waits of 200 ms for another process's creation to write its config. */
const CREATION_WAITS = 25;
export type { RepositoryConfig } from './RepositoryConfig.ts';

/** The largest document (manifest, partial index, VM metadata) a sealed repository decompresses: about the longest string V8 parses as JSON. */
const MAX_DOCUMENT = 512 * 1024 * 1024;

export interface RepositoryOptions {
  /** Create the repository when the target holds none. @default false */
  create?: boolean;
  /**
   * Block size of a repository created now; ignored when it exists (its config wins).
   * Memory cost: every block in flight holds one buffer of this size.
   * @default 4 MiB
   */
  blockSize?: number;
  /**
   * Chunk encryption of a repository created now: AES-256-GCM under a random master key
   * that the repository stores only wrapped by `secret`. Cost: ~5% CPU (AES-NI).
   * @default 'none'
   */
  encryption?: Encryption;
  /**
   * Chunk compression of a repository created now; blocks that do not shrink are stored
   * as they are. Cost: zstd level 3 on every block that shrinks.
   * @default 'none'
   */
  compression?: Compression;
  /** Opens an encrypted repository (or creates one): asked only when needed. */
  secret?: () => Promise<RepositorySecret | undefined>;
  /** The secret of a repository created now, when it must pass checks `secret` need not (a minimum length). @default secret */
  newSecret?: () => Promise<RepositorySecret | undefined>;
  /** Open an encrypted repository whose config has no MAC yet (for `hamal key seal-config` only). @default false */
  unsealedConfig?: boolean;
  /**
   * Refuse an existing repository that is not encrypted (the operator asked for
   * encryption: writing plaintext chunks there would not be what they meant).
   * @default false
   */
  requireEncryption?: boolean;
}

/**
 * The repository format of docs/format.md on top of an ObjectStore: content-addressed
 * chunks shared by all disks, one manifest per disk version.
 */
export class Repository {
  readonly store: ObjectStore;
  readonly config: RepositoryConfig;
  /**
   * The chunk index: chunks known to exist, from one listing of `chunks/` (built on first
   * need) plus those this process wrote. Dedup asks it, not the store: no HEAD per block.
   */
  private readonly _known = new Set<ChunkId>();
  private _indexing: Promise<void> | undefined;
  /** The repository's generation when it was opened; prune bumps it. */
  private _openGeneration = 0;
  /** Chunks this process wrote: certainly there, whatever a prune elsewhere did. */
  private readonly _written = new Set<ChunkId>();
  /** Chunk writes under way, so two equal blocks in flight store once. */
  private readonly _writing = new Map<ChunkId, Promise<void>>();

  private readonly _codec: ChunkCodec | null;
  /** Buffers chunks are encoded into, in shared memory for the hash threads' cipher (process-wide, BufferPool). */
  private _encoded: BufferPool | null = null;
  private readonly _key: MasterKey | null;
  private readonly _hasher: ChunkHasher;

  private constructor(store: ObjectStore, config: RepositoryConfig, key: MasterKey | null, z: Zstd | null) {
    this.store = store;
    this.config = config;
    this._key = key;
    this._hasher = new ChunkHasher(key ? key.chunkNameKey : null);
    this._codec = config.format >= 2 ? new ChunkCodec(config.compression ?? 'none', config.encryption ?? 'none', key, z, config.blockSize) : null;
  }

  /** A block's chunk name in this repository (docs/format.md, invariant 1), on this thread. */
  chunkIdOf(data: Uint8Array): ChunkId {
    return this._hasher.nameNow(data);
  }

  /** The same name, on a hash thread when `data` is in shared memory (ChunkHasher); keep `data` unchanged until it resolves. */
  hashChunk(data: Uint8Array): Promise<ChunkId> {
    return this._hasher.name(data);
  }

  get blockSize(): number {
    return this.config.blockSize;
  }

  static async open(store: ObjectStore, options: RepositoryOptions = {}): Promise<Repository> {
    // Another process may be creating this repository right now: its key record is there
    // before its config (a few seconds at most).
    for (let wait = 0; ; wait++) {
      const raw = await readConfig(store);
      if (raw) return Repository._openExisting(store, raw, options);
      const first = await firstKey(store);
      if (first === null || (first.startsWith('keys/') && wait >= CREATION_WAITS)) break;
      if (!first.startsWith('keys/')) {
        throw new HamalError('NOT_A_REPOSITORY', `${store.location} holds objects (${first}, ...) but no hamal repository: refusing to write there`, { subject: store.location });
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    if (!options.create) {
      throw new NotFoundError('REPOSITORY_NOT_FOUND', `no hamal repository at ${store.location}`, { subject: store.location });
    }
    return (await Repository._create(store, options)) ?? Repository.open(store, { ...options, create: false });
  }

  /** A new repository; null when another process created one first (open that one). */
  private static async _create(store: ObjectStore, options: RepositoryOptions): Promise<Repository | null> {
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!isBlockSize(blockSize)) {
      throw new UsageError('BAD_BLOCK_SIZE', `block size ${blockSize} must be a multiple of 4096 up to 64 MiB`);
    }
    const encryption = options.encryption ?? 'none';
    const compression = options.compression ?? 'none';
    const plain = encryption === 'none' && compression === 'none';
    const config: RepositoryConfig = {
      format: plain ? 1 : 2,
      kind: 'hamal-repository',
      id: randomBytes(16).toString('hex'),
      blockSize,
      hash: 'sha256',
      createdAt: new Date().toISOString(),
      ...(plain ? {} : { chunkNames: encryption === 'none' ? 'sha256' : 'hmac-sha256', encryption, compression }),
      ...(encryption === 'none' ? {} : { documents: 'sealed' as const }),
    };
    let key: MasterKey | null = null;
    let record: KeyRecord | null = null;
    if (encryption !== 'none') {
      const secret = await (options.newSecret ?? options.secret)?.();
      if (!secret) throw new UsageError('PASSPHRASE_REQUIRED', `an encrypted repository at ${store.location} needs a passphrase or key file: set HAMAL_PASSPHRASE, or [hamal] passphrase_file or key_file in hamal.conf`, { subject: 'passphrase_file' });
      key = MasterKey.generate();
      // The key before the config: a config that exists is a repository that can be opened.
      record = await key.wrap(secret);
      await putKey(store, record);
      config.mac = key.configMac(configMacInput(config));
    }
    try {
      // Conditional: of two processes creating the repository at once, one config wins and
      // the other opens it (two configs, last one winning, left keys that open nothing).
      await store.put('config', Buffer.from(JSON.stringify(config, null, 2) + '\n'), { ifAbsent: true });
    } catch (err) {
      if ((err as HamalError).code !== 'OBJECT_EXISTS') throw err;
      if (record) await store.delete(`keys/${record.id}.json`);
      await store.flush();
      return null;
    }
    await store.flush();
    const z = compression === 'zstd' ? await zstd() : null;
    return new Repository(store, config, key, z); // generation 0: no prune yet
  }

  private static async _openExisting(store: ObjectStore, raw: Buffer, options: RepositoryOptions): Promise<Repository> {
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new IntegrityError('CONFIG_CORRUPT', `repository config at ${store.location} is not valid JSON`, {
        subject: 'config',
        cause: err,
      });
    }
    const config = checkConfig(parsed, store.location);
    // Keys make a repository encrypted whatever its config says: a config edited to say
    // "none" must not turn later syncs to plaintext (its MAC no longer matches).
    const keys = await keyNames(store);
    const keyed = keys.length > 0 || config.chunkNames === 'hmac-sha256' || (config.encryption ?? 'none') !== 'none';
    const key = keyed ? await unlock(store, keys, config, options) : null;
    if (options.requireEncryption && !key) {
      throw new UsageError(
        'REPOSITORY_NOT_ENCRYPTED',
        `the repository at ${store.location} is not encrypted, but [hamal] encryption asks for encryption: its chunks would be stored in the clear; use another target, or set encryption = none to write to this one`,
        { subject: '[hamal] encryption' },
      );
    }
    const z = config.format >= 2 ? await zstd() : null;
    const repo = new Repository(store, config, key, z);
    repo._openGeneration = await repo.generation();
    return repo;
  }

  /**
   * Adds the MAC to the config of an encrypted repository created before config MACs
   * existed (it was opened with `unsealedConfig`): the operator vouches that the config
   * is as they created it. Refused when it has one.
   */
  async sealConfig(): Promise<void> {
    if (!this._key) throw new UsageError('NOT_ENCRYPTED', `the repository at ${this.store.location} is not encrypted: its config has no MAC`);
    if (this.config.mac) throw new UsageError('CONFIG_SEALED', `the config of ${this.store.location} already has its MAC`);
    this.config.mac = this._key.configMac(configMacInput(this.config));
    await this.store.put('config', Buffer.from(JSON.stringify(this.config, null, 2) + '\n'));
    await this.store.flush();
  }

  /** The repository's generation when this process opened it (see generation()). */
  get openGeneration(): number {
    return this._openGeneration;
  }

  // ---- chunks

  /** The generation prune bumps before it deletes chunks (docs/format.md, Generation). */
  async generation(): Promise<number> {
    try {
      const n = Number((await this.store.get('generation', { maxBytes: SMALL_OBJECT_BYTES })).toString('utf8').trim());
      return Number.isSafeInteger(n) ? n : 0;
    } catch (err) {
      if (err instanceof NotFoundError) return 0;
      throw err;
    }
  }

  /** Lists `chunks/` once into the index. */
  private _index(): Promise<void> {
    this._indexing ??= (async () => {
      for await (const id of this.listChunks()) this._known.add(id);
    })();
    return this._indexing;
  }

  async hasChunk(id: ChunkId): Promise<boolean> {
    if (this._known.has(id)) return true;
    await this._index();
    return this._known.has(id);
  }

  /**
   * The chunks of `ids` the repository does not hold now, from one fresh listing of
   * `chunks/` (not a HEAD per chunk); chunks this process wrote count as there. For what
   * a prune may have deleted since it was vouched for (a journal, a partial index, the
   * index of an earlier generation).
   */
  async missingChunks(ids: Iterable<ChunkId | null>): Promise<Set<ChunkId>> {
    const missing = new Set<ChunkId>();
    for (const id of ids) if (id !== null && !this._written.has(id)) missing.add(id);
    if (missing.size === 0) return missing;
    for await (const id of this.listChunks()) missing.delete(id);
    for (const id of missing) this._known.delete(id);
    return missing;
  }

  /**
   * Stores `data` as chunk `id` unless the repository has it. Precondition: id = chunkIdOf(data).
   * `writtenBytes`: what went to the store (after compression and encryption); 0 when it had the chunk.
   */
  async storeChunk(id: ChunkId, data: Uint8Array): Promise<{ outcome: 'stored' | 'existing'; writtenBytes: number }> {
    const existing = { outcome: 'existing', writtenBytes: 0 } as const;
    const pending = this._writing.get(id);
    if (pending) {
      await pending;
      return existing;
    }
    if (await this.hasChunk(id)) return existing;
    // hasChunk awaited: another caller may have started the same write meanwhile.
    const again = this._writing.get(id);
    if (again) {
      await again;
      return existing;
    }
    const out = this._codec ? (this._encoded ??= new BufferPool(this.blockSize + ChunkCodec.OVERHEAD)).take() : undefined;
    let writtenBytes = 0;
    // Registered before the encoding's await: a second caller with the same block waits for this write.
    const write = (async () => {
      const parts = this._codec ? await this._codec.encodeOffThread(id, data, out!) : [data];
      writtenBytes = parts.reduce((n, part) => n + part.length, 0);
      await putParts(this.store, chunkKey(id), parts, this._codec ? {} : { sha256: id }, out);
      this._known.add(id);
      this._written.add(id);
    })();
    this._writing.set(id, write);
    try {
      await write;
    } finally {
      this._writing.delete(id);
      if (out) this._encoded!.give(out);
    }
    return { outcome: 'stored', writtenBytes };
  }

  /**
   * A chunk's plaintext, checked against its name unless `verify` is false; an encrypted
   * chunk's tag is checked whatever `verify` says. `into` (blockSize + ChunkCodec.OVERHEAD
   * bytes) is where the store may read it: the result may be a view of it.
   */
  async readChunk(id: ChunkId, verify = true, into?: Buffer): Promise<Buffer> {
    // Never more than a block (plus its envelope) is read, whatever is stored under the name.
    const get = () => this.store.get(chunkKey(id), { into, maxBytes: this.blockSize + (this._codec ? ChunkCodec.OVERHEAD : 0) });
    const stored = await get();
    const data = this._codec
      ? await this._codec.decodeOffThread(id, chunkKey(id), stored, undefined, into).catch(async (err: HamalError) => {
          // The thread decrypting or decompressing in place failed: read it again, decode it here.
          if (err.code !== 'HASH_THREAD_FAILED') throw err;
          return this._codec!.decode(id, chunkKey(id), await get());
        })
      : stored;
    if (verify && (await this.hashChunk(data)) !== id) {
      throw new IntegrityError('CHUNK_CORRUPT', `chunk ${chunkKey(id)} does not match its hash`, {
        subject: chunkKey(id),
      });
    }
    return data;
  }

  async *listChunks(): AsyncIterable<ChunkId> {
    for await (const key of this.store.list('chunks/')) {
      const id = key.slice(key.lastIndexOf('/') + 1);
      if (/^[0-9a-f]{64}$/.test(id)) yield id;
    }
  }

  async deleteChunk(id: ChunkId): Promise<void> {
    this._known.delete(id);
    this._written.delete(id);
    await this.store.delete(chunkKey(id));
  }

  /** Tells syncs elsewhere that chunks may go: their indexes are stale from now. */
  async bumpGeneration(): Promise<number> {
    const next = (await this.generation()) + 1;
    await this.store.put('generation', Buffer.from(`${next}\n`));
    await this.store.flush();
    return next;
  }

  // ---- versions

  private _versionsPrefix(vm: string, disk: string): string {
    return `vms/${encodeName(vm)}/disks/${encodeName(disk)}/versions/`;
  }

  async listVms(): Promise<string[]> {
    const vms = new Set<string>();
    for await (const key of this.store.list('vms/')) {
      const vm = this._nameIn(key, 1);
      if (vm !== null) vms.add(vm);
    }
    return [...vms].sort();
  }

  async listDisks(vm: string): Promise<string[]> {
    const disks = new Set<string>();
    for await (const key of this.store.list(`vms/${encodeName(vm)}/disks/`)) {
      const disk = this._nameIn(key, 3);
      if (disk !== null) disks.add(disk);
    }
    return [...disks].sort();
  }

  /**
   * The name in segment `at` of a listed key, or null (reported once, naming the key) when
   * it is not one hamal writes: malformed or non-canonical percent-encoding, or missing.
   */
  private _nameIn(key: string, at: number): string | null {
    const segment = key.split('/')[at];
    let name: string | undefined;
    try {
      name = segment === undefined || segment === '' ? undefined : decodeName(segment);
    } catch {
      name = undefined;
    }
    if (name !== undefined && encodeName(name) === segment) return name;
    if (!this._strays.has(key)) {
      this._strays.add(key);
      log.child('repository').warn(`${key} in ${this.store.location} is not named as hamal names objects: skipped`, { key });
    }
    return null;
  }

  private readonly _strays = new Set<string>();

  /** Version ids of one disk, oldest first. */
  async listVersions(vm: string, disk: string): Promise<VersionId[]> {
    const prefix = this._versionsPrefix(vm, disk);
    const ids: VersionId[] = [];
    for await (const key of this.store.list(prefix)) {
      const name = key.slice(prefix.length);
      if (name.endsWith('.json') && isVersionId(name.slice(0, -5))) ids.push(name.slice(0, -5));
    }
    return ids.sort();
  }

  async latestVersion(vm: string, disk: string): Promise<VersionId | null> {
    const ids = await this.listVersions(vm, disk);
    return ids.length ? ids[ids.length - 1]! : null;
  }

  /** Reads a manifest; `version` may be `latest`. */
  async readManifest(vm: string, disk: string, version: VersionId | 'latest'): Promise<Manifest> {
    const id = version === 'latest' ? await this.latestVersion(vm, disk) : version;
    const where = `vm ${vm} disk ${disk} version ${version}`;
    if (id === null) throw new NotFoundError('VERSION_NOT_FOUND', `no versions of ${`vm ${vm} disk ${disk}`} in ${this.store.location}`, { subject: where });
    let bytes: Buffer;
    try {
      bytes = await this.store.get(this._versionsPrefix(vm, disk) + id + '.json', { maxBytes: MAX_DOCUMENT + ChunkCodec.OVERHEAD });
    } catch (err) {
      if (err instanceof NotFoundError) {
        throw new NotFoundError('VERSION_NOT_FOUND', `no ${where} in ${this.store.location}`, { subject: where });
      }
      throw err;
    }
    const key = `${this._versionsPrefix(vm, disk)}${id}.json`;
    const manifest = parseManifest(this._openDocument(key, bytes), key, { vm, disk, version: id, blockSize: this.blockSize });
    for (const chunk of manifest.blocks) if (chunk !== null) this._known.add(chunk);
    return manifest;
  }

  // ---- versions in flight (docs/format.md, Partial indexes and leases)

  private _diskPrefix(vm: string, disk: string): string {
    return `vms/${encodeName(vm)}/disks/${encodeName(disk)}/`;
  }

  /** Stores the checkpointed journal of a version in progress, so another proxy can resume it. */
  async putPartial(vm: string, disk: string, journalBytes: Uint8Array): Promise<void> {
    const key = this._diskPrefix(vm, disk) + 'partial';
    await this.store.put(key, this._sealDocument(key, journalBytes));
    await this.store.flush();
  }

  /** The partial index of a disk's version in progress, or null. */
  async getPartial(vm: string, disk: string): Promise<Buffer | null> {
    try {
      const key = this._diskPrefix(vm, disk) + 'partial';
      return this._openDocument(key, await this.store.get(key, { maxBytes: MAX_DOCUMENT + ChunkCodec.OVERHEAD }));
    } catch (err) {
      if (err instanceof NotFoundError) return null;
      throw err;
    }
  }

  async deletePartial(vm: string, disk: string): Promise<void> {
    await this.store.delete(this._diskPrefix(vm, disk) + 'partial');
  }

  /** Disks of one VM (or of all VMs) with a partial index. */
  async listPartials(vm?: string): Promise<Array<{ vm: string; disk: string }>> {
    const out: Array<{ vm: string; disk: string }> = [];
    for await (const key of this.store.list(vm === undefined ? 'vms/' : `vms/${encodeName(vm)}/disks/`)) {
      const parts = key.split('/');
      if (parts.length !== 5 || parts[2] !== 'disks' || parts[4] !== 'partial') continue;
      const [name, disk] = [this._nameIn(key, 1), this._nameIn(key, 3)];
      if (name !== null && disk !== null) out.push({ vm: name, disk });
    }
    return out;
  }

  /** Snapshot ids the partial indexes of one VM name (unverified: a hint for the source). */
  async partialSnapshotIds(vm: string): Promise<string[]> {
    const ids: string[] = [];
    for (const p of await this.listPartials(vm)) {
      const bytes = await this.getPartial(p.vm, p.disk);
      const header = bytes && Journal.headerOf(bytes.subarray(0, 4096));
      if (header && typeof header.snapshotId === 'string') ids.push(header.snapshotId);
    }
    return ids;
  }

  /** The fence of one disk for a sync under `lease`. */
  fence(vm: string, disk: string, lease: Lease): LeaseFence {
    return new LeaseFence(this.store, this._diskPrefix(vm, disk) + 'lease.json', lease, `vm ${vm} disk ${disk}`);
  }

  /**
   * Makes a version visible: flushes the store (its chunks are durable), checks no prune
   * took chunks the index vouched for, then writes the manifest, never over another.
   * `fence` is checked last, just before the manifest is written.
   */
  async commitVersion(manifest: Manifest, fence?: LeaseFence): Promise<void> {
    await this.store.flush();
    // A prune since this process opened the repository may have taken chunks its index,
    // journal or parent vouched for: one listing says which are still there.
    if ((await this.generation()) !== this._openGeneration) {
      const missing = [...(await this.missingChunks(manifest.blocks))];
      if (missing.length) {
        throw new HamalError(
          'CHUNKS_PRUNED',
          `a prune deleted ${missing.length} chunks that version ${manifest.version} of ${manifest.vm}/${manifest.disk} needs (first: ${chunkKey(missing[0]!)}); nothing was committed: run the sync again`,
          { subject: chunkKey(missing[0]!), retryable: true },
        );
      }
    }
    await fence?.check();
    failpoint('manifest.write');
    const key = this._versionsPrefix(manifest.vm, manifest.disk) + manifest.version + '.json';
    await this.store.put(key, this._sealDocument(key, encodeManifest(manifest)), { ifAbsent: true });
    await this.store.flush();
  }

  /** Stores a VM sync's metadata beside its versions; returns the key. */
  async putVmMetadata(vm: string, doc: { createdAt: string }): Promise<string> {
    const key = `vms/${encodeName(vm)}/metadata/${newVersionId(new Date(doc.createdAt))}.json`;
    await this.store.put(key, this._sealDocument(key, Buffer.from(JSON.stringify(doc, null, 2))));
    await this.store.flush();
    return key;
  }

  /** The VM metadata documents stored for `vm` (keys, oldest first). */
  async listVmMetadata(vm: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const k of this.store.list(`vms/${encodeName(vm)}/metadata/`)) if (k.endsWith('.json')) keys.push(k);
    return keys.sort();
  }

  /** One VM metadata document, opened (see listVmMetadata). */
  async getVmMetadata(key: string): Promise<unknown> {
    const bytes = this._openDocument(key, await this.store.get(key, { maxBytes: MAX_DOCUMENT + ChunkCodec.OVERHEAD }));
    try {
      return JSON.parse(bytes.toString('utf8'));
    } catch (err) {
      throw new IntegrityError('METADATA_CORRUPT', `VM metadata ${key} is not valid JSON`, { subject: key, cause: err });
    }
  }

  // ---- documents: sealed in an encrypted repository (RepositoryConfig.documents)

  private _sealDocument(key: string, plain: Uint8Array): Uint8Array {
    return this.config.documents === 'sealed' ? this._codec!.encode(key, plain) : plain;
  }

  private _openDocument(key: string, stored: Buffer): Buffer {
    if (this.config.documents !== 'sealed') return stored;
    // A plain document in a sealed repository was not written by its key holders.
    if (!isEnveloped(stored)) throw new IntegrityError('DOCUMENT_NOT_SEALED', `${key} is stored in the clear in an encrypted repository: not written by hamal with its key`, { subject: key });
    return this._codec!.decode(key, key, stored, MAX_DOCUMENT);
  }

  // ---- keys (docs/format.md, Keys)

  async listKeys(): Promise<KeyRecord[]> {
    const out: KeyRecord[] = [];
    for (const k of await keyNames(this.store)) out.push(await readKey(this.store, k));
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /** Wraps the master key under one more secret; rewrites no chunk. Returns the new key's id. */
  async addKey(secret: RepositorySecret): Promise<string> {
    if (!this._key) throw new UsageError('NOT_ENCRYPTED', `the repository at ${this.store.location} is not encrypted: it has no keys`);
    const record = await this._key.wrap(secret);
    await putKey(this.store, record);
    await this.store.flush();
    return record.id;
  }

  /** Removes one wrapping; the last one cannot go (the repository would be lost). */
  async removeKey(id: string): Promise<void> {
    const keys = await this.listKeys();
    if (!keys.some((k) => k.id === id)) throw new NotFoundError('KEY_NOT_FOUND', `no key ${id} in ${this.store.location} (it has ${keys.map((k) => k.id).join(', ')})`, { subject: id });
    if (keys.length === 1) throw new UsageError('LAST_KEY', `key ${id} is the last key of ${this.store.location}: add another before removing it`, { subject: id });
    await this.store.delete(`keys/${id}.json`);
    await this.store.flush();
  }

  async deleteVersion(vm: string, disk: string, version: VersionId): Promise<void> {
    await this.store.delete(this._versionsPrefix(vm, disk) + version + '.json');
  }
}

async function putKey(store: ObjectStore, record: KeyRecord): Promise<void> {
  await store.put(`keys/${record.id}.json`, Buffer.from(JSON.stringify(record, null, 2) + '\n'), { ifAbsent: true });
}

/** The key records of a repository (keys/<id>.json). */
async function keyNames(store: ObjectStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const k of store.list('keys/')) if (k.endsWith('.json')) keys.push(k);
  return keys;
}

async function readKey(store: ObjectStore, key: string): Promise<KeyRecord> {
  try {
    return JSON.parse((await store.get(key, { maxBytes: SMALL_OBJECT_BYTES })).toString('utf8')) as KeyRecord;
  } catch (err) {
    if (err instanceof HamalError) throw err;
    throw new IntegrityError('KEY_CORRUPT', `${key} in ${store.location} is not valid JSON`, { subject: key, cause: err });
  }
}

/**
 * The master key of an encrypted repository: the key record `secret` opens whose master
 * key authenticates the config (RepositoryConfig.mac). With `unsealedConfig`, a config
 * without a MAC is let through (`hamal key seal-config`).
 */
async function unlock(store: ObjectStore, keys: string[], config: RepositoryConfig, options: RepositoryOptions): Promise<MasterKey> {
  const secret = await options.secret?.();
  if (!secret) {
    throw new UsageError('PASSPHRASE_REQUIRED', `the repository at ${store.location} is encrypted: set HAMAL_PASSPHRASE, or [hamal] passphrase_file or key_file in hamal.conf`, { subject: 'passphrase_file' });
  }
  const input = configMacInput(config);
  let opened = 0;
  for (const k of keys) {
    const key = await MasterKey.unwrap(await readKey(store, k), secret);
    if (!key) continue;
    opened++;
    if (config.mac ? key.checkConfigMac(input, config.mac) : options.unsealedConfig) return key;
  }
  if (opened && !config.mac) {
    throw new IntegrityError(
      'CONFIG_NOT_AUTHENTICATED',
      `repository config at ${store.location} has no MAC: it was written by a hamal from before config MACs, or changed by someone without the repository's key (encryption ${JSON.stringify(config.encryption ?? 'none')}, block size ${config.blockSize}). If it is as you created it, run hamal key seal-config --target ${store.location}`,
      { subject: 'config' },
    );
  }
  if (opened) {
    throw new IntegrityError(
      'CONFIG_NOT_AUTHENTICATED',
      `repository config at ${store.location} does not match its MAC: it was changed by someone without the repository's key (encryption ${JSON.stringify(config.encryption ?? 'none')}, block size ${config.blockSize}); refusing to use it`,
      { subject: 'config' },
    );
  }
  const what = 'passphrase' in secret ? 'the passphrase given' : `key file ${secret.path}`;
  throw new HamalError('WRONG_PASSPHRASE', `none of the ${keys.length} key(s) of the repository at ${store.location} opens with ${what}`, { subject: store.location });
}

async function readConfig(store: ObjectStore): Promise<Buffer | undefined> {
  try {
    return await store.get('config', { maxBytes: SMALL_OBJECT_BYTES });
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
}

/** Some object of the store (keys first: a creation under way), or null when it is empty. */
async function firstKey(store: ObjectStore): Promise<string | null> {
  let other: string | null = null;
  for await (const key of store.list('')) {
    if (!key.startsWith('keys/')) return key;
    other ??= key;
  }
  return other;
}
