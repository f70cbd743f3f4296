// `hamal restore --out PATH` never destroys what is at PATH: a new file appears only
// complete and 0600; an existing file is replaced only with --force; links, FIFOs,
// character devices, directories and sockets are refused, whatever the flags.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { hamal, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from '../helpers/disks.ts';

const run = promisify(execFile);
/** Runs the CLI under umask 000: the modes it sets are its own, not the umask's. */
const UMASK_0 = ['sh', '-c', 'umask 000 && exec "$0" "$@"'];

let dir: string;
let repo: string;
let img: string;
let version: string;

const restore = (out: string, ...flags: string[]): Promise<Run> =>
  hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', out, ...flags], {}, UMASK_0);

/** Names in `folder` other than the ones given: a partial file left behind shows here. */
const strays = async (folder: string, expected: string[]) => (await fsp.readdir(folder)).filter((n) => !expected.includes(n));

test.before(async () => {
  dir = await tempDir('hamal-restore-out-');
  repo = join(dir, 'repo');
  img = join(dir, 'disk.img');
  // Not a multiple of the block size: the last block is short.
  await makeImage(img, MiB + 12345, [[0, pattern(MiB + 12345, 7)]]);
  const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json']);
  assert.is(r.code, 0, r.stderr);
  version = JSON.parse(r.stdout).disks[0].version;
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

test('a new file is created 0600 whatever the umask, complete, and no partial file is left', async () => {
  const out = join(dir, 'new', 'out.img');
  await fsp.mkdir(join(dir, 'new'));
  const r = await restore(out);
  assert.is(r.code, 0, r.stderr);
  const st = await fsp.stat(out);
  assert.is(st.mode & 0o777, 0o600);
  assert.is(await sha256File(out), await sha256File(img));
  assert.equal(await strays(join(dir, 'new'), ['out.img']), []);
});

test('an existing 0600 file: refused without --force and left untouched; with --force replaced by the version, still 0600', async () => {
  const out = join(dir, 'precious.img');
  await fsp.writeFile(out, pattern(200_000, 99), { mode: 0o600 });
  const before = await fsp.stat(out);
  const sha = await sha256File(out);

  const refused = await restore(out);
  assert.is(refused.code, 2, refused.stderr);
  assert.ok(refused.stderr.includes(`${out} exists: use --force to replace it`), refused.stderr);
  const after = await fsp.stat(out);
  assert.is(await sha256File(out), sha);
  assert.equal([after.ino, after.mode, after.mtimeMs, after.size], [before.ino, before.mode, before.mtimeMs, before.size]);

  const forced = await restore(out, '--force');
  assert.is(forced.code, 0, forced.stderr);
  assert.is((await fsp.stat(out)).mode & 0o777, 0o600);
  assert.is(await sha256File(out), await sha256File(img));
  assert.equal(await strays(dir, ['repo', 'disk.img', 'new', 'precious.img']), [], 'no partial file');
});

test('a symbolic link is refused, even one to a regular file, with --force or --from: neither the link nor its target changes', async () => {
  const target = join(dir, 'link-target.img');
  const link = join(dir, 'link.img');
  await fsp.writeFile(target, pattern(100_000, 5), { mode: 0o600 });
  await fsp.symlink(target, link);
  const sha = await sha256File(target);
  for (const flags of [[], ['--force'], ['--from', version], ['--from', version, '--force']]) {
    const r = await restore(link, ...flags);
    assert.is(r.code, 2, `${flags}: ${r.stderr}`);
    assert.ok(r.stderr.includes(`${link} is a symbolic link (not followed)`), r.stderr);
    assert.ok((await fsp.lstat(link)).isSymbolicLink());
    assert.is(await fsp.readlink(link), target);
    assert.is(await sha256File(target), sha, `${flags}: the link's target is untouched`);
  }
});

test('a FIFO, a character device, a directory and a socket are refused naming their type, whatever the flags, without blocking', async () => {
  const special = join(dir, 'special');
  await fsp.mkdir(special);
  await run('mkfifo', [join(special, 'fifo')]);
  await run('mknod', [join(special, 'null'), 'c', '1', '3']);
  await fsp.mkdir(join(special, 'dir'));
  await fsp.writeFile(join(special, 'dir', 'inside'), 'kept');
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(join(special, 'sock'), resolve));
  try {
    const cases: Array<[string, string, (st: import('node:fs').Stats) => boolean]> = [
      ['fifo', 'FIFO', (st) => st.isFIFO()],
      ['null', 'character device', (st) => st.isCharacterDevice() && st.rdev === (1 << 8) + 3],
      ['dir', 'directory', (st) => st.isDirectory()],
      ['sock', 'socket', (st) => st.isSocket()],
    ];
    for (const [name, kind, still] of cases) {
      const path = join(special, name);
      for (const flags of [[], ['--force'], ['--from', version], ['--from', version, '--force']]) {
        const r = await restore(path, ...flags);
        assert.is(r.code, 2, `${name} ${flags}: ${r.stderr}`);
        assert.ok(r.stderr.includes(`${path} is a ${kind}: restore writes only to a regular file or a block device`), r.stderr);
        assert.ok(still(await fsp.lstat(path)), `${name} is still a ${kind}`);
      }
    }
    assert.is(await fsp.readFile(join(special, 'dir', 'inside'), 'utf8'), 'kept');
    assert.equal((await fsp.readdir(special)).sort(), ['dir', 'fifo', 'null', 'sock'], 'no partial file');
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test('--from needs an existing regular file or block device: a missing one is refused, nothing is created', async () => {
  const out = join(dir, 'missing', 'replica.img');
  await fsp.mkdir(join(dir, 'missing'));
  const r = await restore(out, '--from', version);
  assert.is(r.code, 2, r.stderr);
  assert.ok(r.stderr.includes(`${out} does not exist: --from needs`), r.stderr);
  assert.equal(await fsp.readdir(join(dir, 'missing')), []);
});

test('--from on a regular replica writes it in place without --force', async () => {
  const out = join(dir, 'replica.img');
  assert.is((await restore(out)).code, 0);
  const ino = (await fsp.stat(out)).ino;
  const r = await restore(out, '--from', version, '--json');
  assert.is(r.code, 0, r.stderr);
  assert.is(JSON.parse(r.stdout).writtenBlocks, 0, 'the replica already holds that version');
  assert.is((await fsp.stat(out)).ino, ino, 'written in place');
  assert.is(await sha256File(out), await sha256File(img));
});

test.run();
