import type { promises as fsp } from 'node:fs';

/**
 * Bytes per write of an object: 4 MiB in one write cost 3x the system time of 512 KiB
 * pieces here (bench/run dir), the size Node's writeFile writes in.
 */
export const PIECE = 512 * 1024;

/** What writeParts needs of a file: a writev at the file's position (FileHandle's). */
export type Writev = Pick<fsp.FileHandle, 'writev'>;

/** Writes the parts one after the other from the file's position, PIECE bytes per write. */
export async function writeParts(handle: Writev, parts: readonly Uint8Array[]): Promise<void> {
  let batch: Uint8Array[] = [];
  let room = PIECE;
  for (const part of parts) {
    for (let at = 0; at < part.length; ) {
      const n = Math.min(room, part.length - at);
      batch.push(part.subarray(at, at + n));
      at += n;
      room -= n;
      if (room === 0) {
        await writeAll(handle, batch);
        batch = [];
        room = PIECE;
      }
    }
  }
  if (batch.length) await writeAll(handle, batch);
}

/** One writev, again for what it left (a write may take fewer bytes than asked). */
async function writeAll(handle: Writev, buffers: Uint8Array[]): Promise<void> {
  let left = buffers;
  while (left.length) {
    const { bytesWritten } = await handle.writev(left);
    if (bytesWritten === 0) throw Object.assign(new Error('write wrote nothing'), { code: 'EIO' });
    left = dropBytes(left, bytesWritten);
  }
}

function dropBytes(buffers: Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  while (i < buffers.length && n >= buffers[i]!.length) n -= buffers[i++]!.length;
  const rest = buffers.slice(i);
  if (n > 0) rest[0] = rest[0]!.subarray(n);
  return rest;
}
