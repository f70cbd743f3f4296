import { createHash } from 'node:crypto';
import { IntegrityError } from '../errors.ts';
import { canonicalJson } from '../canonicalJson.ts';
import { isChunkId, type ChunkId } from './ChunkId.ts';
import type { VersionId } from './VersionId.ts';

/**
 * Format 1. `digest` was added without a format bump: readers of earlier releases ignore
 * it (so proxies of two releases can share a repository during an upgrade), this one
 * checks it wherever it is present.
 */
export const MANIFEST_FORMAT = 1;

/** What one sync of one disk did, in bytes (docs/format.md, Manifest). */
export interface VersionStats {
  /** Bytes read from the source. */
  readBytes: number;
  /** Bytes of blocks whose content differs from the parent (all non-zero data without one). */
  changedBytes: number;
  /** Bytes of the blocks whose chunks this sync wrote (logical: before compression). */
  storedBytes: number;
  /**
   * Bytes this sync wrote to the store for those chunks: after compression and encryption,
   * what they take on the target. Absent in manifests written before it existed.
   */
  writtenBytes?: number;
  /** Bytes of non-zero blocks read whose chunk the repository already had. */
  dedupBytes: number;
  /** Bytes of zero blocks in this version (holes and zero blocks read). */
  zeroBytes: number;
  /**
   * Bytes of the parent's chunks read back from the repository to patch blocks of which
   * only parts changed (DiskSyncOptions.patchBelow): not read from the source. Absent in
   * manifests written before it existed.
   */
  parentReadBytes?: number;
  /** Bytes taken from the journal of an interrupted run of this sync, not read again. */
  resumedBytes?: number;
  /**
   * Why a version with a parent was read in full rather than as changes since it (a full
   * sync asked for, change tracking reset or refused, the capacity changed). Absent for an
   * incremental version, a first version, and in manifests written before it existed.
   */
  fullReason?: string;
  durationMs: number;
}

/** One version of one disk: a complete block map. `null` = zero block. */
export interface Manifest {
  format: number;
  vm: string;
  disk: string;
  version: VersionId;
  parent: VersionId | null;
  createdAt: string;
  capacity: number;
  blockSize: number;
  source: { platform: string; snapshotId: string; changeId: string | null };
  stats: VersionStats;
  blocks: Array<ChunkId | null>;
  /**
   * SHA-256 (hex) of the canonical JSON of every other field, checked on every read, so
   * bit rot (a flipped digit, two entries swapped) is found, not restored. Not a defence
   * against someone who can write the repository: sealed documents are. Absent only in
   * manifests written before it existed.
   */
  digest?: string;
}

/** What the reader of a manifest knows it must say: where it was found, in which repository. */
export interface ManifestExpectation {
  vm: string;
  disk: string;
  version: VersionId;
  blockSize: number;
}

function digestOf(manifest: Manifest): string {
  const { digest: _digest, ...rest } = manifest;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
}

/** The stored bytes of a manifest (before sealing), with its digest. */
export function encodeManifest(manifest: Manifest): Buffer {
  const { digest: _digest, ...rest } = manifest;
  return Buffer.from(JSON.stringify({ ...rest, digest: digestOf(manifest) }));
}

/**
 * Parses and checks a stored manifest; `where` names it in errors. With `expect`, it must
 * describe the version it was found as (a manifest copied under another disk's or
 * version's key is refused) and have the repository's block size.
 */
export function parseManifest(bytes: Uint8Array, where: string, expect?: ManifestExpectation): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new IntegrityError('MANIFEST_CORRUPT', `manifest ${where} is not valid JSON`, { subject: where, cause: err });
  }
  const bad = (what: string) =>
    new IntegrityError('MANIFEST_CORRUPT', `manifest ${where}: ${what}`, { subject: where });
  if (typeof m !== 'object' || m === null) throw bad('not an object');
  if (m.format !== MANIFEST_FORMAT) {
    throw new IntegrityError(
      'FORMAT_UNKNOWN',
      `manifest ${where} has format ${m.format}; this hamal reads format ${MANIFEST_FORMAT}`,
      { subject: where },
    );
  }
  if ('digest' in m && m.digest !== digestOf(m)) throw bad('content does not match its digest (damaged)');
  if (!Number.isSafeInteger(m.capacity) || m.capacity < 0) throw bad(`bad capacity ${JSON.stringify(m.capacity)}`);
  if (!Number.isSafeInteger(m.blockSize) || m.blockSize <= 0) throw bad(`bad blockSize ${JSON.stringify(m.blockSize)}`);
  if (!Array.isArray(m.blocks) || m.blocks.length !== Math.ceil(m.capacity / m.blockSize)) {
    throw bad(`${Array.isArray(m.blocks) ? m.blocks.length : 'no'} block entries, but capacity ${m.capacity} / blockSize ${m.blockSize} needs ${Math.ceil(m.capacity / m.blockSize)}`);
  }
  for (const b of m.blocks) if (b !== null && !isChunkId(b)) throw bad(`bad block entry ${JSON.stringify(b)}`);
  if (expect) {
    if (m.blockSize !== expect.blockSize) throw bad(`blockSize ${m.blockSize} is not the repository's ${expect.blockSize}`);
    for (const f of ['vm', 'disk', 'version'] as const) {
      if (m[f] !== expect[f]) throw bad(`says ${f} ${JSON.stringify(m[f])} where it is stored as ${JSON.stringify(expect[f])}`);
    }
  }
  return m;
}
