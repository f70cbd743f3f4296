import { IntegrityError } from '../errors.ts';
import { isChunkId, type ChunkId } from './ChunkId.ts';
import type { VersionId } from './VersionId.ts';

export const MANIFEST_FORMAT = 1;

/** What one sync of one disk did, in bytes (docs/format.md, Manifest). */
export interface VersionStats {
  /** Bytes read from the source. */
  readBytes: number;
  /** Bytes of blocks whose content differs from the parent (all non-zero data without one). */
  changedBytes: number;
  /** Bytes of chunks this sync wrote. */
  storedBytes: number;
  /** Bytes of non-zero blocks read whose chunk the repository already had. */
  dedupBytes: number;
  /** Bytes of zero blocks in this version (holes and zero blocks read). */
  zeroBytes: number;
  /** Bytes taken from the journal of an interrupted run of this sync, not read again. */
  resumedBytes?: number;
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
}

export function encodeManifest(manifest: Manifest): Buffer {
  return Buffer.from(JSON.stringify(manifest));
}

/** Parses and checks a stored manifest; `where` names it in errors. */
export function parseManifest(bytes: Uint8Array, where: string): Manifest {
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
  if (!Number.isSafeInteger(m.capacity) || m.capacity < 0) throw bad('bad capacity');
  if (!Number.isSafeInteger(m.blockSize) || m.blockSize <= 0) throw bad('bad blockSize');
  if (!Array.isArray(m.blocks) || m.blocks.length !== Math.ceil(m.capacity / m.blockSize)) {
    throw bad('block list does not match capacity');
  }
  for (const b of m.blocks) if (b !== null && !isChunkId(b)) throw bad(`bad block entry ${JSON.stringify(b)}`);
  return m;
}
