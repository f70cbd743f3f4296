import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Slots } from '../src/streams/Slots.ts';

test('never more holders than its size, and every waiter runs', async () => {
  const slots = new Slots(2);
  let now = 0;
  let peak = 0;
  const order: number[] = [];
  await Promise.all(
    Array.from({ length: 7 }, (_, i) =>
      slots.use(async () => {
        now++;
        peak = Math.max(peak, now);
        await new Promise((r) => setTimeout(r, 1));
        order.push(i);
        now--;
      }),
    ),
  );
  assert.is(peak, 2);
  assert.is(order.length, 7);
  assert.is(slots.used, 0);
});

test('a failing holder frees its slot', async () => {
  const slots = new Slots(1);
  await slots.use(async () => Promise.reject(new Error('x'))).catch(() => {});
  assert.is(slots.used, 0);
  assert.is(await slots.use(async () => 5), 5);
});

test('a size below 1 is a RangeError naming the cap', () => {
  assert.throws(() => new Slots(0, 'writers'), (e: Error) => e instanceof RangeError && /writers/.test(e.message));
});

test.run();
