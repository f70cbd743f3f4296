// Restores into NBD exports, the way a replica is kept current on a target platform: a
// target file behind nbdkit (its log filter counts every write independently of hamal),
// a qcow2 volume behind qemu-nbd, and an RBD image behind qemu-nbd's rbd driver.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { promises as fsp, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { hamal } from './helpers/cli.ts';
import { makeImage, pattern, sha256File, tempDir, writeAt } from './helpers/disks.ts';

const run = promisify(execFile);
const BS = 64 * 1024;
const SIZE = 16 * BS;
let dir: string;
let repo: string;
const servers: ChildProcess[] = [];
const versions: string[] = [];
const shas: string[] = [];

/** Starts `argv` in the foreground and waits for its unix socket. */
async function serve(argv: string[], socket: string): Promise<ChildProcess> {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  servers.push(child);
  for (let i = 0; i < 100 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`${argv[0]} exited: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(existsSync(socket), `${argv[0]} did not listen: ${err}`);
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const closed = new Promise((r) => child.once('close', r));
    child.kill('SIGTERM');
    await closed;
  }
}

const restore = (out: string, ...more: string[]) => hamal(['restore', '--target', repo, '--vm', 'vm', '--disk', 'd', '--out', out, '--json', ...more]);

/** Offsets of the writes nbdkit's log filter recorded. */
async function loggedWrites(log: string): Promise<number[]> {
  const text = await fsp.readFile(log, 'utf8').catch(() => '');
  return [...text.matchAll(/Write id=\d+ offset=(0x[0-9a-f]+|\d+) count=(0x[0-9a-f]+|\d+)/g)].map((m) => Number(m[1]));
}

test.before(async () => {
  dir = await tempDir('hamal-replica-');
  repo = join(dir, 'repo');
  const image = join(dir, 'd.img');
  await makeImage(image, SIZE, [[0, pattern(3 * BS, 1)], [5 * BS, pattern(BS, 2)], [9 * BS, pattern(2 * BS, 3)]]);
  const sync = async () => {
    const r = await hamal(['sync', '--vm', 'vm', '--disk', `d=${image}`, '--target', repo, '--block-size', String(BS), '--json']);
    assert.is(r.code, 0, r.stderr);
    versions.push(JSON.parse(r.stdout).disks[0].version);
    shas.push(await sha256File(image));
  };
  await sync();
  // v2: block 3 gains data, block 5 becomes zeros, a few bytes of block 9 change.
  await writeAt(image, 3 * BS + 100, pattern(500, 4));
  await writeAt(image, 5 * BS, Buffer.alloc(BS));
  await writeAt(image, 9 * BS + 7, pattern(10, 5));
  await sync();
});

test.after(async () => {
  await Promise.all(servers.map(stop));
  await fsp.rm(dir, { recursive: true, force: true });
});

test('an NBD export (nbdkit file): the whole version with --force, then only the blocks that differ with --from; bytes equal each version', async () => {
  const target = join(dir, 'target.img');
  await fsp.writeFile(target, pattern(SIZE, 9)); // whatever the volume held before
  const socket = join(dir, 'nbdkit.sock');
  const log = join(dir, 'nbdkit.log');
  const server = await serve(['nbdkit', '-f', '--unix', socket, '--filter=log', 'file', target, `logfile=${log}`], socket);
  const url = `nbd+unix:///?socket=${socket}`;
  const refused = await restore(url, '--version', versions[0]!);
  assert.is(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /is an NBD export: writing it destroys what it holds; use --force/);
  const first = await restore(url, '--version', versions[0]!, '--force');
  assert.is(first.code, 0, first.stderr);
  assert.is(JSON.parse(first.stdout).writtenBlocks, 16, 'every block, zeros included: the volume held other bytes');
  assert.is(await sha256File(target), shas[0]);
  await fsp.writeFile(log, '');
  const second = await restore(url, '--version', versions[1]!, '--from', versions[0]!);
  assert.is(second.code, 0, second.stderr);
  assert.is(JSON.parse(second.stdout).writtenBlocks, 3);
  assert.equal((await loggedWrites(log)).sort((a, b) => a - b), [3 * BS, 5 * BS, 9 * BS], 'the server saw writes of the three changed blocks only');
  assert.is(await sha256File(target), shas[1]);
  await stop(server);
});

