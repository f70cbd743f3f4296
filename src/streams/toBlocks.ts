import { Observable, type OperatorFunction } from 'rxjs';
import type { Extent } from './Extent.ts';
import { blockAt, type BlockRef } from './BlockRef.ts';
import { HamalError } from '../errors.ts';

/**
 * Aligns extents to blocks of `blockSize` and merges overlaps: each block touched by any
 * extent is emitted once, in ascending order, as soon as the extent that first touches it
 * arrives (nothing is collected first). Extents past `capacity` are clipped.
 *
 * Precondition: extents arrive in ascending `offset` order, as CBT, `rbd diff` and CBT
 * bitmaps all report them; an extent that starts before its predecessor is an error,
 * because accepting it would silently drop the blocks it covers.
 */
export function toBlocks(blockSize: number, capacity: number): OperatorFunction<Extent, BlockRef> {
  if (!Number.isSafeInteger(blockSize) || blockSize <= 0) {
    throw new RangeError(`toBlocks: blockSize must be a positive integer, got ${blockSize}`);
  }
  return (extents) =>
    new Observable<BlockRef>((subscriber) => {
      let next = 0; // lowest block index not yet emitted
      let lastOffset = -1;
      return extents.subscribe({
        next(extent) {
          if (extent.offset < lastOffset) {
            subscriber.error(
              new HamalError(
                'EXTENT_ORDER',
                `extent at offset ${extent.offset} arrived after one at ${lastOffset}: sources must report extents in ascending order`,
              ),
            );
            return;
          }
          lastOffset = extent.offset;
          const end = Math.min(extent.offset + extent.length, capacity);
          if (end <= extent.offset) return;
          const first = Math.max(Math.floor(extent.offset / blockSize), next);
          const last = Math.floor((end - 1) / blockSize);
          for (let index = first; index <= last && !subscriber.closed; index++) {
            subscriber.next(blockAt(index, capacity, blockSize));
          }
          next = Math.max(next, last + 1);
        },
        error: (err) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
    });
}
