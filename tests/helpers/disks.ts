// Test helpers: sparse images written at chosen offsets, hashes of whole files.
import { promises as fsp, createReadStream, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MiB = 1024 * 1024;

/** Every temp folder the tests made: removed when the test process exits, also after a failed test. */
const made: string[] = [];
process.on('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

export async function tempDir(prefix = 'hamal-test-'): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/** A sparse file of `size` bytes with `writes` applied. */
export async function makeImage(path: string, size: number, writes: Array<[number, Uint8Array]> = []): Promise<void> {
  await fsp.writeFile(path, '');
  await fsp.truncate(path, size);
  for (const [offset, data] of writes) await writeAt(path, offset, data);
}

export async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  const h = await fsp.open(path, 'r+');
  try {
    await h.write(data, 0, data.length, offset);
  } finally {
    await h.close();
  }
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  for (let i = length - (length % 4); i < length; i++) buf[i] = (seed + i) & 0xff || 1;
  return buf;
}
