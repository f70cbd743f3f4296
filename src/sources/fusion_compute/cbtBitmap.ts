import { HamalError } from '../../errors.ts';
import type { Extent } from '../../streams/Extent.ts';

/**
 * One getcbt answer (eSDK model VMVolumeCBT): blocks of `sectorOfBlock` x 512 bytes, one
 * bit each for `bitNum` blocks from the page's start (fewer than asked where the disk
 * ends), `bit1Num` of them set.
 */
export interface CbtPage {
  sectorOfBlock: number;
  bitNum: number;
  bit1Num: number;
  bitMap?: string;
}

/**
 * The bitmap's bytes; bit i of byte k is block 8k + i (VMVolumeCBT: "the low bit of each
 * byte is the lower block"). Its javadoc gives the length as roundup(bitNum / 4)
 * characters, which is hex (two characters a byte); base64, which other readings of the
 * reference assume, is accepted too, since the two cannot be confused: hex must have
 * exactly 2 x bytes characters of [0-9a-f], padded base64 exactly 4 x ceil(bytes / 3) with
 * its `=`, and both only count when they decode to `bit1Num` set bits. An odd hex length
 * (bitNum not a multiple of 8) is refused: the sources do not say which nibble comes first.
 */
/** A value of an untrusted answer, safe to put in a message whatever it is. */
const shown = (v: unknown) => (typeof v === 'number' || typeof v === 'string' ? String(v).slice(0, 40) : typeof v);

export function bitmapBytes(page: CbtPage, volume: string): Buffer {
  const bytes = Math.ceil(page.bitNum / 8);
  const text = typeof page.bitMap === 'string' ? page.bitMap : '';
  const bad = (why: string) => new HamalError('FC_BAD_BITMAP', `changed-block bitmap of volume ${volume}: ${why}`, { subject: volume });
  let bits: Buffer;
  if (/^[0-9a-fA-F]*$/.test(text) && text.length === 2 * bytes) bits = Buffer.from(text, 'hex');
  else if (/^[A-Za-z0-9+/]*={0,2}$/.test(text) && text.length === 4 * Math.ceil(bytes / 3) && Buffer.from(text, 'base64').length === bytes) bits = Buffer.from(text, 'base64');
  else throw bad(`${page.bitNum} blocks want ${2 * bytes} hex or ${4 * Math.ceil(bytes / 3)} base64 characters, got ${text.length}`);
  let set = 0;
  for (let i = 0; i < page.bitNum; i++) if (bits[i >> 3]! & (1 << (i & 7))) set++;
  if (set !== page.bit1Num) throw bad(`bit1Num says ${shown(page.bit1Num)} changed blocks, the bitmap has ${set}`);
  return bits;
}

/**
 * The changed extents of one page that starts at block `startBlock` (a multiple of 8),
 * ascending, in whole bitmap bytes (8 blocks), adjacent ones merged and the last clipped
 * to the capacity. An answer that cannot be read as
 * the blocks asked for is an error naming the volume: trusting it could skip changed data.
 */
export function bitmapExtents(page: CbtPage, asked: { startBlock: number; blockNum: number }, capacity: number, volume: string): Extent[] {
  if (!Number.isSafeInteger(page.sectorOfBlock) || page.sectorOfBlock <= 0 || page.sectorOfBlock > 1 << 24) {
    throw new HamalError('FC_BAD_BITMAP', `changed-block bitmap of volume ${volume}: sectorOfBlock ${shown(page.sectorOfBlock)}`, { subject: volume });
  }
  if (!Number.isSafeInteger(page.bitNum) || page.bitNum < 0 || page.bitNum > asked.blockNum) {
    throw new HamalError('FC_BAD_BITMAP', `changed-block bitmap of volume ${volume}: asked ${asked.blockNum} blocks from ${asked.startBlock}, got bitNum ${shown(page.bitNum)}`, { subject: volume });
  }
  const bits = bitmapBytes(page, volume);
  const blockBytes = page.sectorOfBlock * 512;
  const out: Extent[] = [];
  // A byte with any bit set stands for all its 8 blocks: the order of the bits inside a
  // byte (and of the hex digits) is the part the sources leave open, and a wrong guess
  // would move changed blocks. At 64 KiB blocks a byte is 512 KiB, inside one hamal block.
  for (let k = 0; k * 8 < page.bitNum; k++) {
    if (!bits[k]) continue;
    const offset = (asked.startBlock + k * 8) * blockBytes;
    if (offset >= capacity) break;
    const length = Math.min(8 * blockBytes, capacity - offset);
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) (last as { length: number }).length += length;
    else out.push({ offset, length });
  }
  return out;
}