test('refused by name: a read-only export, a replica of another size, a URL without a socket, a server that is not there', async () => {
  const target = join(dir, 'ro.img');
  await fsp.writeFile(target, Buffer.alloc(SIZE));
  const socket = join(dir, 'ro.sock');
  const server = await serve(['nbdkit', '-f', '-r', '--unix', socket, 'file', target], socket);
  const ro = await restore(`nbd+unix:///?socket=${socket}`, '--force');
  assert.is(ro.code, 2, ro.stderr);
  assert.match(ro.stderr, new RegExp(`NBD export nbd\\+unix:///\\?socket=${socket.replace(/[/.]/g, '\\$&')} is read-only`));
  await stop(server);
  const small = join(dir, 'small.img');
  await fsp.writeFile(small, Buffer.alloc(SIZE - BS));
  const socket2 = join(dir, 'small.sock');
  const server2 = await serve(['nbdkit', '-f', '--unix', socket2, 'file', small], socket2);
  const other = await restore(`nbd+unix:///?socket=${socket2}`, '--from', versions[0]!);
  assert.match(other.stderr, new RegExp(`holds ${SIZE - BS} bytes; the version is ${SIZE} \\(a replica must be its size`));
  assert.is(await sha256File(small), createHash('sha256').update(Buffer.alloc(SIZE - BS)).digest('hex'), 'nothing written');
  await stop(server2);
  const nosock = await restore('nbd+unix:///', '--force');
  assert.match(nosock.stderr, /an nbd\+unix URL names no host and gives \?socket=PATH/);
  const gone = await restore(`nbd+unix:///?socket=${join(dir, 'nothing.sock')}`, '--force');
  assert.is(gone.code, 1, gone.stderr);
  assert.match(gone.stderr, /cannot open NBD export nbd\+unix:\/\/\/\?socket=.*nothing\.sock/);
});

test('a qcow2 volume behind qemu-nbd kept as a replica: equal to each version', async () => {
  const volume = join(dir, 'vol.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', volume, String(SIZE)]);
  const socket = join(dir, 'qemu.sock');
  const server = await serve(['qemu-nbd', '--format=qcow2', '--socket', socket, '--persistent', '--shared=2', volume], socket);
  const url = `nbd+unix:///?socket=${socket}`;
  for (const [i, extra] of [['--force'], ['--from', versions[0]!]].entries()) {
    const r = await restore(url, '--version', versions[i]!, ...extra);
    assert.is(r.code, 0, r.stderr);
    const raw = join(dir, 'vol.raw');
    await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', volume, raw]);
    assert.is(await sha256File(raw), shas[i], `volume after version ${i + 1}`);
    await fsp.rm(raw);
  }
  await stop(server);
});

test('an RBD image behind qemu-nbd\'s rbd driver kept as a replica (the test Ceph cluster)', async () => {
  const conf = process.env.CEPH_CONF;
  const keyring = process.env.HAMAL_TEST_CEPH_KEYRING;
  if (!conf || !keyring) {
    // scripts/test starts the cluster; a developer's run without it says so instead of passing.
    assert.unreachable('CEPH_CONF and HAMAL_TEST_CEPH_KEYRING come from tests/ceph/ceph-up.sh (scripts/test)');
  }
  const rbd = (...args: string[]) => run('rbd', ['--conf', conf!, '--name', 'client.hamal', '--keyring', keyring!, ...args]);
  const image = `volumes/replica-${process.pid}`;
  await rbd('create', '--size', `${SIZE / 1024}K`, image);
  const socket = join(dir, 'rbd.sock');
  const server = await serve(['qemu-nbd', '--format=raw', '--socket', socket, '--persistent', `rbd:${image}:id=hamal:conf=${conf}:keyring=${keyring}`], socket);
  try {
    const url = `nbd+unix:///?socket=${socket}`;
    for (const [i, extra] of [['--force'], ['--from', versions[0]!]].entries()) {
      const r = await restore(url, '--version', versions[i]!, ...extra);
      assert.is(r.code, 0, r.stderr);
      const out = join(dir, 'rbd.raw');
      await rbd('export', '--no-progress', image, out);
      assert.is(await sha256File(out), shas[i], `RBD image after version ${i + 1}`);
      await fsp.rm(out);
    }
  } finally {
    await stop(server);
    await rbd('rm', '--no-progress', image).catch(() => {});
  }
});

test.run();
