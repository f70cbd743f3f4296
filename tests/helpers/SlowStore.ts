// Test instrumentation, not a fake: the real FsStore with a delay before each put, so a
// test can make the target slow (bounded memory) or kill a sync part way (resume).
import type { GetOptions, ObjectStore, PutOptions } from '../../src/sinks/ObjectStore.ts';

export class SlowStore implements ObjectStore {
  readonly location: string;
  chunkPuts = 0;
  constructor(
    private readonly inner: ObjectStore,
    private readonly delayMs: number,
    private readonly flushDelayMs = 0,
  ) {
    this.location = inner.location;
  }
  async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    if (key.startsWith('chunks/')) await new Promise((r) => setTimeout(r, this.delayMs));
    if (key.startsWith('chunks/')) this.chunkPuts++;
    return this.inner.put(key, body, options);
  }
  get(key: string, options?: GetOptions) {
    return this.inner.get(key, options);
  }
  head(key: string) {
    return this.inner.head(key);
  }
  list(prefix: string) {
    return this.inner.list(prefix);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  async flush() {
    if (this.flushDelayMs) await new Promise((r) => setTimeout(r, this.flushDelayMs));
    return this.inner.flush();
  }
  close() {
    return this.inner.close();
  }
}
