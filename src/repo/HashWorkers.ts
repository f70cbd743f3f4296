import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { zstdSources, type ZstdSources } from './Zstd.ts';

/** How ChunkCodec judges a block worth compressing (ChunkCodec.ts: MIN_SAVING, SAMPLE...). */
export interface PackJudge {
  level: number;
  sample: number;
  samples: number;
  sampleLevel: number;
  minSaving: number;
}

/**
 * Threads that hash blocks held in shared memory (SharedArrayBuffer), compress them (zstd)
 * and seal and open them (AES-256-GCM) for such repositories: the block is never copied, only a small
 * message goes each way, so the main thread keeps reading and writing while the other
 * cores hash. Measured here (2 cores, 2 GiB in 4 MiB blocks):
 * createHash on the main thread 1.6 s; two workers on shared buffers 1.1 s. WebCrypto's
 * digest was no better: it copies each block into fresh memory, and on these machines
 * first-touched pages cost more than the hash (300k page faults for 2 GiB).
 *
 * A shared buffer posted to a thread stays alive until that thread collects garbage,
 * which an idle thread hardly ever does: with fresh buffers per sync, the service's
 * memory grew by every sync's buffers (soak: 301 -> 1387 MiB in 500 cycles). So block
 * buffers are reused process-wide (BufferPool), and a thread idle for IDLE_MS ends, which
 * releases whatever it saw; the next block starts it again (about 30 ms).
 *
 * The worker's code is a string (`eval`), so it runs the same from the single binary,
 * which has no files to load a worker from. One pool per process, threads started on
 * first use; a thread holds the process only while it has work.
 */
