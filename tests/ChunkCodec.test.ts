// What ChunkCodec stores compressed: a block is judged on samples spread over it, so a
// block whose start is noise and whose rest compresses is compressed, noise throughout is
// not; every stored form reads back byte-exact, from shared memory or not.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { ChunkCodec } from '../src/repo/ChunkCodec.ts';
import { HashWorkers, sharedBuffer } from '../src/repo/HashWorkers.ts';
import { MasterKey } from '../src/repo/MasterKey.ts';
import { zstd, type Zstd } from '../src/repo/Zstd.ts';

const MiB = 1024 * 1024;
const BLOCK = 4 * MiB;
const ZSTD_FLAG = 1;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Text-like bytes: compress well, are not zeros. */
function text(n: number): Buffer {
  const words = ['block', 'chunk', 'disk', 'version', 'snapshot', 'replica', '\n'];
  let s = '';
  for (let i = 0; s.length < n; i++) s += words[(i * 7 + (i >> 3)) % words.length] + ' ';
  return Buffer.from(s.slice(0, n), 'latin1');
}

/** `plain` in shared memory, as the sync's block buffers hold it. */
function inShared(plain: Buffer): Buffer {
  const b = sharedBuffer(plain.length);
  plain.copy(b);
  return b;
}

const blocks: Record<string, () => Buffer> = {
  'noise throughout': () => randomBytes(BLOCK),
  'noise in the first 256 KiB, text after it': () => Buffer.concat([randomBytes(256 * 1024), text(BLOCK - 256 * 1024)]),
  'text, noise in the last 256 KiB': () => Buffer.concat([text(BLOCK - 256 * 1024), randomBytes(256 * 1024)]),
  'a short tail block of text': () => text(100 * 1024 + 3),
};
const compressed = new Set(['noise in the first 256 KiB, text after it', 'text, noise in the last 256 KiB', 'a short tail block of text']);

for (const encryption of ['none', 'aes-256-gcm'] as const) {
  test(`zstd, encryption ${encryption}: blocks judged on spread samples; every stored form reads back byte-exact`, async () => {
    const codec = new ChunkCodec('zstd', encryption, encryption === 'none' ? null : MasterKey.generate(), await zstd(), BLOCK);
    for (const [what, make] of Object.entries(blocks)) {
      const plain = make();
      const block = inShared(plain);
      const parts = await codec.encodeOffThread(what, block, sharedBuffer(BLOCK + ChunkCodec.OVERHEAD));
      const stored = Buffer.concat(parts);
      const isCompressed = (stored[4]! & ZSTD_FLAG) !== 0;
      assert.is(isCompressed, compressed.has(what), `${what}: compressed`);
      if (isCompressed) assert.ok(stored.length < plain.length * 0.9, `${what}: ${stored.length} bytes stored of ${plain.length}`);
      else assert.is(stored.length, plain.length + (encryption === 'none' ? 5 : ChunkCodec.OVERHEAD), `${what}: stored as it is`);
      // Stored as it is, unencrypted: the block itself behind its header, not a copy of it.
      const raw = !isCompressed && encryption === 'none';
      assert.is(parts.length === 2 && parts[1]!.buffer === block.buffer && parts[1]!.byteOffset === block.byteOffset, raw, `${what}: block written from where it was read`);
      assert.is(sha(codec.decode(what, `chunks/${what}`, Buffer.from(stored))), sha(plain), `${what}: read back`);
      assert.is(sha(await codec.decodeOffThread(what, `chunks/${what}`, inShared(stored))), sha(plain), `${what}: read back from shared memory`);
    }
  });
}

/** zstd whose compress calls on this thread are counted. */
async function countingZstd(): Promise<Zstd & { calls: number; unpacked: number }> {
  const z = await zstd();
  const counted = {
    calls: 0,
    unpacked: 0,
    decompress: (d: Uint8Array) => (counted.unpacked++, z.decompress(d)),
    compress: (d: Uint8Array, level: number) => (counted.calls++, z.compress(d, level)),
  };
  return counted;
}

/** `stored` at the start of a buffer of the block size + OVERHEAD in shared memory, as a restore reads it. */
function inRoom(stored: Buffer): { room: Buffer; stored: Buffer } {
  const room = sharedBuffer(BLOCK + ChunkCodec.OVERHEAD);
  stored.copy(room);
  return { room, stored: room.subarray(0, stored.length) };
}

for (const encryption of ['none', 'aes-256-gcm'] as const) {
  test(`zstd, encryption ${encryption}: chunks read into shared memory are decompressed on the hash threads into their own buffer; a damaged frame is refused`, async () => {
    const z = await countingZstd();
    const codec = new ChunkCodec('zstd', encryption, encryption === 'none' ? null : MasterKey.generate(), z, BLOCK);
    for (const plain of [text(BLOCK), Buffer.concat([randomBytes(BLOCK / 2), text(BLOCK / 2)])]) {
      const stored = Buffer.concat(await codec.encodeOffThread('c', inShared(plain), sharedBuffer(BLOCK + ChunkCodec.OVERHEAD)));
      const { room, stored: read } = inRoom(stored);
      const got = await codec.decodeOffThread('c', 'chunks/c', read, BLOCK, room);
      assert.is(sha(got), sha(plain), 'read back');
      assert.ok(got.buffer === room.buffer && got.byteOffset === room.byteOffset, 'in the buffer it was read into');
    }
    assert.is(z.unpacked, 0, 'zstd decompress calls on the main thread');
    if (encryption !== 'none') return;
    const stored = Buffer.concat(await codec.encodeOffThread('c', inShared(text(BLOCK)), sharedBuffer(BLOCK + ChunkCodec.OVERHEAD)));
    stored[stored.length - 40] ^= 0x55; // inside the frame's compressed blocks
    const { room, stored: read } = inRoom(stored);
    const err = await codec.decodeOffThread('c', 'chunks/c', read, BLOCK, room).catch((e: Error) => e);
    assert.is((err as { code?: string }).code, 'CHUNK_CORRUPT', String(err));
    assert.match((err as Error).message, 'chunks/c');
    assert.is(z.unpacked, 0, 'refused on the thread');
  });
}

