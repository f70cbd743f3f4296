import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { TestScheduler } from 'rxjs/testing';
import { from, lastValueFrom, take, tap, toArray } from 'rxjs';
import { toBlocks } from '../src/streams/toBlocks.ts';
import type { Extent } from '../src/streams/Extent.ts';

const scheduler = () => new TestScheduler((actual, expected) => assert.equal(actual, expected));
const ext = (offset: number, length: number): Extent => ({ offset, length });
const blk = (index: number, bs: number, capacity: number) => ({
  index,
  offset: index * bs,
  length: Math.min(bs, capacity - index * bs),
});

test('aligns an unaligned extent to every block it touches, as it arrives', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const src = cold('a 9ms b|', { a: ext(5, 20), b: ext(95, 10) });
    // bs 10, capacity 100: a touches 0,1,2; b touches 9 and is clipped at capacity.
    expectObservable(src.pipe(toBlocks(10, 100))).toBe('(xyz) 5ms w|', {
      x: blk(0, 10, 100),
      y: blk(1, 10, 100),
      z: blk(2, 10, 100),
      w: blk(9, 10, 100),
    });
  });
});

test('merges overlapping and adjacent extents: each block once', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const src = cold('a-b-c-d|', { a: ext(0, 15), b: ext(12, 5), c: ext(19, 2), d: ext(40, 1) });
    // a: 0,1  b: within 1 (dropped)  c: 1 (dropped), 2  d: 4
    expectObservable(src.pipe(toBlocks(10, 100))).toBe('(xy)z-w|', {
      x: blk(0, 10, 100),
      y: blk(1, 10, 100),
      z: blk(2, 10, 100),
      w: blk(4, 10, 100),
    });
  });
});

test('a short last block keeps its real length; empty and out-of-range extents emit nothing', async () => {
  const out = await lastValueFrom(from([ext(0, 0), ext(20, 30), ext(200, 5)]).pipe(toBlocks(16, 40), toArray()));
  assert.equal(out, [blk(1, 16, 40), { index: 2, offset: 32, length: 8 }]);
});

test('an extent that goes backwards is an error naming both offsets', async () => {
  const got = await lastValueFrom(from([ext(50, 5), ext(10, 5)]).pipe(toBlocks(10, 100), toArray())).catch((e) => e);
  assert.instance(got, Error);
  assert.is(got.code, 'EXTENT_ORDER');
  assert.match(got.message, /offset 10 arrived after one at 50/);
});

test('rejects a block size that is not a positive integer', () => {
  assert.throws(() => toBlocks(0, 10), /blockSize/);
});

test('unsubscribing stops the expansion of a huge extent at once', async () => {
  let emitted = 0;
  const out = await lastValueFrom(
    from([ext(0, 1e12)]).pipe(
      toBlocks(4096, 1e12),
      tap(() => emitted++),
      take(3),
      toArray(),
    ),
  );
  assert.is(out.length, 3);
  assert.is(emitted, 3);
});

test.run();