const WORKER_CODE = `
const { parentPort } = require('node:worker_threads');
const { createHash, createHmac, createCipheriv, createDecipheriv } = require('node:crypto');
const SLICE = 64 * 1024;
// copyBytes.ts, for a fresh cipher output into shared memory: fill is a memcpy, copy is not.
const NATIVE_FILL = !('Deno' in globalThis);
function put(part, dst, at) {
  if (part.length >= 4096 && NATIVE_FILL) dst.fill(part, at, at + part.length);
  else dst.set(part, at);
  return part.length;
}
function seal({ buf, off, len, key, nonce, aad, out, outOff }) {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(Buffer.from(aad, 'latin1'));
  const src = Buffer.from(buf, off, len);
  const dst = Buffer.from(out);
  let at = outOff;
  for (let o = 0; o < len; o += SLICE) at += put(c.update(src.subarray(o, o + SLICE)), dst, at);
  at += put(c.final(), dst, at);
  at += put(c.getAuthTag(), dst, at);
  return at - outOff;
}
// In place: each slice's plaintext lands where its ciphertext began, never past what was read.
function open({ buf, off, len, key, nonce, aad, tag }) {
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(Buffer.from(aad, 'latin1'));
  d.setAuthTag(tag);
  const b = Buffer.from(buf, off, len);
  let at = 0;
  for (let o = 0; o < len; o += SLICE) at += put(d.update(b.subarray(o, o + SLICE)), b, at);
  try {
    at += put(d.final(), b, at);
  } catch {
    return -1;
  }
  return at;
}
// zstd: the package's glue evaluated here over its compiled module (Zstd.ts, zstdSources),
// sent with a thread's first pack. Synchronous: the module is instantiated, not compiled.
// The glue's own error printing is kept off stderr; its cause travels in the error.
let Z = null;
let zstdFailed = null;
function loadZstd({ glue, wasm }) {
  let cause = null;
  const settings = {
    printErr: () => {},
    instantiateWasm: (imports, receive) => {
      try {
        const instance = new WebAssembly.Instance(wasm, imports);
        receive(instance);
        return instance.exports;
      } catch (err) {
        cause = err;
        throw err;
      }
    },
  };
  const m = { exports: {} };
  new Function('exports', 'module', 'Module', glue)(m.exports, m, settings);
  const z = m.exports.Module;
  let ready = false;
  z.onRuntimeInitialized = () => { ready = true; };
  z.init();
  if (!ready) throw new Error('zstd did not start' + (cause ? ': ' + cause.message : ''));
  return z;
}
function withZstd(m) {
  if (m.zstd) {
    try { Z = loadZstd(m.zstd); } catch (err) { zstdFailed = err; }
  }
  if (!Z) throw zstdFailed || new Error('zstd is not loaded on this thread');
}
// The heap of an instance that trapped may be corrupt: this thread runs zstd no more.
function guarded(fn, m) {
  withZstd(m);
  try {
    return fn(m);
  } catch (err) {
    if (err instanceof WebAssembly.RuntimeError) {
      Z = null;
      zstdFailed = err;
    }
    throw err;
  }
}
// ZSTD_error_memory_allocation (zstd_errors.h): the heap could not grow, no fault of the data.
const ZSTD_ERROR_MEMORY = 64;
function heapAlloc(n) {
  const p = Z._malloc(n);
  if (!p) throw new Error('zstd: out of memory for ' + n + ' bytes');
  return p;
}
// src copied into the heap beside dstSize bytes for the result; fn(at, dst) runs on both,
// which are freed after. Copies in and out of the heap go with fill (memcpy).
function inHeap(src, dstSize, fn) {
  const at = heapAlloc(src.length);
  let dst = 0;
  try {
    dst = heapAlloc(dstSize);
    Buffer.from(Z.HEAPU8.buffer, at, src.length).fill(src);
    return fn(at, dst);
  } finally {
    Z._free(at);
    if (dst) Z._free(dst);
  }
}
function heapOut(dst, n, out, outOff) {
  if (n > 0) Buffer.from(out, outOff, n).fill(Buffer.from(Z.HEAPU8.buffer, dst, n));
  return n;
}
// The frame's length of src compressed; copied into out at outOff when it is at most
// limit bytes, else -1. Without out (a sample), only the length.
function zcompress(src, level, out, outOff, limit) {
  const bound = Z._ZSTD_compressBound(src.length);
  return inHeap(src, bound, (at, dst) => {
    const n = Z._ZSTD_compress(dst, bound, at, src.length, level);
    if (Z._ZSTD_isError(n)) throw new Error('zstd: compression failed (error ' + -n + ')');
    if (out === null) return n;
    return n > limit ? -1 : heapOut(dst, n, out, outOff);
  });
}
// ChunkCodec's judgement (samples first, then the whole block): the frame's length, written
// to out at outOff, or -1 when the block is stored as it is.
function pack(m) {
  const src = Buffer.from(m.buf, m.off, m.len);
  if (m.len > m.sample * m.samples * 2) {
    let packed = 0;
    for (let k = 0; k < m.samples; k++) {
      const at = Math.floor((k * (m.len - m.sample)) / (m.samples - 1));
      packed += zcompress(src.subarray(at, at + m.sample), m.sampleLevel, null, 0, 0);
    }
    if (packed > m.sample * m.samples * (1 - m.minSaving)) return -1;
  }
  return zcompress(src, m.level, m.out, m.outOff, Math.floor(m.len * (1 - m.minSaving)));
}
// The frame is copied into the heap first, so out may overlap it (the chunk's own buffer),
// and out is written only once it decompressed. The plaintext's length, or minus zstd's
// error code when the frame does not decompress within m.max bytes.
function unpack(m) {
  return inHeap(Buffer.from(m.buf, m.off, m.len), m.max, (at, dst) => {
    const n = Z._ZSTD_decompress(dst, m.max, at, m.len);
    if (!Z._ZSTD_isError(n)) return heapOut(dst, n, m.out, m.outOff);
    if (-n === ZSTD_ERROR_MEMORY) throw new Error('zstd: out of memory decompressing');
    return n;
  });
}
parentPort.on('message', (m) => {
  try {
    if (m.op === 'pack') return parentPort.postMessage({ id: m.id, n: guarded(pack, m) });
    if (m.op === 'unpack') return parentPort.postMessage({ id: m.id, n: guarded(unpack, m) });
    if (m.op === 'seal') return parentPort.postMessage({ id: m.id, n: seal(m) });
    if (m.op === 'open') return parentPort.postMessage({ id: m.id, n: open(m) });
    const h = m.key ? createHmac('sha256', m.key) : createHash('sha256');
    parentPort.postMessage({ id: m.id, hex: h.update(new Uint8Array(m.buf, m.off, m.len)).digest('hex') });
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String(err && err.message || err) });
  }
});`;

/**
 * A job that failed inside a thread still running (zstd not loaded there, out of memory),
 * as against the thread ending. pack and unpack write their output last, so after this
 * one of theirs wrote nothing.
 */
export class ThreadJobError extends Error {}

/** Threads of the pool: one per core, at most 4 (more only queue on two cores). */
export const HASH_THREADS = Math.max(1, Math.min(4, availableParallelism()));

/** How long a thread without work lives on: restarting costs ~30 ms, living on holds the buffers it saw. */
export const IDLE_MS = 10_000;

