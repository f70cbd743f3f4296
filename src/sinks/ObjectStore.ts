import { copyBytes } from '../copyBytes.ts';

/**
 * The object-store contract every target implements (directory, S3). Keys are
 * `/`-separated relative paths of URL-safe segments; the repository decides them.
 *
 * Preconditions and guarantees every implementation must keep:
 * - `put` is atomic: a reader sees the whole object or none of it, never a prefix.
 * - `put` is idempotent: writing the same key with the same bytes again is harmless.
 * - An object is durable once `flush()` resolved after its `put` resolved; the
 *   repository flushes before it commits anything that points at earlier objects.
 * - `get` and `head` of a missing key: NotFoundError and `null` respectively.
 * - `delete` of a missing key succeeds.
 * - `list(prefix)` yields every key under the prefix, in no particular order, and never
 *   a temporary object.
 * - `get` with `maxBytes` never reads more: a larger object is an IntegrityError naming
 *   it (OBJECT_TOO_LARGE), so a planted or damaged object cannot make a reader allocate
 *   without bound.
 */
export interface PutOptions {
  /** Lowercase hex SHA-256 of the body when the caller has it (a chunk's id): saves hashing it again. */
  sha256?: string;
  /** Fail with OBJECT_EXISTS instead of replacing an existing object (manifests). */
  ifAbsent?: boolean;
}

export interface GetOptions {
  /**
   * Where the store may read the object: it returns a view of it when the object fits (no
   * fresh allocation per chunk); the caller must not reuse it while it uses the result.
   */
  into?: Buffer;
  /** The most bytes the object may hold (what the caller expects of it). @default no limit */
  maxBytes?: number;
}

/** Bound for the small documents of a repository: config, keys, locks, leases, generation. */
export const SMALL_OBJECT_BYTES = 1024 * 1024;

export interface ObjectStore {
  /** Where the store points, printable: never holds a secret. */
  readonly location: string;
  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void>;
  /**
   * put of the parts concatenated, where the store can write them without joining them
   * first (a chunk's 5-byte header and its block). Optional: putParts() joins them for a
   * store without it.
   */
  putParts?(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<void>;
  /** The object's bytes (see GetOptions). */
  get(key: string, options?: GetOptions): Promise<Buffer>;
  head(key: string): Promise<{ size: number } | null>;
  list(prefix: string): AsyncIterable<string>;
  /**
   * Entries `list` met and did not yield because they are not objects (a link or special
   * file in a directory store), by key. What they hide is unknown, so a caller that would
   * act on an absence (prune) must refuse while there are any. None when absent.
   */
  skipped?(): readonly string[];
  delete(key: string): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Stores `parts` as one object: by the store's own putParts when it has one, else joined,
 * in `room` when it is large enough (a pooled buffer: no fresh 4 MiB per chunk), else in a
 * fresh buffer. A part already where the join puts it (a header written into `room`) stays.
 */
export function putParts(store: ObjectStore, key: string, parts: readonly Uint8Array[], options?: PutOptions, room?: Uint8Array): Promise<void> {
  if (store.putParts) return store.putParts(key, parts, options);
  if (parts.length === 1) return store.put(key, parts[0]!, options);
  const size = parts.reduce((n, part) => n + part.length, 0);
  const dst = room && room.length >= size ? room : Buffer.allocUnsafe(size);
  let at = 0;
  for (const part of parts) {
    if (part.buffer !== dst.buffer || part.byteOffset !== dst.byteOffset + at) copyBytes(part, dst, at);
    at += part.length;
  }
  return store.put(key, dst.subarray(0, size), options);
}
