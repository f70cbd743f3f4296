/**
 * What an NBD server serves: a range of `size` bytes that can be read, asked for its
 * allocation and, when `writable`, written. The server checks every request against
 * `size` and its maximum payload before calling; implementations may rely on:
 *
 * - 0 <= offset, 0 < length, offset + length <= size, and length <= the max payload for
 *   read and write (write-zeroes, trim and cache may be longer);
 * - write, writeZeroes, trim and flush are called only when `writable`;
 * - calls run concurrently: an implementation serialises what must be (a block's
 *   copy-on-write), and a write that resolved is seen by every later read.
 *
 * A rejection becomes an error reply (EIO, or ENOSPC for a full disk); an error with an
 * `offset` in the request's range is reported at that offset.
 */
export interface NbdExport {
  readonly size: number;
  readonly writable: boolean;
  /** A power of two: requests aligned to it avoid read-modify-write (NBD_INFO_BLOCK_SIZE). */
  readonly preferredBlockSize: number;
  /** Pieces covering [offset, offset + length) in order; `data: null` reads as zeros. */
  read(offset: number, length: number): Promise<ExportPiece[]>;
  /** Consecutive extents from `offset` covering at most `length` bytes, at least one. */
  extents(offset: number, length: number): ExportExtent[];
  /** Starts (and may finish) fetching the range so later reads are fast; never changes data. */
  cache(offset: number, length: number): Promise<void>;
  write(offset: number, data: Buffer): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  /** A hint that the range is no longer needed: may do nothing. */
  trim(offset: number, length: number): Promise<void>;
  /** Every write that resolved before this call is on stable storage when it resolves. */
  flush(): Promise<void>;
}

export interface ExportPiece {
  offset: number;
  length: number;
  /** The bytes, or null for a range that reads as zeros (sent as a hole). */
  data: Buffer | null;
}

export interface ExportExtent {
  length: number;
  /** Never stored and reads as zeros (NBD_STATE_HOLE | NBD_STATE_ZERO); else data. */
  hole: boolean;
}
