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
 */
export interface PutOptions {
  /** Lowercase hex SHA-256 of the body when the caller has it (a chunk's id): saves hashing it again. */
  sha256?: string;
  /** Fail with OBJECT_EXISTS instead of replacing an existing object (manifests). */
  ifAbsent?: boolean;
}

export interface ObjectStore {
  /** Where the store points, printable: never holds a secret. */
  readonly location: string;
  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void>;
  /**
   * The object's bytes. With `into`, a store may read them into it and return a view of
   * it when they fit (no fresh allocation per chunk); the caller must not reuse `into`
   * while it uses the result.
   */
  get(key: string, into?: Buffer): Promise<Buffer>;
  head(key: string): Promise<{ size: number } | null>;
  list(prefix: string): AsyncIterable<string>;
  delete(key: string): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}