interface Job {
  resolve: (result: string | number) => void;
  reject: (err: Error) => void;
}

class Thread {
  readonly jobs = new Map<number, Job>();
  /** Ended by us for being idle: its exit is no failure. */
  retired = false;
  idle: ReturnType<typeof setTimeout> | null = null;
  /** zstd's sources were sent to it (with its first pack). */
  zstd = false;
  constructor(
    readonly worker: Worker,
    readonly slot: number,
  ) {}
}

export class HashWorkers {
  private static _shared: HashWorkers | null | undefined;
  private readonly _threads: Array<Thread | null>;
  private _next = 0;
  private _seq = 0;
  private _broken: Error | null = null;
  /** Replaced by a pool of another size: each thread ends as soon as it has no job. */
  private _replaced = false;

  private constructor(count: number) {
    this._threads = Array.from({ length: count }, () => null);
  }

  /** The process's pool, or null once a thread failed (then callers hash inline). */
  static shared(): HashWorkers | null {
    HashWorkers._shared ??= new HashWorkers(HashWorkers._count);
    return HashWorkers._shared._broken ? null : HashWorkers._shared;
  }

  private static _count = HASH_THREADS;

  /**
   * Threads of the process's pool (`[hamal] hash_threads`); 0: HASH_THREADS. A pool already
   * running with another size is replaced: its threads finish their jobs and end when idle.
   */
  static configure(threads: number): void {
    if (!Number.isSafeInteger(threads) || threads < 0) throw new RangeError(`hash threads must be a whole number from 0, got ${threads}`);
    HashWorkers._count = threads || HASH_THREADS;
    if (HashWorkers._shared && HashWorkers._shared._threads.length !== HashWorkers._count) {
      HashWorkers._shared._replace();
      HashWorkers._shared = undefined;
    }
  }

  /** Threads the pool may run at once. */
  get size(): number {
    return this._threads.length;
  }

  /** Threads running now (ended idle ones not counted). */
  get running(): number {
    return this._threads.filter((t) => t !== null).length;
  }

  /** Hex SHA-256 (or HMAC-SHA-256 under `key`) of `data`, whose memory is a SharedArrayBuffer. */
  hash(data: Uint8Array, key: Uint8Array | null): Promise<string> {
    return this._run({ buf: data.buffer, off: data.byteOffset, len: data.length, key: key && own(key) }) as Promise<string>;
  }

  /**
   * AES-256-GCM of `plain` under `key`, `nonce` and `aad` (latin1), written with its
   * 16-byte tag into `out` at `outOffset`; resolves with the bytes written. Both in shared
   * memory.
   */
  seal(plain: Uint8Array, key: Uint8Array, nonce: Uint8Array, aad: string, out: Buffer, outOffset: number): Promise<number> {
    return this._run({ op: 'seal', buf: plain.buffer, off: plain.byteOffset, len: plain.length, key: own(key), nonce: own(nonce), aad, out: out.buffer, outOff: out.byteOffset + outOffset }) as Promise<number>;
  }

  /**
   * zstd of `plain` as ChunkCodec judges it (`judge`): the frame is written into `out` at
   * `outOffset` and its length resolved, or -1 when the block is to be stored as it is.
   * Both in shared memory. Rejects where the threads cannot run zstd (zstdSources).
   */
  async pack(plain: Uint8Array, out: Buffer, outOffset: number, judge: PackJudge): Promise<number> {
    const zstd = await zstdSources();
    if (!zstd) throw new Error('zstd cannot run on the hash threads here');
    return this._run({ op: 'pack', buf: plain.buffer, off: plain.byteOffset, len: plain.length, out: out.buffer, outOff: out.byteOffset + outOffset, ...judge }, zstd) as Promise<number>;
  }

  /**
   * The zstd frame `frame` decompressed into `out` (which may overlap it) from its start:
   * resolves with the plaintext's length, or -1 when the frame does not decompress within
   * `max` bytes (out holds at least that many). Both in shared memory.
   */
  async unpack(frame: Uint8Array, out: Uint8Array, max: number): Promise<number> {
    const zstd = await zstdSources();
    if (!zstd) throw new Error('zstd cannot run on the hash threads here');
    return this._run({ op: 'unpack', buf: frame.buffer, off: frame.byteOffset, len: frame.length, out: out.buffer, outOff: out.byteOffset, max }, zstd) as Promise<number>;
  }

