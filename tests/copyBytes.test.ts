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

test('ranges of one buffer that overlap move as memmove would, either way', () => {
  for (const mk of [memory.sharedBuffer, memory.buffer]) {
    const n = 1024 * 1024;
    const b = mk(n + 5);
    b.set(randomBytes(n + 5));
    const down = Uint8Array.from(b);
    down.copyWithin(0, 5);
    copyBytes(b.subarray(5), b, 0);
    assert.is(sha(b), sha(down), 'down by 5');
    const up = Uint8Array.from(b);
    up.copyWithin(5, 0, n);
    copyBytes(b.subarray(0, n), b, 5);
    assert.is(sha(b), sha(up), 'up by 5');
  }
});

test('what does not fit is a RangeError and nothing is written', () => {
  const dst = memory.sharedBuffer(8192).fill(1);
  assert.throws(() => copyBytes(new Uint8Array(8192), dst, 1), (e: Error) => e instanceof RangeError);
  assert.throws(() => copyBytes(new Uint8Array(4096), dst, -1), (e: Error) => e instanceof RangeError);
  assert.ok(dst.every((x) => x === 1));
});

test.run();
