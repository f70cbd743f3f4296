// The NBD client against a real nbdkit (Debian package nbdkit) serving a sparse file.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import fc from 'fast-check';
import { HamalError } from '../src/errors.ts';
import { NbdClient } from '../src/nbd/NbdClient.ts';
import { NbdServerProcess } from '../src/sources/nbd/NbdServerProcess.ts';
import { MiB, makeImage, pattern, tempDir } from './helpers/disks.ts';

let dir: string;
let image: string;
let bytes: Buffer;

async function nbdkit(file: string, socket: string): Promise<ChildProcess> {
  const child = spawn('nbdkit', ['--foreground', '--readonly', '--unix', socket, 'file', file], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(existsSync(socket), 'nbdkit did not start');
  return child;
}

test.before(async () => {
  dir = await tempDir();
  image = join(dir, 'disk.img');
  await makeImage(image, 40 * MiB + 4096, [
    [MiB + 17, pattern(3 * MiB, 1)],
    [20 * MiB, pattern(5 * MiB, 2)],
    [40 * MiB, pattern(4096, 3)],
  ]);
  bytes = await fsp.readFile(image);
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

test('negotiates the export and reads any range exactly, many requests in flight, split at the request cap', async () => {
  const sock = join(dir, 'a.sock');
  const server = await nbdkit(image, sock);
  const client = await NbdClient.connect(sock, { maxRequestBytes: 256 * 1024 });
  try {
    assert.is(client.size, bytes.length);
    const ranges: Array<[number, number]> = [[0, 4096], [MiB, 4 * MiB + 3], [20 * MiB - 5, 6 * MiB], [40 * MiB, 4096], [7, 1], [bytes.length - 100, 100]];
    const got = await Promise.all(ranges.map(([o, n]) => client.read(o, n)));
    ranges.forEach(([o, n], i) => assert.ok(got[i]!.equals(bytes.subarray(o, o + n)), `range ${o}+${n}`));
    const into = Buffer.alloc(8 * MiB, 0xff);
    const view = await client.read(19 * MiB, 2 * MiB, into);
    assert.ok(view.equals(bytes.subarray(19 * MiB, 21 * MiB)));
    assert.ok(view.buffer === into.buffer, 'read into the caller\'s buffer');
    await client.read(bytes.length - 10, 20).then(() => assert.unreachable(), (e) => assert.instance(e, RangeError));
  } finally {
    await client.close();
    server.kill();
  }
});

test('block status finds the holes of a sparse export', async () => {
  const sock = join(dir, 'b.sock');
  const server = await nbdkit(image, sock);
  const client = await NbdClient.connect(sock);
  try {
    assert.ok(client.blockStatus, 'nbdkit offers base:allocation');
    const extents = [];
    for (let off = 0; off < client.size; ) {
      const got = await client.blockStatusOf(off, client.size - off);
      extents.push(...got);
      off = got[got.length - 1]!.offset + got[got.length - 1]!.length;
    }
    const data = extents.filter((e) => !e.hole);
    const covered = (o: number) => data.some((e) => e.offset <= o && o < e.offset + e.length);
    for (const o of [MiB + 17, 4 * MiB, 20 * MiB, 25 * MiB - 1, 40 * MiB]) assert.ok(covered(o), `data at ${o}`);
    for (const o of [0, 10 * MiB, 30 * MiB]) assert.not.ok(covered(o), `hole at ${o}`);
  } finally {
    await client.close();
    server.kill();
  }
});

test('the server dying mid-read fails every pending read with an error naming it', async () => {
  const sock = join(dir, 'c.sock');
  const server = await nbdkit(image, sock);
  const client = await NbdClient.connect(sock, { maxRequestBytes: 64 * 1024 });
  const reads = Array.from({ length: 64 }, (_, i) => client.read((i % 40) * MiB, MiB).then(() => 'ok', (e: Error) => e));
  server.kill('SIGKILL');
  const results = await Promise.all(reads);
  const failures = results.filter((r) => r instanceof Error) as Error[];
  assert.ok(failures.length > 0, 'some reads were still pending');
  for (const f of failures) assert.match(f.message, sock);
  await client.close();
});

test('a server that is not there is a clear, retryable error', async () => {
  await NbdClient.connect(join(dir, 'none.sock')).then(
    () => assert.unreachable(),
    (e) => {
      assert.is(e.code, 'NBD_CONNECT_FAILED');
      assert.ok(e.retryable);
    },
  );
});

/**
 * A HOSTILE NBD server, hand-written for this test (no real server misbehaves on demand):
 * it completes a fixed-newstyle handshake with structured replies, then answers the first
 * read with `reply(handle, offset, length)`.
 */
async function hostile(sock: string, reply: (handle: Buffer, offset: bigint, length: number) => Buffer): Promise<net.Server> {
  const server = net.createServer((c) => {
    c.on('error', () => {}); // the client may hang up on a bad answer
    c.write(Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), Buffer.from([0, 3])]));
    let buf = Buffer.alloc(0);
    let state: 'flags' | 'opts' | 'cmds' = 'flags';
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (state === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          state = 'opts';
        } else if (state === 'opts') {
          if (buf.length < 16) return;
          const opt = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          buf = buf.subarray(16 + len);
          const rep = (type: number, data: Buffer) => {
            const h = Buffer.alloc(20);
            h.writeBigUInt64BE(0x3e889045565a9n, 0);
            h.writeUInt32BE(opt, 8);
            h.writeUInt32BE(type, 12);
            h.writeUInt32BE(data.length, 16);
            c.write(Buffer.concat([h, data]));
          };
          if (opt === 7) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(0, 0);
            info.writeBigUInt64BE(BigInt(MiB), 2);
            rep(3, info);
            rep(1, Buffer.alloc(0));
            state = 'cmds';
          } else if (opt === 8) rep(1, Buffer.alloc(0));
          else rep(0x80000001, Buffer.alloc(0));
        } else {
          if (buf.length < 28) return;
          const handle = Buffer.from(buf.subarray(8, 16));
          if (buf.readUInt16BE(6) === 0) c.write(reply(handle, buf.readBigUInt64BE(16), buf.readUInt32BE(24))); // reads only, not NBD_CMD_DISC
          buf = buf.subarray(28);
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return server;
}

function chunk(handle: Buffer, type: number, payload: Buffer, done = true): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(done ? 1 : 0, 4);
  h.writeUInt16BE(type, 6);
  handle.copy(h, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}

test('a hostile server: a chunk outside the request, chunks that leave part of it unwritten or a huge reply field fail the read, never write past the buffer', async () => {
  const cases: Array<[string, (h: Buffer, off: bigint, len: number) => Buffer, RegExp]> = [
    ['data past the end', (h, off, len) => { const p = Buffer.alloc(8 + len); p.writeBigUInt64BE(off + 4096n, 0); return chunk(h, 1, p); }, /chunk outside the request/],
    ['data before the start', (h, off) => { const p = Buffer.alloc(8 + 16); p.writeBigUInt64BE(off - 1n, 0); return chunk(h, 1, p); }, /chunk outside the request/],
    ['a hole past the end', (h, off, len) => { const p = Buffer.alloc(12); p.writeBigUInt64BE(off, 0); p.writeUInt32BE(len + 1, 8); return chunk(h, 2, p); }, /chunk outside the request/],
    ['data short of the end', (h, off, len) => { const p = Buffer.alloc(8 + len - 512); p.writeBigUInt64BE(off, 0); return chunk(h, 1, p); }, /do not cover it exactly once/],
    ['a gap between two chunks', (h, off, len) => {
      const a = Buffer.alloc(8 + 4096);
      a.writeBigUInt64BE(off, 0);
      const b = Buffer.alloc(12);
      b.writeBigUInt64BE(off + 8192n, 0);
      b.writeUInt32BE(len - 8192, 8);
      return Buffer.concat([chunk(h, 1, a, false), chunk(h, 2, b)]);
    }, /do not cover it exactly once/],
    ['overlapping chunks as long as the request', (h, off, len) => {
      const a = Buffer.alloc(8 + len / 2);
      a.writeBigUInt64BE(off, 0);
      const b = Buffer.from(a);
      b.writeBigUInt64BE(off + 4096n, 0);
      return Buffer.concat([chunk(h, 1, a, false), chunk(h, 1, b)]);
    }, /do not cover it exactly once/],
    ['done with no chunk at all', (h) => chunk(h, 0, Buffer.alloc(0)), /do not cover it exactly once/],
    ['a 1 GiB error field', (h) => { const c = chunk(h, 0x8001, Buffer.alloc(4)); c.writeUInt32BE(1024 * MiB, 16); return c; }, /a 1073741824-byte reply field/],
  ];
  for (const [what, reply, expected] of cases) {
    const sock = join(dir, `hostile-${cases.findIndex((c) => c[0] === what)}.sock`);
    const server = await hostile(sock, reply);
    const client = await NbdClient.connect(sock);
    const into = Buffer.alloc(64 * 1024 + 16, 0xaa);
    try {
      await client.read(4096, 64 * 1024, into).then(
        () => assert.unreachable(what),
        (e: Error) => assert.match(e.message, expected, what),
      );
      assert.ok(into.subarray(64 * 1024).every((b) => b === 0xaa), `${what}: nothing written past the read`);
    } finally {
      await client.close();
      server.close();
    }
  }
});

test('fuzz: any bytes a server answers with settle the read (data or an error naming the server), never hang, crash or write past the buffer', async () => {
  // fast-check, fixed seed: random replies, half of them starting like a real reply header.
  const header = (h: Buffer) => fc.tuple(fc.constantFrom(0x67446698, 0x668e33ef), fc.uint8Array({ maxLength: 40 })).map(([magic, rest]) => {
    const b = Buffer.alloc(16);
    b.writeUInt32BE(magic, 0);
    h.copy(b, magic === 0x67446698 ? 8 : 8);
    return Buffer.concat([b, Buffer.from(rest)]);
  });
  let n = 0;
  await fc.assert(
    fc.asyncProperty(fc.boolean(), fc.uint8Array({ maxLength: 200 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), async (framed, noise, mutateAt) => {
      const sock = join(dir, `fuzz-${n++}.sock`);
      const server = await hostile(sock, (h) => {
        if (!framed) return Buffer.from(noise);
        const b = Buffer.concat([fc.sample(header(h), { seed: mutateAt, numRuns: 1 })[0]!, Buffer.from(noise)]);
        return b;
      });
      const client = await NbdClient.connect(sock);
      const into = Buffer.alloc(4096 + 16, 0xaa);
      const read = client.read(0, 4096, into).then(
        () => 'data',
        (e: Error) => (assert.instance(e, HamalError), 'error'),
      );
      // The server goes away after its answer: whatever it sent, the read must settle.
      setTimeout(() => server.close(), 20);
      const closed = new Promise((r) => setTimeout(r, 50)).then(() => client.close());
      const settled = await Promise.race([read, new Promise((r) => setTimeout(() => r('hang'), 2000))]);
      await closed;
      assert.is.not(settled, 'hang');
      assert.ok(into.subarray(4096).every((b) => b === 0xaa), 'nothing written past the read');
      return true;
    }),
    { seed: 20261125, numRuns: 60 },
  );
});

test('a server whose socket exists before it listens is connected to once it does (qemu-nbd binds, then listens)', async () => {
  const sock = join(dir, 'late.sock');
  // python binds the socket's name and holds it 400 ms without listening (connects are
  // refused), lets it go (no such file), then nbdkit listens there.
  const script = `import socket,time,os
s=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(sock)}); time.sleep(0.4); s.close(); os.unlink(${JSON.stringify(sock)}); time.sleep(0.1)`;
  const argv = ['sh', '-c', `python3 -c "$0" && exec nbdkit --foreground --readonly --unix "$1" file "$2"`, script, sock, image];
  const work = join(dir, 'late');
  const srvDir = await NbdServerProcess.privateDir(work, 'late');
  const server = await NbdServerProcess.start(argv, srvDir, sock, 'late disk', MiB);
  try {
    assert.is(server.client.size, bytes.length);
    assert.ok((await server.client.read(MiB + 17, 4096)).equals(bytes.subarray(MiB + 17, MiB + 17 + 4096)));
  } finally {
    await server.stop();
  }
  assert.not.ok(existsSync(srvDir), 'its private folder is removed');
});

test.run();