  /**
   * Decrypts `sealed` (AES-256-GCM) in place; resolves with the plaintext's length, or -1
   * when the tag does not match (then `sealed` holds garbage). In shared memory.
   */
  open(sealed: Uint8Array, key: Uint8Array, nonce: Uint8Array, aad: string, tag: Uint8Array): Promise<number> {
    return this._run({ op: 'open', buf: sealed.buffer, off: sealed.byteOffset, len: sealed.length, key: own(key), nonce: own(nonce), aad, tag: own(tag) }) as Promise<number>;
  }

  /** `zstd` goes with the message when the thread picked has not had it yet. */
  private _run(message: Record<string, unknown>, zstd?: ZstdSources): Promise<string | number> {
    let t: Thread;
    try {
      t = this._pick();
    } catch (err) {
      // No threads here (a runtime without worker_threads): callers hash inline from now on.
      this._broken ??= err as Error;
      return Promise.reject(err);
    }
    const id = this._seq++;
    return new Promise<string | number>((resolve, reject) => {
      if (t.idle) clearTimeout(t.idle);
      t.idle = null;
      if (t.jobs.size === 0) t.worker.ref();
      t.jobs.set(id, { resolve, reject });
      try {
        t.worker.postMessage({ ...message, id, ...(zstd && !t.zstd ? { zstd } : {}) });
        if (zstd) t.zstd = true;
      } catch (err) {
        t.jobs.delete(id);
        if (t.jobs.size === 0) this._idle(t);
        reject(err as Error);
      }
    });
  }

  /** The slot with the fewest jobs, its thread started if it had ended. */
  private _pick(): Thread {
    let best = this._next++ % this._threads.length;
    this._threads.forEach((t, i) => {
      if ((t?.jobs.size ?? 0) < (this._threads[best]?.jobs.size ?? 0)) best = i;
    });
    return (this._threads[best] ??= this._start(best));
  }

  private _start(slot: number): Thread {
    // execArgv []: none of the parent's flags (--input-type=module would make the code ESM, without require).
    const t = new Thread(new Worker(WORKER_CODE, { eval: true, execArgv: [] }), slot);
    // Unref'd while idle; once more when it is up (Node 20 keeps a worker that was unref'd
    // before it started alive once it starts: a process with an unused thread never ended).
    t.worker.unref();
    t.worker.on('online', () => {
      if (t.jobs.size === 0) t.worker.unref();
    });
    t.worker.on('message', (m: { id: number; hex?: string; n?: number; error?: string }) => {
      const job = t.jobs.get(m.id);
      if (!job) return;
      t.jobs.delete(m.id);
      if (t.jobs.size === 0) this._idle(t);
      if (m.error === undefined) job.resolve(m.hex ?? m.n!);
      else job.reject(new ThreadJobError(`hash thread: ${m.error}`));
    });
    const fail = (err: Error) => {
      if (this._threads[slot] === t) this._threads[slot] = null;
      if (t.retired) return;
      this._broken ??= err;
      for (const job of t.jobs.values()) job.reject(err);
      t.jobs.clear();
    };
    t.worker.on('error', fail);
    t.worker.on('messageerror', fail);
    t.worker.on('exit', (code) => fail(new Error(`hash thread exited with ${code}`)));
    return t;
  }

  /** Ends the idle threads now and the busy ones after their last job, so none outlives its pool. */
  private _replace(): void {
    this._replaced = true;
    for (const t of this._threads) if (t && t.jobs.size === 0) this._end(t);
  }

  /** No work left: lets the process end, and ends the thread if none comes within IDLE_MS. */
  private _idle(t: Thread): void {
    t.worker.unref();
    if (t.idle) clearTimeout(t.idle);
    if (this._replaced) return this._end(t);
    t.idle = setTimeout(() => t.jobs.size === 0 && this._end(t), IDLE_MS);
    t.idle.unref();
  }

  private _end(t: Thread): void {
    if (t.idle) clearTimeout(t.idle);
    t.idle = null;
    t.retired = true;
    if (this._threads[t.slot] === t) this._threads[t.slot] = null;
    void t.worker.terminate();
  }
}

/**
 * `b` in memory of its own, unless shared: a message carries a view's whole backing
 * store, and a small Buffer's is Node's 8 KiB allocation pool.
 */
function own(b: Uint8Array): Uint8Array {
  return b.buffer instanceof SharedArrayBuffer || b.byteLength === b.buffer.byteLength ? b : new Uint8Array(b);
}

/** A buffer of `size` bytes in shared memory, so HashWorkers can hash what it holds. */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}
