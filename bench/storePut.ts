// What the directory store costs alone, with no source read and no hashing: puts the
// bytes of FILE as 4 MiB objects under chunks/ (fresh names), WRITERS at once, then
// flush(); prints {"seconds": N}. Against dd + sync of the same bytes it shows the
// per-file cost (create, write, fdatasync, rename, directory fsync) of one file per chunk.
// Usage: node dist/bench/storePut.js FILE STORE_DIR
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { FsStore } from '../src/sinks/fs/FsStore.ts';

const BS = 4 * 1024 * 1024;
const writers = Number(process.env.WRITERS ?? 4);
const [file, dir] = [process.argv[2]!, process.argv[3]!];
const src = await open(file, 'r');
const size = (await src.stat()).size;
const store = await FsStore.open(dir, { create: true });
const started = Date.now();
let next = 0;
await Promise.all(
  Array.from({ length: writers }, async () => {
    const buf = Buffer.allocUnsafe(BS);
    for (let off = next++ * BS; off < size; off = next++ * BS) {
      const { bytesRead } = await src.read(buf, 0, Math.min(BS, size - off), off);
      const name = randomBytes(32).toString('hex');
      await store.put(`chunks/${name.slice(0, 2)}/${name}`, buf.subarray(0, bytesRead));
    }
  }),
);
await store.flush();
const seconds = (Date.now() - started) / 1000;
await store.close();
await src.close();
console.log(JSON.stringify({ seconds }));
