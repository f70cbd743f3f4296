// The NBD client against a real nbdkit (Debian package nbdkit) serving a sparse file.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { NbdClient } from '../src/sources/nbd/NbdClient.ts';
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

test.run();
