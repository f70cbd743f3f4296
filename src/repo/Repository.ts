import { randomBytes } from 'node:crypto';
import type { ObjectStore } from '../sinks/ObjectStore.ts';
import { IntegrityError, NotFoundError, UsageError } from '../errors.ts';
import { chunkIdOf, chunkKey, type ChunkId } from './ChunkId.ts';
import { encodeManifest, parseManifest, type Manifest } from './Manifest.ts';
import { isVersionId, type VersionId } from './VersionId.ts';
import { decodeName, encodeName } from './names.ts';

export const REPOSITORY_FORMAT = 1;
export const DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024;

export interface RepositoryConfig {
  format: number;
  kind: 'hamal-repository';
  id: string;
  blockSize: number;
  hash: 'sha256';
  createdAt: string;
}

export interface RepositoryOptions {
  /** Create the repository when the target holds none. @default false */
  create?: boolean;
  /**
   * Block size of a repository created now; ignored when it exists (its config wins).
   * Memory cost: every block in flight holds one buffer of this size.
   * @default 4 MiB
   */
  blockSize?: number;
}

/**
 * The repository format of docs/format.md on top of an ObjectStore: content-addressed
 * chunks shared by all disks, one manifest per disk version.
 */
export class Repository {
  readonly store: ObjectStore;
  readonly config: RepositoryConfig;
  /** Chunks known to exist: written or seen by this process. Saves a head per block. */
  private readonly _known = new Set<ChunkId>();
  /** Chunk writes under way, so two equal blocks in flight store once. */
  private readonly _writing = new Map<ChunkId, Promise<void>>();

  private constructor(store: ObjectStore, config: RepositoryConfig) {
    this.store = store;
    this.config = config;
  }

  get blockSize(): number {
    return this.config.blockSize;
  }

  static async open(store: ObjectStore, options: RepositoryOptions = {}): Promise<Repository> {
    let raw: Buffer | undefined;
    try {
      raw = await store.get('config');
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
    if (raw === undefined) {
      if (!options.create) {
        throw new NotFoundError('REPOSITORY_NOT_FOUND', `no hamal repository at ${store.location}`, {
          subject: store.location,
        });
      }
      const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
      if (!Number.isSafeInteger(blockSize) || blockSize < 4096 || blockSize % 4096 !== 0 || blockSize > 64 << 20) {
        throw new UsageError('BAD_BLOCK_SIZE', `block size ${blockSize} must be a multiple of 4096 up to 64 MiB`);
      }
      const config: RepositoryConfig = {
        format: REPOSITORY_FORMAT,
        kind: 'hamal-repository',
        id: randomBytes(16).toString('hex'),
        blockSize,
        hash: 'sha256',
        createdAt: new Date().toISOString(),
      };
      await store.put('config', Buffer.from(JSON.stringify(config, null, 2) + '\n'));
      await store.flush();
      return new Repository(store, config);
    }
    let config: RepositoryConfig;
    try {
      config = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new IntegrityError('CONFIG_CORRUPT', `repository config at ${store.location} is not valid JSON`, {
        cause: err,
      });
    }
    if (config.kind !== 'hamal-repository' || config.format !== REPOSITORY_FORMAT) {
      throw new IntegrityError(
        'FORMAT_UNKNOWN',
        `${store.location} holds a repository of kind ${config.kind} format ${config.format}; this hamal reads hamal-repository format ${REPOSITORY_FORMAT}`,
      );
    }
    return new Repository(store, config);
  }

  // ---- chunks

  async hasChunk(id: ChunkId): Promise<boolean> {
    if (this._known.has(id)) return true;
    if (await this.store.head(chunkKey(id))) {
      this._known.add(id);
      return true;
    }
    return false;
  }

  /** Stores `data` as chunk `id` unless the repository has it. Precondition: id = chunkIdOf(data). */
  async storeChunk(id: ChunkId, data: Uint8Array): Promise<'stored' | 'existing'> {
    const pending = this._writing.get(id);
    if (pending) {
      await pending;
      return 'existing';
    }
    if (await this.hasChunk(id)) return 'existing';
    // hasChunk awaited: another caller may have started the same write meanwhile.
    const again = this._writing.get(id);
    if (again) {
      await again;
      return 'existing';
    }
    const write = this.store.put(chunkKey(id), data).then(() => {
      this._known.add(id);
    });
    this._writing.set(id, write);
    try {
      await write;
    } finally {
      this._writing.delete(id);
    }
    return 'stored';
  }

  /** A chunk's bytes, checked against its name unless `verify` is false. */
  async readChunk(id: ChunkId, verify = true): Promise<Buffer> {
    const data = await this.store.get(chunkKey(id));
    if (verify && chunkIdOf(data) !== id) {
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
    await this.store.delete(chunkKey(id));
  }

  // ---- versions

  private _versionsPrefix(vm: string, disk: string): string {
    return `vms/${encodeName(vm)}/disks/${encodeName(disk)}/versions/`;
  }

  async listVms(): Promise<string[]> {
    const vms = new Set<string>();
    for await (const key of this.store.list('vms/')) vms.add(decodeName(key.split('/')[1]!));
    return [...vms].sort();
  }

  async listDisks(vm: string): Promise<string[]> {
    const disks = new Set<string>();
    for await (const key of this.store.list(`vms/${encodeName(vm)}/disks/`)) disks.add(decodeName(key.split('/')[3]!));
    return [...disks].sort();
  }

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
      bytes = await this.store.get(this._versionsPrefix(vm, disk) + id + '.json');
    } catch (err) {
      if (err instanceof NotFoundError) {
        throw new NotFoundError('VERSION_NOT_FOUND', `no ${where} in ${this.store.location}`, { subject: where });
      }
      throw err;
    }
    const manifest = parseManifest(bytes, `${this._versionsPrefix(vm, disk)}${id}.json`);
    for (const chunk of manifest.blocks) if (chunk !== null) this._known.add(chunk);
    return manifest;
  }

  /** Makes a version visible: flushes the store (its chunks are durable), then writes the manifest. */
  async commitVersion(manifest: Manifest): Promise<void> {
    await this.store.flush();
    await this.store.put(this._versionsPrefix(manifest.vm, manifest.disk) + manifest.version + '.json', encodeManifest(manifest));
    await this.store.flush();
  }

  async deleteVersion(vm: string, disk: string, version: VersionId): Promise<void> {
    await this.store.delete(this._versionsPrefix(vm, disk) + version + '.json');
  }
}
