import type { Duplex } from 'node:stream';

/** Bytes buffered past what a caller waits for before the socket is paused. */
const HIGH_WATER = 1024 * 1024;

/**
 * Exact byte counts pulled from a stream: `read(n)` resolves with n bytes, the stream is
 * paused whenever more than HIGH_WATER bytes wait unread, so a client that sends faster
 * than we answer is held back by TCP, not buffered here. Chunks are kept as a list and
 * joined only for the bytes a read takes (never concatenated on every 'data').
 */
export class SocketReader {
  private _stream: Duplex | null = null;
  private readonly _chunks: Buffer[] = [];
  private _buffered = 0;
  private _need = 0;
  private _wake: (() => void) | null = null;
  private _ended: Error | null = null;
  private readonly _onData = (chunk: Buffer) => {
    this._chunks.push(chunk);
    this._buffered += chunk.length;
    if (this._buffered > this._need + HIGH_WATER) this._stream?.pause();
    if (this._buffered >= this._need) this._notify();
  };
  private readonly _onEnd = (err?: Error) => {
    this._ended ??= err ?? new Error('connection closed');
    this._notify();
  };
  private readonly _onClose = () => this._onEnd();

  constructor(stream: Duplex) {
    this.attach(stream);
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this._buffered;
  }

  /** Reads from `stream` from now on (a TLS socket over the old one). */
  attach(stream: Duplex): void {
    this.detach();
    this._stream = stream;
    this._ended = null;
    stream.on('data', this._onData);
    stream.on('end', this._onClose);
    stream.on('close', this._onClose);
    stream.on('error', this._onEnd);
  }

  /** Stops reading the stream (paused, our listeners removed). */
  detach(): void {
    const s = this._stream;
    if (!s) return;
    s.pause();
    s.off('data', this._onData);
    s.off('end', this._onClose);
    s.off('close', this._onClose);
    s.off('error', this._onEnd);
    this._stream = null;
  }

  /** Stops reading for good: a read waiting now, and any later one, rejects. */
  close(): void {
    this.detach();
    this._onEnd(new Error('connection closed by the server'));
  }

  /** Exactly `n` bytes; rejects when the stream ends first. The result may be a view of a received chunk. */
  async read(n: number): Promise<Buffer> {
    // Nothing to wait for (a zero-length write's payload): there may be no chunk at all.
    if (n === 0) return Buffer.alloc(0);
    await this._fill(n);
    const first = this._chunks[0]!;
    if (first.length >= n) {
      this._consume(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    for (let at = 0; at < n; ) {
      const c = this._chunks[0]!;
      const take = Math.min(c.length, n - at);
      c.copy(out, at, 0, take);
      this._consume(take);
      at += take;
    }
    return out;
  }

  /** Discards `n` bytes without holding more than a chunk at a time (an oversized payload). */
  async skip(n: number): Promise<void> {
    for (let left = n; left > 0; ) {
      await this._fill(1);
      const take = Math.min(this._chunks[0]!.length, left);
      this._consume(take);
      left -= take;
    }
  }

  private async _fill(n: number): Promise<void> {
    while (this._buffered < n) {
      if (this._ended) throw this._ended;
      if (!this._stream) throw new Error('reader detached');
      this._need = n;
      this._stream.resume();
      await new Promise<void>((resolve) => (this._wake = resolve));
    }
    this._need = 0;
    if (this._buffered > HIGH_WATER) this._stream?.pause();
  }

  /** Drops `n` bytes from the first chunk (n <= its length). */
  private _consume(n: number): void {
    const c = this._chunks[0]!;
    if (n === c.length) this._chunks.shift();
    else this._chunks[0] = c.subarray(n);
    this._buffered -= n;
    if (this._buffered <= HIGH_WATER && this._need === 0 && this._ended === null) this._stream?.resume();
  }

  private _notify(): void {
    const w = this._wake;
    this._wake = null;
    w?.();
  }
}
