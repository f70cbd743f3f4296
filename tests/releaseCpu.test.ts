import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { TestScheduler } from 'rxjs/testing';
import { releaseCpu, releaseCpuDelay } from '../src/streams/releaseCpu.ts';

const MB = 1024 * 1024;
const scheduler = () => new TestScheduler((a, e) => assert.equal(a, e));

test('pauses ms-per-MB after each item, in order (virtual time)', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const a = { length: MB };
    const b = { length: 2 * MB };
    const src = cold('(ab|)', { a, b });
    // 10 ms per MB: a leaves at 10 ms, b 20 ms after it.
    expectObservable(src.pipe(releaseCpu(10))).toBe('10ms a 19ms (b|)', { a, b });
  });
});

test('0 turns it off: no delay at all', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const a = { length: 64 * MB };
    expectObservable(cold('a|', { a }).pipe(releaseCpu(0))).toBe('a|', { a });
  });
});

test('the delay is proportional to the bytes; negative settings are refused', () => {
  assert.is(releaseCpuDelay(MB / 2, 8), 4);
  assert.is(releaseCpuDelay(10 * MB, 0), 0);
  assert.throws(() => releaseCpu(-1), /0 or more/);
});

test.run();
