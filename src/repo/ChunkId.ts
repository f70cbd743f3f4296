import { createHash } from 'node:crypto';

/** Lowercase hex SHA-256 of a block's bytes: the chunk's name (docs/format.md, invariant 1). */
export type ChunkId = string;

export function chunkIdOf(data: Uint8Array): ChunkId {
  return createHash('sha256').update(data).digest('hex');
}

export function isChunkId(value: unknown): value is ChunkId {
  return typeof value === 'string' && /^[0-9a-f]{64}$/.test(value);
}

export function chunkKey(id: ChunkId): string {
  return `chunks/${id.slice(0, 2)}/${id}`;
}
