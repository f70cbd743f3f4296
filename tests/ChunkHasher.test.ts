// ChunkHasher names blocks in shared memory on hash threads, and ChunkCodec seals them
// there: the names and the stored chunks must be what the inline code gives (they are
// chunk names and chunks in existing repositories).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkHasher } from '../src/repo/ChunkHasher.ts';
import { sharedBuffer } from '../src/repo/HashWorkers.ts';
import { ChunkCodec } from '../src/repo/ChunkCodec.ts';
import { MasterKey } from '../src/repo/MasterKey.ts';

/** `n` random bytes in shared memory at `at`, as the sync's block buffers hold them. */
function shared(n: number, at = 0): Buffer {
  const b = sharedBuffer(n + at + 100);
  randomBytes(n + at + 100).copy(b);
  return b.subarray(at, at + n);
}

const sizes = [0, 1, 4095, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 4 * 1024 * 1024];

test('SHA-256 names equal createHash, in shared memory (views into larger buffers too) and not', async () => {
  const h = new ChunkHasher(null);
  for (const n of sizes) {
    const data = n % 2 ? randomBytes(n) : shared(n, 37);
    const want = createHash('sha256').update(data).digest('hex');
    assert.is(await h.name(data), want, `${n} bytes`);
    assert.is(h.nameNow(data), want, `${n} bytes inline`);
  }
});

test('HMAC-SHA-256 names equal createHmac under the same key; another key names differently', async () => {
  const key = randomBytes(32);
  const h = new ChunkHasher(key);
  for (const n of sizes) {
    const data = shared(n);
    const want = createHmac('sha256', key).update(data).digest('hex');
    assert.is(await h.name(data), want, `${n} bytes`);
    assert.is(h.nameNow(data), want, `${n} bytes inline`);
  }
  const data = shared(1024 * 1024);
  assert.is.not(await new ChunkHasher(randomBytes(32)).name(data), await h.name(data));
});

test('many names at once come back to their own blocks (several threads)', async () => {
  const h = new ChunkHasher(null);
  const blocks = Array.from({ length: 16 }, () => shared(512 * 1024));
  const names = await Promise.all(blocks.map((b) => h.name(b)));
  names.forEach((name, i) => assert.is(name, createHash('sha256').update(blocks[i]!).digest('hex')));
});

test('a process that hashed one block exits: idle hash threads never hold it (one unused thread once did)', () => {
  const mod = new URL(`../src/repo/HashWorkers.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url).href;
  const code = `import { HashWorkers, sharedBuffer } from ${JSON.stringify(mod)}; console.log(await HashWorkers.shared().hash(sharedBuffer(1 << 20), null));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { timeout: 15_000, encoding: 'utf8' });
  assert.is(r.signal, null, 'killed by the timeout: the process did not end');
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout.trim(), createHash('sha256').update(Buffer.alloc(1 << 20)).digest('hex'));
});

test('AES-256-GCM sealed and opened on a hash thread: the inline code reads what it seals, its tag binds the name, every nonce fresh', async () => {
  const key = MasterKey.generate();
  const codec = new ChunkCodec('none', 'aes-256-gcm', key, null, 4 * 1024 * 1024);
  const nonces = new Set<string>();
  for (const n of [1000, 256 * 1024, 4 * 1024 * 1024]) {
    const plain = shared(n, 64);
    const out = sharedBuffer(n + ChunkCodec.OVERHEAD);
    const stored = Buffer.concat(await codec.encodeOffThread('name-' + n, plain, out));
    assert.is(stored.length, n + ChunkCodec.OVERHEAD, `${n} bytes`);
    assert.ok(codec.decode('name-' + n, `chunks/x/${n}`, Buffer.from(stored)).equals(plain), `${n} bytes round trip`);
    assert.throws(() => codec.decode('other', `chunks/x/${n}`, Buffer.from(stored)), /authentication tag does not match/);
    nonces.add(stored.subarray(5, 17).toString('hex'));
  }
  assert.is(nonces.size, 3);
  // Opened on a hash thread, in place in shared memory: the plaintext; a flipped bit or another name fails the tag.
  for (const n of [1000, 256 * 1024, 4 * 1024 * 1024]) {
    const plain = shared(n);
    const stored = Buffer.concat(await codec.encodeOffThread('o' + n, plain, sharedBuffer(n + ChunkCodec.OVERHEAD)));
    const copy = () => {
      const b = sharedBuffer(stored.length);
      stored.copy(b);
      return b;
    };
    assert.ok((await codec.decodeOffThread('o' + n, `chunks/o/${n}`, copy())).equals(plain), `${n} bytes opened`);
    const flipped = copy();
    flipped[40]! ^= 1;
    await codec.decodeOffThread('o' + n, `chunks/o/${n}`, flipped).then(
      () => assert.unreachable('a flipped bit was accepted'),
      (err) => assert.match(err.message, `chunk chunks/o/${n}: authentication tag does not match`),
    );
    await codec.decodeOffThread('other', `chunks/o/${n}`, copy()).then(
      () => assert.unreachable('another name was accepted'),
      (err) => assert.is(err.code, 'CHUNK_CORRUPT'),
    );
  }
  // Not shared memory: the same format, on this thread.
  const plain = randomBytes(512 * 1024);
  const stored = Buffer.concat(await codec.encodeOffThread('x', plain, Buffer.alloc(plain.length + ChunkCodec.OVERHEAD)));
  assert.ok(codec.decode('x', 'chunks/x/x', Buffer.from(stored)).equals(plain));
});

