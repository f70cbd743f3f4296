import { HashWorkers, sharedBuffer } from '../repo/HashWorkers.ts';

/**
 * Block buffers reused across blocks, and across syncs and restores of one process. A
 * fresh 4 MiB buffer per block costs its page faults every time (measured: reading 2 GiB
 * into fresh buffers took 8x longer than into reused ones). They are in shared memory, so
 * the hash threads read blocks in place (HashWorkers), and shared process-wide: a buffer a
 * hash thread has seen lives on until that thread ends, so fresh buffers per sync would
 * add up in a service running for months. The free buffers of a size never outnumber the
 * most in use at once; after IDLE_MS with none taken or given back, and no hash thread
 * running, they are dropped (a thread still running would keep the ones it saw alive, and
 * the next sync would allocate fresh ones beside them), so an idle service holds none.
 */
export const IDLE_MS = 10_000;

class FreeList {
  readonly buffers: Buffer[] = [];
  /** Last take or give (ms): the trim waits for IDLE_MS past it. */
  used = 0;
  timer: ReturnType<typeof setTimeout> | null = null;
}

const free = new Map<number, FreeList>();

export class BufferPool {
  readonly size: number;
  private readonly _free: FreeList;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`buffer size must be a positive integer, got ${size}`);
    this.size = size;
    let list = free.get(size);
    if (!list) free.set(size, (list = new FreeList()));
    this._free = list;
  }

  /** A buffer of `size` bytes with unspecified content. */
  take(): Buffer {
    touch(this._free);
    return this._free.buffers.pop() ?? sharedBuffer(this.size);
  }

  /** Gives a buffer back. Precondition: nothing reads or writes it any more. */
  give(buf: Buffer): void {
    if (buf.length !== this.size || !(buf.buffer instanceof SharedArrayBuffer)) return;
    touch(this._free);
    this._free.buffers.push(buf);
  }
}

/**
 * Marks the list used; one timer per list (not one per block) drops its buffers once it
 * has been unused for IDLE_MS and no hash thread runs.
 */
function touch(list: FreeList): void {
  list.used = Date.now();
  if (list.timer) return;
  const trim = () => {
    const idleFor = Date.now() - list.used;
    if (idleFor < IDLE_MS || (HashWorkers.shared()?.running ?? 0) > 0) {
      list.timer = setTimeout(trim, Math.max(IDLE_MS - idleFor, 1000));
      list.timer.unref();
      return;
    }
    list.buffers.length = 0;
    list.timer = null;
  };
  list.timer = setTimeout(trim, IDLE_MS);
  list.timer.unref();
}
