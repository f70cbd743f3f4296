import type { Writable } from 'node:stream';

/**
 * Writes Ceph's incremental image stream, `rbd diff v1` (Ceph's doc/dev/rbd-diff.rst, the
 * format `rbd export-diff` writes and `rbd import-diff` reads): the header, the metadata
 * records (from snapshot, to snapshot, image size), then data records (`w` offset length
 * bytes, `z` offset length) in any order, then `e`. import-diff refuses a stream whose from
 * snapshot the image lacks, and creates the to snapshot only after the `e` record: a stream
 * cut short leaves the image without it.
 */
export class RbdDiffWriter {
  private _ended = false;

  constructor(
    private readonly _out: Writable,
    meta: { fromSnap: string | null; toSnap: string; size: number },
  ) {
    this._push(Buffer.from('rbd diff v1\n', 'latin1'));
    if (meta.fromSnap !== null) this._push(nameRecord('f', meta.fromSnap));
    this._push(nameRecord('t', meta.toSnap));
    const s = Buffer.alloc(9);
    s.write('s', 0, 'latin1');
    s.writeBigUInt64LE(BigInt(meta.size), 1);
    this._push(s);
  }

  /**
   * `w`: these bytes at `offset`. Resolves once the pipe took them: the caller may reuse
   * `bytes` then (a Writable keeps a reference, not a copy, until it is written).
   */
  data(offset: number, bytes: Uint8Array): Promise<void> {
    // Head and bytes are pushed together, before any await: concurrent callers' records never interleave.
    this._push(rangeRecord('w', offset, bytes.length));
    return this._written(bytes);
  }

  /** `z`: `length` bytes of zeros at `offset` (Ceph discards or zeroes them). */
  zero(offset: number, length: number): Promise<void> {
    return this._written(rangeRecord('z', offset, length));
  }

  /** `e`, then the end of the stream: import-diff takes the to snapshot. */
  end(): Promise<void> {
    this._push(Buffer.from('e', 'latin1'));
    return this.cut();
  }

  /** Ends the stream without `e`: import-diff fails and takes no to snapshot. */
  cut(): Promise<void> {
    if (this._ended) return Promise.resolve();
    this._ended = true;
    return new Promise((resolve) => this._out.end(resolve));
  }

  private _push(b: Uint8Array, done?: (err?: Error | null) => void): void {
    if (this._ended) throw new Error('rbd diff stream already ended');
    this._out.write(b, done);
  }

  /** Settles when `b` was written to the pipe, or the pipe failed (rbd exited: its status says why). */
  private _written(b: Uint8Array): Promise<void> {
    return new Promise((resolve) => this._push(b, () => resolve()));
  }
}

function nameRecord(tag: 'f' | 't', name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(5 + n.length);
  b.write(tag, 0, 'latin1');
  b.writeUInt32LE(n.length, 1);
  n.copy(b, 5);
  return b;
}

function rangeRecord(tag: 'w' | 'z', offset: number, length: number): Buffer {
  const b = Buffer.alloc(17);
  b.write(tag, 0, 'latin1');
  b.writeBigUInt64LE(BigInt(offset), 1);
  b.writeBigUInt64LE(BigInt(length), 9);
  return b;
}
