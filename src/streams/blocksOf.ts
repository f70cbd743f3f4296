/**
 * Cuts a byte stream (a child's stdout, an HTTP body) into blocks of `blockSize` (the last
 * may be shorter), pulling from it only as blocks are asked for: with pullMap, a slow
 * consumer pauses the producer. Chunks are kept in a list and joined once per block;
 * joining on every chunk is quadratic.
 */
export async function* blocksOf(stream: AsyncIterable<Uint8Array>, blockSize: number): AsyncGenerator<Buffer> {
  if (!Number.isSafeInteger(blockSize) || blockSize < 1) throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
  let parts: Buffer[] = [];
  let held = 0;
  for await (const chunk of stream) {
    let buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    while (held + buf.length >= blockSize) {
      const take = blockSize - held;
      parts.push(buf.subarray(0, take));
      yield Buffer.concat(parts, blockSize);
      parts = [];
      held = 0;
      buf = buf.subarray(take);
    }
    if (buf.length) {
      parts.push(buf);
      held += buf.length;
    }
  }
  if (held) yield Buffer.concat(parts, held);
}