test('an idle process holds no block buffers: pooled buffers dropped and hash threads ended after IDLE_MS, restarted on the next block', () => {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  const workers = new URL(`../src/repo/HashWorkers.${ext}`, import.meta.url).href;
  const pool = new URL(`../src/streams/BufferPool.${ext}`, import.meta.url).href;
  // 8 buffers of 4 MiB hashed by the threads and given back, as a sync leaves them.
  const code = `
    import { HashWorkers, IDLE_MS } from ${JSON.stringify(workers)};
    import { BufferPool } from ${JSON.stringify(pool)};
    const MiB = 1 << 20, p = new BufferPool(4 * MiB), w = HashWorkers.shared();
    const bufs = Array.from({ length: 8 }, () => p.take().fill(7));
    await Promise.all(bufs.map((b) => w.hash(b, null)));
    bufs.forEach((b) => p.give(b));
    bufs.length = 0;
    const used = () => (gc(), process.memoryUsage().arrayBuffers / MiB);
    const busy = { mib: used(), threads: w.running };
    // Released once the threads have ended (a second or so after IDLE_MS here).
    await new Promise((r) => setTimeout(r, IDLE_MS));
    let idle;
    for (let i = 0; i < 20 && !(idle?.mib < 4 && idle.threads === 0); i++) {
      await new Promise((r) => setTimeout(r, 500));
      idle = { mib: used(), threads: w.running };
    }
    const again = await w.hash(p.take().fill(7), null);
    console.log(JSON.stringify({ busy, idle, again, threads: w.running }));`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], { timeout: 60_000, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.ok(out.busy.mib >= 32, `in use: ${out.busy.mib} MiB`);
  assert.ok(out.busy.threads >= 1);
  assert.ok(out.idle.mib < 4, `idle: ${out.idle.mib} MiB still held`);
  assert.is(out.idle.threads, 0);
  assert.is(out.again, createHash('sha256').update(Buffer.alloc(4 << 20, 7)).digest('hex'));
  assert.is(out.threads, 1);
});

test('[hamal] hash_threads sets the threads the syncs hash on: 8 blocks in flight use that many, 0 one per core (at most 4)', async () => {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  const context = new URL(`../src/cli/context.${ext}`, import.meta.url).href;
  const workers = new URL(`../src/repo/HashWorkers.${ext}`, import.meta.url).href;
  const dir = mkdtempSync(join(tmpdir(), 'hamal-threads-'));
  try {
    const run = (conf: string) => {
      writeFileSync(join(dir, 'hamal.conf'), conf, { mode: 0o600 });
      const code = `
        import { setup } from ${JSON.stringify(context)};
        import { HashWorkers, HASH_THREADS, sharedBuffer } from ${JSON.stringify(workers)};
        await setup({ config: ${JSON.stringify(join(dir, 'hamal.conf'))} });
        const w = HashWorkers.shared();
        const jobs = Array.from({ length: 8 }, () => w.hash(sharedBuffer(1 << 20), null));
        const running = w.running;
        await Promise.all(jobs);
        console.log(JSON.stringify({ size: w.size, running, auto: HASH_THREADS }));
        process.exit(0);`;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { timeout: 60_000, encoding: 'utf8' });
      assert.is(r.status, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').pop()!);
    };
    const none = run('');
    assert.is(none.size, none.auto, 'no key: one thread per core, at most 4');
    assert.equal(run('[hamal]\nhash_threads = 3\n'), { size: 3, running: 3, auto: none.auto });
    assert.equal(run('[hamal]\nhash_threads = 1\n').running, 1);
    const auto = run('[hamal]\nhash_threads = 0\n');
    assert.is(auto.size, auto.auto);
    assert.is(auto.running, Math.min(8, auto.auto));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a pool replaced by another size ends its threads: idle ones at once, busy ones after their last job', () => {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  const workers = new URL(`../src/repo/HashWorkers.${ext}`, import.meta.url).href;
  const code = `
    import { HashWorkers, sharedBuffer } from ${JSON.stringify(workers)};
    const fill = (w, n) => Promise.all(Array.from({ length: n }, () => w.hash(sharedBuffer(1 << 20), null)));
    HashWorkers.configure(2);
    const idle = HashWorkers.shared();
    await fill(idle, 4);
    const before = idle.running;
    HashWorkers.configure(3);
    const idleAfter = idle.running;
    const busy = HashWorkers.shared();
    const jobs = fill(busy, 6);
    const busyBefore = busy.running;
    HashWorkers.configure(1);
    const busyDuring = busy.running;
    await jobs;
    console.log(JSON.stringify({ before, idleAfter, busyBefore, busyDuring, busyAfter: busy.running, size: HashWorkers.shared().size }));
    process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { timeout: 60_000, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout.trim().split('\n').pop()!), { before: 2, idleAfter: 0, busyBefore: 3, busyDuring: 3, busyAfter: 0, size: 1 });
});

test.run();
