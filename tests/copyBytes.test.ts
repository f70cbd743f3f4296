import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Buffer } from 'node:buffer';
import { createHash, randomBytes } from 'node:crypto';
import { copyBytes } from '../src/copyBytes.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const memory = {
  plain: (n: number) => new Uint8Array(n),
  shared: (n: number) => new Uint8Array(new SharedArrayBuffer(n)),
  buffer: (n: number) => Buffer.alloc(n),
  sharedBuffer: (n: number) => Buffer.from(new SharedArrayBuffer(n)),
};

test('copies what set copies, to and from shared and plain memory, small and large, at any offset', () => {
  for (const [from, mk] of Object.entries(memory)) {
    for (const [to, mkDst] of Object.entries(memory)) {
      for (const n of [0, 1, 4095, 4096, 4 * 1024 * 1024 + 3]) {
        for (const at of [0, 5, 4097]) {
          const src = mk(n + 7).subarray(7);
          src.set(randomBytes(n));
          const dst = mkDst(n + at + 9);
          dst.fill(0xa5);
          const want = new Uint8Array(dst.length).fill(0xa5);
          want.set(src, at);
          assert.is(copyBytes(src, dst, at), n);
          assert.is(sha(dst), sha(want), `${from} -> ${to}, ${n} bytes at ${at}`);
        }
      }
    }
  }
});

/** Calls of Buffer.prototype.fill (the native memcpy path) while fn runs. */
function fills(fn: () => void): number {
  const fill = Buffer.prototype.fill;
  let calls = 0;
  Buffer.prototype.fill = function (this: Buffer, ...args: Parameters<Buffer['fill']>) {
    calls++;
    return fill.apply(this, args);
  } as Buffer['fill'];
  try {
    fn();
  } finally {
    Buffer.prototype.fill = fill;
  }
  return calls;
}

test('ranges of one buffer that overlap move as memmove would, either way, never through memcpy', () => {
  // glibc's memcpy moves overlapping ranges right as well, so the bytes alone cannot show
  // the guard: the calls of the memcpy path are counted too.
  const apart = memory.sharedBuffer(3 * 8192);
  const native = fills(() => copyBytes(apart.subarray(0, 8192), apart, 8192));
  assert.is(native, 'Deno' in globalThis ? 0 : 1, 'ranges apart in one buffer: memcpy (set under Deno)');
  for (const mk of [memory.sharedBuffer, memory.buffer]) {
    const n = 1024 * 1024;
    const b = mk(n + 5);
    b.set(randomBytes(n + 5));
    const down = Uint8Array.from(b);
    down.copyWithin(0, 5);
    assert.is(fills(() => copyBytes(b.subarray(5), b, 0)), 0, 'down by 5: not memcpy');
    assert.is(sha(b), sha(down), 'down by 5');
    const up = Uint8Array.from(b);
    up.copyWithin(5, 0, n);
    assert.is(fills(() => copyBytes(b.subarray(0, n), b, 5)), 0, 'up by 5: not memcpy');
    assert.is(sha(b), sha(up), 'up by 5');
    // Views of one memory through different objects overlap all the same.
    assert.is(fills(() => copyBytes(new Uint8Array(b.buffer, b.byteOffset + 1, 8192), b, 0)), 0, 'one byte apart through another view');
  }
});

test('what does not fit is a RangeError and nothing is written', () => {
  const dst = memory.sharedBuffer(8192).fill(1);
  assert.throws(() => copyBytes(new Uint8Array(8192), dst, 1), (e: Error) => e instanceof RangeError);
  assert.throws(() => copyBytes(new Uint8Array(4096), dst, -1), (e: Error) => e instanceof RangeError);
  for (const at of [NaN, 0.5]) assert.throws(() => copyBytes(new Uint8Array(16), dst, at), (e: Error) => e instanceof RangeError, `at ${at}`);
  assert.ok(dst.every((x) => x === 1));
});

test.run();
