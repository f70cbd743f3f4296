import { HamalError } from '../../errors.ts';
import type { Extent } from '../../streams/Extent.ts';

/** One getcbt answer, as the reference describes it: blocks of `sectorsPerBlock` x 512 bytes, one bit each. */
export interface CbtPage {
  startBlock: number;
  blockCount: number;
  sectorsPerBlock: number;
  /** Bits the bitmap holds (= blockCount). */
  bitCount: number;
  /** Base64; bit i (lowest bit of byte i/8 first) is block startBlock + i. */
  bitmap: string;
}

/**
 * The changed extents of one page, ascending, adjacent blocks merged and the last one
 * clipped to the capacity. A bitmap whose length disagrees with the blocks asked for is
 * an error naming the volume: trusting it could skip changed data.
 */
export function bitmapExtents(page: CbtPage, asked: { startBlock: number; blockCount: number }, capacity: number, volume: string): Extent[] {
  const bits = Buffer.from(typeof page.bitmap === 'string' ? page.bitmap : '', 'base64');
  if (page.startBlock !== asked.startBlock || page.bitCount !== asked.blockCount || bits.length * 8 < asked.blockCount || bits.length > Math.ceil(asked.blockCount / 8)) {
    throw new HamalError(
      'FC_BAD_BITMAP',
      `changed-block bitmap of volume ${volume}: asked blocks ${asked.startBlock}+${asked.blockCount}, got ${page.startBlock}+${page.bitCount} with ${bits.length * 8} bits`,
      { subject: volume },
    );
  }
  if (!Number.isSafeInteger(page.sectorsPerBlock) || page.sectorsPerBlock <= 0 || page.sectorsPerBlock > 1 << 24) throw new HamalError('FC_BAD_BITMAP', `changed-block bitmap of volume ${volume}: sectorsPerBlock ${page.sectorsPerBlock}`, { subject: volume });
  const blockBytes = page.sectorsPerBlock * 512;
  const out: Array<{ offset: number; length: number }> = [];
  for (let i = 0; i < asked.blockCount; i++) {
    if (!(bits[i >> 3]! & (1 << (i & 7)))) continue;
    const offset = (asked.startBlock + i) * blockBytes;
    if (offset >= capacity) break;
    const length = Math.min(blockBytes, capacity - offset);
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length });
  }
  return out;
}
