import { Buffer } from 'node:buffer';

/**
 * Copies `src` into `dst` at `at`, as `dst.set(src, at)` does; returns src.length.
 *
 * Why not set: V8 copies to or from a SharedArrayBuffer (the block buffers the hash
 * threads see, HashWorkers) with relaxed atomic accesses: ~3.4 GB/s on the test machine,
 * against ~35 GB/s for memory that is not shared (docs/performance.md). Node's Buffer.fill
 * with a buffer as its value is one native memcpy either way. Deno's fill is a JavaScript
 * loop (~0.7 GB/s there), so Deno keeps set; so do overlapping ranges (memcpy's are
 * undefined) and small copies, where fill's checks cost more than they save.
 */
export function copyBytes(src: Uint8Array, dst: Uint8Array, at = 0): number {
  const n = src.length;
  if (!Number.isSafeInteger(at) || at < 0 || at + n > dst.length) throw new RangeError(`copyBytes: ${n} bytes do not fit at ${at} in ${dst.length}`);
  if (n < NATIVE_FROM || !NATIVE_FILL || overlap(src, dst, at)) dst.set(src, at);
  else asBuffer(dst).fill(src, at, at + n);
  return n;
}

/** Copies under this many bytes are left to set. */
const NATIVE_FROM = 4096;
const NATIVE_FILL = !('Deno' in globalThis);

function overlap(src: Uint8Array, dst: Uint8Array, at: number): boolean {
  if (src.buffer !== dst.buffer) return false;
  const from = dst.byteOffset + at;
  return from < src.byteOffset + src.length && src.byteOffset < from + src.length;
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.length);
}