test('a thread that ends while decompressing a chunk over its own buffer: HASH_THREAD_FAILED, retryable (the chunk is read again)', async () => {
  const codec = new ChunkCodec('zstd', 'none', null, await zstd(), BLOCK);
  const stored = Buffer.concat(await codec.encodeOffThread('c', inShared(text(BLOCK)), sharedBuffer(BLOCK + ChunkCodec.OVERHEAD)));
  const w = HashWorkers.shared()!;
  (w as unknown as { unpack: HashWorkers['unpack'] }).unpack = async (_f, out) => {
    out.fill(0xee, 0, 1000); // over the frame, as a thread cut off mid-copy would
    throw new Error('hash thread exited with 1');
  };
  try {
    const { room, stored: read } = inRoom(stored);
    const err = await codec.decodeOffThread('c', 'chunks/c', read, BLOCK, room).catch((e: Error) => e);
    assert.is((err as { code?: string }).code, 'HASH_THREAD_FAILED');
    assert.is((err as { retryable?: boolean }).retryable, true);
  } finally {
    delete (w as unknown as { unpack?: unknown }).unpack;
  }
});

test('zstd failing inside a live thread: decompressed here from the untouched frame, one warning, the threads run zstd no more', () => {
  // A child process: the switch to the main thread lasts for the process.
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  const mod = (name: string) => JSON.stringify(new URL(`../src/repo/${name}.${ext}`, import.meta.url).href);
  const code = `
    import { ChunkCodec } from ${mod('ChunkCodec')};
    import { HashWorkers, ThreadJobError, sharedBuffer } from ${mod('HashWorkers')};
    import { zstd } from ${mod('Zstd')};
    import { createHash } from 'node:crypto';
    const B = 4 << 20;
    const z = await zstd();
    let here = 0;
    const codec = new ChunkCodec('zstd', 'none', null, { compress: z.compress, decompress: (d) => (here++, z.decompress(d)) }, B);
    const plain = sharedBuffer(B);
    for (let i = 0; i < B; i++) plain[i] = 97 + ((i * 7) % 13);
    const stored = Buffer.concat(await codec.encodeOffThread('c', plain, sharedBuffer(B + ChunkCodec.OVERHEAD)));
    const w = HashWorkers.shared();
    let asked = 0;
    w.unpack = async () => { asked++; throw new ThreadJobError('hash thread: zstd did not start'); };
    const sha = (b) => createHash('sha256').update(b).digest('hex');
    const got = [];
    for (let k = 0; k < 2; k++) {
      const room = sharedBuffer(B + ChunkCodec.OVERHEAD);
      stored.copy(room);
      got.push(sha(await codec.decodeOffThread('c', 'chunks/c', room.subarray(0, stored.length), B, room)) === sha(plain));
    }
    console.log(JSON.stringify({ got, asked, here }));
    process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { timeout: 60_000, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout.trim().split('\n').pop()!), { got: [true, true], asked: 1, here: 2 });
  const warnings = r.stderr.split('\n').filter((l) => l.includes('zstd on a hash thread failed'));
  assert.is(warnings.length, 1, r.stderr);
  assert.match(warnings[0]!, 'zstd did not start');
});

test('blocks in shared memory are compressed on the hash threads, not this one; the same judgement and bytes', async () => {
  const z = await countingZstd();
  const codec = new ChunkCodec('zstd', 'aes-256-gcm', MasterKey.generate(), z, BLOCK);
  for (const [what, make] of Object.entries(blocks)) {
    if (what === 'a short tail block of text') continue; // under OFF_THREAD_MIN: packed here
    const plain = make();
    const stored = Buffer.concat(await codec.encodeOffThread(what, inShared(plain), sharedBuffer(BLOCK + ChunkCodec.OVERHEAD)));
    assert.is((stored[4]! & ZSTD_FLAG) !== 0, compressed.has(what), `${what}: compressed`);
    assert.is(sha(codec.decode(what, `chunks/${what}`, stored)), sha(plain), `${what}: read back`);
  }
  assert.is(z.calls, 0, 'zstd calls on the main thread');
});

test('a thread lost while sealing a block it packed in place: packed again here, the chunk reads back byte-exact', async () => {
  const z = await countingZstd();
  const codec = new ChunkCodec('zstd', 'aes-256-gcm', MasterKey.generate(), z, BLOCK);
  const w = HashWorkers.shared()!;
  // As a thread that died half-way: part of the output overwritten, then the failure.
  (w as unknown as { seal: HashWorkers['seal'] }).seal = async (_p, _k, _n, _a, out, outOffset) => {
    out.fill(0xee, outOffset, outOffset + 100_000);
    throw new Error('hash thread exited with 1');
  };
  try {
    const plain = Buffer.concat([randomBytes(BLOCK / 2), text(BLOCK / 2)]); // a frame big enough to seal on a thread
    const stored = Buffer.concat(await codec.encodeOffThread('lost', inShared(plain), sharedBuffer(BLOCK + ChunkCodec.OVERHEAD)));
    assert.ok((stored[4]! & ZSTD_FLAG) !== 0, 'compressed');
    assert.is(sha(codec.decode('lost', 'chunks/lost', stored)), sha(plain));
    assert.ok(z.calls > 0, 'packed again on this thread');
  } finally {
    delete (w as unknown as { seal?: unknown }).seal;
  }
});

test.run();
