// writeParts (FsStore's object writes): every byte of the parts lands once and in order,
// whatever a writev takes at a time; no writev is offered more than a piece.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { PIECE, writeParts, type Writev } from '../src/sinks/fs/writeParts.ts';

/** A file that takes at most what `take` says of each writev, as a kernel may. */
function shortFile(take: (offered: number) => number) {
  const got: Buffer[] = [];
  let largestOffer = 0;
  const handle = {
    async writev(buffers: Uint8Array[]) {
      const offered = buffers.reduce((n, b) => n + b.length, 0);
      largestOffer = Math.max(largestOffer, offered);
      const written = Math.min(take(offered), offered);
      let n = written;
      for (const b of buffers) {
        if (n === 0) break;
        const k = Math.min(n, b.length);
        got.push(Buffer.from(b.subarray(0, k)));
        n -= k;
      }
      return { bytesWritten: written, buffers };
    },
  } as unknown as Writev;
  return { handle, bytes: () => Buffer.concat(got), largestOffer: () => largestOffer };
}
const zero = () => 0;

/** Deterministic sizes: the same cases every run. */
function lcg(seed: number) {
  return () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
}

test('short writes: every byte once, in order, across part and piece edges; no writev offered more than a piece', async () => {
  const rnd = lcg(7);
  const sizes = [0, 1, 5, PIECE - 1, PIECE, PIECE + 1, 1_000_003, 3 * PIECE + 5];
  for (let round = 0; round < 40; round++) {
    const parts = Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => randomBytes(sizes[Math.floor(rnd() * sizes.length)]!));
    const most = round % 2 ? 1 + Math.floor(rnd() * 64) : 1 + Math.floor(rnd() * 2 * PIECE);
    const take = (offered: number) => Math.min(offered, most, 1 + Math.floor(rnd() * most));
    const file = shortFile(take);
    await writeParts(file.handle, parts);
    assert.ok(file.bytes().equals(Buffer.concat(parts)), `round ${round}: the parts, joined`);
    assert.ok(file.largestOffer() <= PIECE, `round ${round}: ${file.largestOffer()} bytes offered at once`);
  }
});

test('a writev that writes nothing fails with EIO instead of looping; no parts write nothing', async () => {
  await writeParts(shortFile(zero).handle, [randomBytes(10)]).then(
    () => assert.unreachable('a file that took nothing was written'),
    (err) => assert.is(err.code, 'EIO'),
  );
  const empty = shortFile(() => assert.unreachable('writev of nothing') as never);
  await writeParts(empty.handle, []);
  await writeParts(empty.handle, [Buffer.alloc(0)]);
  assert.is(empty.bytes().length, 0);
});

test.run();
