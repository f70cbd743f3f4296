import type { Extent } from './Extent.ts';

/**
 * One block of a disk to be read: block `index` covers bytes [offset, offset + length).
 * Every block is `blockSize` long except the last block of a disk whose capacity is not a
 * multiple of the block size.
 */
export interface BlockRef {
  readonly index: number;
  readonly offset: number;
  readonly length: number;
  /**
   * The parts of the block the source's extents cover (disk offsets, ascending, disjoint,
   * not adjacent) when they do not cover all of it: the rest is unchanged (incremental)
   * or zero (full). Absent: the whole block.
   */
  readonly parts?: readonly Extent[];
}

/** Number of blocks of a disk of `capacity` bytes. */
export function blockCount(capacity: number, blockSize: number): number {
  return Math.ceil(capacity / blockSize);
}

export function blockAt(index: number, capacity: number, blockSize: number): BlockRef {
  const offset = index * blockSize;
  return { index, offset, length: Math.min(blockSize, capacity - offset) };
}
