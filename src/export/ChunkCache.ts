import type { ChunkId } from '../repo/ChunkId.ts';
import { Slots } from '../streams/Slots.ts';

export interface ChunkCacheOptions {
  /**
   * Chunk plaintext kept, in bytes; every entry counts as one whole block. At least two
   * blocks are kept whatever this says. Memory: this, plus `fetchConcurrency` blocks
   * being fetched.
   * @default 256 MiB
   */
  maxBytes?: number;
  /**
   * Chunks fetched from the repository at once, demand reads and read-ahead together.
   * Memory: one block (plus its envelope) each.
   * @default 4
   */
  fetchConcurrency?: number;
}

/** What the cache did, for the log line at exit. */
export interface ChunkCacheStats {
  hits: number;
  misses: number;
  /** Requests that joined a fetch already under way for the same chunk. */
  shared: number;
  fetchedBytes: number;
  prefetched: number;
}

/**
 * A bounded LRU of chunk plaintext by chunk id. Concurrent requests for one chunk share
 * one fetch; a failed fetch is not kept (the next request tries again and sees the error
 * again). Read-ahead (`prefetch`) only uses fetch slots that demand reads leave free.
 */
export class ChunkCache {
  readonly maxEntries: number;
  readonly fetchConcurrency: number;
  readonly stats: ChunkCacheStats = { hits: 0, misses: 0, shared: 0, fetchedBytes: 0, prefetched: 0 };
  /** Insertion order is recency: the first key is the least recently used. */
  private readonly _entries = new Map<ChunkId, Buffer>();
  private readonly _pending = new Map<ChunkId, Promise<Buffer>>();
  private readonly _slots: Slots;

  constructor(
    private readonly _fetch: (id: ChunkId) => Promise<Buffer>,
    blockSize: number,
    options: ChunkCacheOptions = {},
  ) {
    const maxBytes = options.maxBytes ?? 256 * 1024 * 1024;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`maxBytes must be a whole number of bytes, got ${maxBytes}`);
    if (!Number.isSafeInteger(blockSize) || blockSize < 1) throw new RangeError(`blockSize must be a positive whole number, got ${blockSize}`);
    this.maxEntries = Math.max(2, Math.floor(maxBytes / blockSize));
    this.fetchConcurrency = options.fetchConcurrency ?? 4;
    this._slots = new Slots(this.fetchConcurrency, 'fetchConcurrency');
  }

  /** Fetches under way now. */
  get inFlight(): number {
    return this._pending.size;
  }

  get size(): number {
    return this._entries.size;
  }

  has(id: ChunkId): boolean {
    return this._entries.has(id) || this._pending.has(id);
  }

  /** The chunk's plaintext: from the cache, from a fetch under way, or fetched now. */
  get(id: ChunkId): Promise<Buffer> {
    const hit = this._entries.get(id);
    if (hit) {
      this._entries.delete(id);
      this._entries.set(id, hit);
      this.stats.hits++;
      return Promise.resolve(hit);
    }
    const pending = this._pending.get(id);
    if (pending) {
      this.stats.shared++;
      return pending;
    }
    this.stats.misses++;
    return this._start(id);
  }

  /** Starts fetching `id` when a fetch slot is free and nothing has it; never waits, never fails. */
  prefetch(id: ChunkId): void {
    if (this.has(id) || this._pending.size >= this.fetchConcurrency) return;
    this.stats.prefetched++;
    this._start(id).catch(() => undefined);
  }

  private _start(id: ChunkId): Promise<Buffer> {
    const p = this._slots.use(() => this._fetch(id)).then(
      (data) => {
        this._pending.delete(id);
        this.stats.fetchedBytes += data.length;
        this._insert(id, data);
        return data;
      },
      (err: unknown) => {
        this._pending.delete(id);
        throw err;
      },
    );
    this._pending.set(id, p);
    return p;
  }

  private _insert(id: ChunkId, data: Buffer): void {
    this._entries.delete(id);
    this._entries.set(id, data);
    while (this._entries.size > this.maxEntries) this._entries.delete(this._entries.keys().next().value!);
  }
}
