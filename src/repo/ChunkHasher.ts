import { createHash, createHmac } from 'node:crypto';
import { HashWorkers } from './HashWorkers.ts';

/**
 * Names blocks: SHA-256, or HMAC-SHA-256 in an encrypted repository. A block in shared
 * memory (sharedBuffer: the sync's and the restore's block buffers) is hashed by
 * HashWorkers on another core; anything else, or a small block, on the calling thread.
 */
const SMALL = 256 * 1024;

export class ChunkHasher {
  /** `macKey` null: plain SHA-256; else HMAC-SHA-256 under it. */
  constructor(private readonly _macKey: Uint8Array | null) {}

  /** The block's name, lowercase hex. Keep `data` unchanged until it resolves. */
  async name(data: Uint8Array): Promise<string> {
    const workers = data.length >= SMALL && data.buffer instanceof SharedArrayBuffer ? HashWorkers.shared() : null;
    if (!workers) return this.nameNow(data);
    // A thread that died takes no block with it: hash it here instead.
    return workers.hash(data, this._macKey).catch(() => this.nameNow(data));
  }

  /** On the calling thread. */
  nameNow(data: Uint8Array): string {
    return (this._macKey ? createHmac('sha256', this._macKey) : createHash('sha256')).update(data).digest('hex');
  }
}
