import { HamalError, type HamalErrorOptions } from '../errors.ts';

/**
 * A block of an exported version could not be read (its chunk missing, corrupt, or the
 * store unreachable): the NBD client gets EIO at `offset`, never other bytes. `subject`
 * is the chunk key; the message names the VM, disk, version and block.
 */
export class BlockReadError extends HamalError {
  /** Byte offset in the export of the block at fault. */
  readonly offset: number;

  constructor(code: string, message: string, offset: number, options: HamalErrorOptions = {}) {
    super(code, message, options);
    this.offset = offset;
  }
}
