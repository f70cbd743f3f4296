/**
 * Block buffers reused across blocks. A fresh 4 MiB buffer per block costs its page faults
 * every time (measured: reading 2 GiB into fresh buffers took 8x longer than into reused
 * ones). The pool never holds more buffers than were in use at once, so it adds no memory
 * beyond the pipeline's bound.
 */
export class BufferPool {
  readonly size: number;
  private readonly _free: Buffer[] = [];

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`buffer size must be a positive integer, got ${size}`);
    this.size = size;
  }

  /** A buffer of `size` bytes with unspecified content. */
  take(): Buffer {
    return this._free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  /** Gives a buffer back. Precondition: nothing reads or writes it any more. */
  give(buf: Buffer): void {
    if (buf.length === this.size) this._free.push(buf);
  }
}
