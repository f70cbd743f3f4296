import { Observable, type OperatorFunction } from 'rxjs';
import type { Extent } from './Extent.ts';
import { blockAt, type BlockRef } from './BlockRef.ts';
import { HamalError } from '../errors.ts';

/**
 * Aligns extents to blocks of `blockSize` and merges overlaps: each block touched by any
 * extent is emitted once, in ascending order, with the parts of it the extents cover
 * (BlockRef.parts). A block is emitted once an extent past it arrives or the extents
 * complete, since until then another extent may add a part to it: at most one block is
 * held back, nothing else is collected. Extents past `capacity` are clipped.
 *
 * Precondition: extents arrive in ascending `offset` order, as CBT, `rbd diff` and CBT
 * bitmaps all report them; an extent that starts before its predecessor is an error,
 * because accepting it would silently drop the blocks it covers. `where` names the disk
 * in those errors.
 */
export function toBlocks(blockSize: number, capacity: number, where = 'a disk'): OperatorFunction<Extent, BlockRef> {
  if (!Number.isSafeInteger(blockSize) || blockSize <= 0) {
    throw new RangeError(`toBlocks: blockSize must be a positive integer, got ${blockSize}`);
  }
  return (extents) =>
    new Observable<BlockRef>((subscriber) => {
      let next = 0; // lowest block index neither emitted nor held
      let lastOffset = -1;
      // The highest block touched so far, held back with its parts.
      let held: { index: number; parts: Array<{ offset: number; length: number }> } | null = null;
      const release = () => {
        if (!held) return;
        const { index, parts } = held;
        held = null;
        const ref = blockAt(index, capacity, blockSize);
        subscriber.next(parts.length === 1 && parts[0].length === ref.length ? ref : { ...ref, parts });
      };
      return extents.subscribe({
        next(extent) {
          // A NaN or negative figure from a source (a parse slip, a hostile reply) would
          // otherwise drop its blocks without a word: the loop below never runs for it.
          if (!isByteCount(extent.offset) || !isByteCount(extent.length)) {
            subscriber.error(
              new HamalError(
                'EXTENT_INVALID',
                `${where}: extent at offset ${extent.offset} with length ${extent.length}: offsets and lengths must be non-negative integers`,
                { subject: where },
              ),
            );
            return;
          }
          if (extent.offset < lastOffset) {
            subscriber.error(
              new HamalError(
                'EXTENT_ORDER',
                `${where}: extent at offset ${extent.offset} arrived after one at ${lastOffset}: sources must report extents in ascending order`,
                { subject: where },
              ),
            );
            return;
          }
          lastOffset = extent.offset;
          const end = Math.min(extent.offset + extent.length, capacity);
          if (end <= extent.offset) return;
          const last = Math.floor((end - 1) / blockSize);
          for (let index = Math.floor(extent.offset / blockSize); index <= last && !subscriber.closed; index++) {
            const start = Math.max(extent.offset, index * blockSize);
            const stop = Math.min(end, (index + 1) * blockSize);
            if (held?.index === index) {
              addPart(held.parts, start, stop);
              continue;
            }
            // Emitted already: the extent that made it so covered it from an offset at or
            // before this one to its end, so this part adds nothing.
            if (index < next) continue;
            release();
            held = { index, parts: [{ offset: start, length: stop - start }] };
            next = index + 1;
          }
        },
        error: (err) => subscriber.error(err),
        complete: () => {
          release();
          subscriber.complete();
        },
      });
    });
}

function isByteCount(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

/** Adds [start, stop) to ascending disjoint parts; `start` is at or after the last part's start. */
function addPart(parts: Array<{ offset: number; length: number }>, start: number, stop: number): void {
  const last = parts[parts.length - 1];
  if (start <= last.offset + last.length) last.length = Math.max(last.length, stop - last.offset);
  else parts.push({ offset: start, length: stop - start });
}
