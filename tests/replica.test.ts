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

async function waitFor(cond: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.unreachable(`timed out waiting for ${what}`);
}

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

/** The test Ceph cluster (tests/ceph/ceph-up.sh, started by scripts/test) and its rbd command. */
function ceph() {
  const conf = process.env.CEPH_CONF;
  const keyring = process.env.HAMAL_TEST_CEPH_KEYRING;
  if (!conf || !keyring) {
    // scripts/test starts the cluster; a developer's run without it says so instead of passing.
    assert.unreachable('CEPH_CONF and HAMAL_TEST_CEPH_KEYRING come from tests/ceph/ceph-up.sh (scripts/test)');
  }
  const rbd = async (...args: string[]) => (await run('rbd', ['--conf', conf!, '--name', 'client.hamal', '--keyring', keyring!, ...args])).stdout;
  /** sha256 of the image (or IMAGE@SNAP) as rbd export reads it. */
  const sha = async (spec: string) => {
    const out = join(dir, 'rbd-export.raw');
    await rbd('export', '--no-progress', spec, out);
    const h = await sha256File(out);
    await fsp.rm(out);
    return h;
  };
  const snaps = async (image: string) => (JSON.parse(await rbd('snap', 'ls', '--format', 'json', image)) as Array<{ name: string }>).map((s) => s.name).sort();
  return { conf: conf!, keyring: keyring!, rbd, sha, snaps };
}

test('an RBD image behind qemu-nbd\'s rbd driver kept as a replica (the test Ceph cluster)', async () => {
  const { conf, keyring, rbd } = ceph();
  const image = `volumes/replica-${process.pid}`;
  await rbd('create', '--size', `${SIZE / 1024}K`, image);
  const socket = join(dir, 'rbd.sock');
  const server = await serve(['qemu-nbd', '--format=raw', '--socket', socket, '--persistent', `rbd:${image}:id=hamal:conf=${conf}:keyring=${keyring}`], socket);
  try {
    const url = `nbd+unix:///?socket=${socket}`;
    for (const [i, extra] of [['--force'], ['--from', versions[0]!]].entries()) {
      const r = await restore(url, '--version', versions[i]!, ...extra);
      assert.is(r.code, 0, r.stderr);
      assert.is(await ceph().sha(image), shas[i], `RBD image after version ${i + 1}`);
    }
  } finally {
    await stop(server);
    await rbd('rm', '--no-progress', image).catch(() => {});
  }
});

test('an RBD image kept by rbd import-diff: Ceph checks the base snapshot, only changed blocks are written', async () => {
  const { conf, keyring, rbd, sha, snaps } = ceph();
  const image = `volumes/diff-${process.pid}`;
  const fresh = `volumes/fresh-${process.pid}`;
  const url = (img: string) => `rbd:${img}:id=hamal:conf=${conf}:keyring=${keyring}`;
  const [v1, v2] = [versions[0]!, versions[1]!];
  try {
    // A missing image is created and written; it then carries the snapshot of its version.
    let r = await restore(url(fresh), '--version', v1);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha(fresh), shas[0]);
    assert.equal(await snaps(fresh), [`hamal-${v1}`]);
    r = await restore(url(fresh), '--version', v2);
    assert.is(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`rbd image ${fresh} exists: .*--force.*--from`));
    // Objects of one block each, so Ceph's own diff of the step shows which blocks were written.
    await rbd('create', '--size', `${SIZE / 1024}K`, '--object-size', `${BS / 1024}K`, image);
    r = await restore(url(image), '--version', v1, '--force');
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha(image), shas[0], 'image after version 1');
    // A base the image does not hold: refused from its snapshots, before anything is written.
    r = await restore(url(image), '--version', v1, '--from', v2);
    assert.is(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`rbd image ${image} has no snapshot hamal-${v2}, so it does not hold version ${v2} \\(it has hamal-${v1}\\)`));
    await rbd('snap', 'create', '--no-progress', `${image}@before-v2`);
    // hamal killed after the step's second block: rbd reads a stream without its end record,
    // takes no snapshot, and the image still says it holds v1; the same step then completes.
    const killed = await hamal(['restore', '--target', repo, '--vm', 'vm', '--disk', 'd', '--out', url(image), '--version', v2, '--from', v1], { HAMAL_FAILPOINTS: 'restore.written=kill@2' });
    assert.is(killed.signal ?? killed.code, 'SIGKILL', killed.stderr);
    await waitFor(async () => !(await run('pgrep', ['-f', `import-diff - ${image}`]).then(() => true, () => false)), 'rbd import-diff to end after hamal died');
    assert.equal(await snaps(image), ['before-v2', `hamal-${v1}`], 'no snapshot of a step cut short');
    r = await restore(url(image), '--version', v2, '--from', v1);
    assert.is(r.code, 0, r.stderr);
    assert.is(JSON.parse(r.stdout).writtenBlocks, 3, r.stdout);
    // Ceph's diff between its own snapshots: blocks 3 and 9 written, 5 discarded (it became zeros).
    const changed = JSON.parse(await rbd('diff', '--format', 'json', '--from-snap', 'before-v2', `${image}@hamal-${v2}`)) as Array<{ offset: number; length: number; exists: string | boolean }>;
    // (import-diff skips runs of zeros inside a block: block 3's extent is its 4 KiB that hold data.)
    assert.equal(changed.map((e) => [Math.floor(e.offset / BS), Math.ceil((e.offset + e.length) / BS), String(e.exists)]), [[3, 4, 'true'], [5, 6, 'false'], [9, 10, 'true']]);
    assert.is(await sha(image), shas[1], 'image after version 2');
    assert.is(await sha(`${image}@hamal-${v2}`), shas[1], 'its snapshot hamal-v2');
    assert.equal(await snaps(image), ['before-v2', `hamal-${v2}`], 'the older hamal- snapshot removed, the operator\'s kept');
    // The same step again: the image says it moved on.
    r = await restore(url(image), '--version', v2, '--from', v1);
    assert.is(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`no snapshot hamal-${v1}.*it has hamal-${v2}`));
  } finally {
    for (const img of [image, fresh]) {
      await rbd('snap', 'purge', '--no-progress', img).catch(() => {});
      await rbd('rm', '--no-progress', img).catch(() => {});
    }
  }
});

test.run();
