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

const part = (offset: number, length: number) => ({ offset, length });

test('aligns an unaligned extent to every block it touches; the last one waits for the next extent', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const src = cold('a 9ms b|', { a: ext(5, 20), b: ext(95, 10) });
    // bs 10, capacity 100: a touches 0,1,2 (2 is held until b); b touches 9, clipped at capacity.
    expectObservable(src.pipe(toBlocks(10, 100))).toBe('(xy) 6ms z (w|)', {
      x: { ...blk(0, 10, 100), parts: [part(5, 5)] },
      y: blk(1, 10, 100),
      z: { ...blk(2, 10, 100), parts: [part(20, 5)] },
      w: { ...blk(9, 10, 100), parts: [part(95, 5)] },
    });
  });
});

test('merges overlapping and adjacent extents: each block once, with the parts they cover', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const src = cold('a-b-c-d|', { a: ext(0, 15), b: ext(12, 5), c: ext(19, 2), d: ext(40, 1) });
    // a: 0 whole, 1 from 10  b: within 1, widens it to 17  c: 19 in 1, 20 in 2  d: 4
    expectObservable(src.pipe(toBlocks(10, 100))).toBe('x---y-z(w|)', {
      x: blk(0, 10, 100),
      y: { ...blk(1, 10, 100), parts: [part(10, 7), part(19, 1)] },
      z: { ...blk(2, 10, 100), parts: [part(20, 1)] },
      w: { ...blk(4, 10, 100), parts: [part(40, 1)] },
    });
  });
});

test('adjacent parts become one; parts that cover a block add up to the whole block', async () => {
  const out = await lastValueFrom(from([ext(0, 3), ext(3, 2), ext(10, 4), ext(14, 6), ext(20, 1), ext(20, 2)]).pipe(toBlocks(10, 100), toArray()));
  assert.equal(out, [{ ...blk(0, 10, 100), parts: [part(0, 5)] }, blk(1, 10, 100), { ...blk(2, 10, 100), parts: [part(20, 2)] }]);
});

test('an extent reaching back into a block already emitted adds nothing to it', async () => {
  // a covers 5..30: block 0 from 5, block 1 whole (emitted once a reaches block 2); b starts at 6.
  const out = await lastValueFrom(from([ext(5, 25), ext(6, 30)]).pipe(toBlocks(10, 100), toArray()));
  assert.equal(out, [{ ...blk(0, 10, 100), parts: [part(5, 5)] }, blk(1, 10, 100), blk(2, 10, 100), { ...blk(3, 10, 100), parts: [part(30, 6)] }]);
});

test('a short last block keeps its real length; empty and out-of-range extents emit nothing', async () => {
  const out = await lastValueFrom(from([ext(0, 0), ext(20, 30), ext(200, 5)]).pipe(toBlocks(16, 40), toArray()));
  assert.equal(out, [{ ...blk(1, 16, 40), parts: [part(20, 12)] }, { index: 2, offset: 32, length: 8 }]);
});

test('an extent that goes backwards is an error naming the disk and both offsets', async () => {
  const got = await lastValueFrom(from([ext(50, 5), ext(10, 5)]).pipe(toBlocks(10, 100, 'disk scsi0:1'), toArray())).catch((e) => e);
  assert.instance(got, Error);
  assert.is(got.code, 'EXTENT_ORDER');
  assert.is(got.subject, 'disk scsi0:1');
  assert.match(got.message, /^disk scsi0:1: extent at offset 10 arrived after one at 50/);
});

test('a NaN, negative or fractional offset or length is an error naming it and the disk, not blocks silently dropped', async () => {
  for (const bad of [ext(NaN, 5), ext(10, NaN), ext(-5, 20), ext(10, -3), ext(1.5, 4), ext(0, Infinity)]) {
    const got = await lastValueFrom(from([ext(0, 5), bad]).pipe(toBlocks(10, 100, 'disk vda'), toArray())).catch((e) => e);
    assert.instance(got, Error, `extent ${bad.offset}+${bad.length}`);
    assert.is(got.code, 'EXTENT_INVALID');
    assert.is(got.subject, 'disk vda');
    assert.ok(got.message.includes(`offset ${bad.offset} with length ${bad.length}`), got.message);
  }
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
