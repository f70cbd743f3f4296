let zeros = Buffer.alloc(0);

/** True when every byte is zero; `Buffer.equals` against a zero buffer is the fastest test in Node (memcmp). */
export function isZero(data: Uint8Array): boolean {
  if (zeros.length < data.length) zeros = Buffer.alloc(data.length);
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(zeros.subarray(0, data.length));
}
