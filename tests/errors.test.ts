import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal, type Run } from './helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from './helpers/disks.ts';

// Tests run as root, for whom chmod hides nothing: the sync runs as nobody (setpriv).
const asNobody = (args: string[], config: string): Promise<Run> =>
  hamal(args, { HAMAL_CONFIG: config }, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']);

let dir: string;
let repo: string;
let img: string;
let config: string;

const verifyDeepPasses = async () => {
  const v = await hamal(['verify', '--target', repo, '--deep']);
  assert.is(v.code, 0, v.stdout + v.stderr);
};

test.before(async () => {
  dir = await tempDir();
  await fsp.chmod(dir, 0o777);
  repo = join(dir, 'repo');
  img = join(dir, 'disk.img');
  await makeImage(img, 8 * MiB, [[MiB, pattern(5 * MiB, 11)]]);
  const r = await hamal(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', repo]);
  assert.is(r.code, 0, r.stderr);
  const lib = join(dir, 'lib');
  await fsp.mkdir(lib, { mode: 0o777 });
  await fsp.chmod(lib, 0o777);
  config = join(dir, 'nobody.conf');
  await fsp.writeFile(config, `[DEFAULT]\nhamal_lib_dir = ${lib}\n`);
  await fsp.chmod(config, 0o644);
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

test('missing disk path: exit 1 naming it; the repository stays valid', async () => {
  const r = await hamal(['sync', '--vm', 'vm', '--disk', `d=${join(dir, 'gone.img')}`, '--target', repo]);
  assert.is(r.code, 1);
  assert.match(r.stderr, `disk d: ${join(dir, 'gone.img')} does not exist`);
  await verifyDeepPasses();
});

test('unreadable disk: exit 1 naming it; the repository stays valid', async () => {
  const secret = join(dir, 'private.img');
  await makeImage(secret, MiB, [[0, pattern(MiB, 1)]]);
  await fsp.chmod(secret, 0o600);
  await new Promise((resolve) => spawn('chmod', ['-R', 'a+rwX', repo]).on('close', resolve));
  const r = await asNobody(['sync', '--vm', 'vm2', '--disk', `p=${secret}`, '--target', repo], config);
  assert.is(r.code, 1, r.stderr);
  assert.match(r.stderr, `disk p: cannot open ${secret} for reading (EACCES)`);
  assert.is(r.stderr.split('\n').filter((l) => l.startsWith('hamal:')).length, 1, r.stderr);
  assert.not.match(r.stderr, /\n\s+at /);
  await verifyDeepPasses();
});

test('target not writable: exit 1 naming it; the repository stays valid', async () => {
  const ro = join(dir, 'ro-repo');
  const seed = await hamal(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', ro]);
  assert.is(seed.code, 0);
  await fsp.chmod(ro, 0o755);
  const r = await asNobody(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', ro], config);
  assert.is(r.code, 1, r.stderr);
  assert.match(r.stderr, `target directory ${ro} is not writable`);
  const v = await hamal(['verify', '--target', ro, '--deep']);
  assert.is(v.code, 0, v.stdout);
});

test('disk full under hamal_lib_dir: exit 1 naming the journal; the repository and the next sync stay valid', async () => {
  const repoConfig = JSON.parse(await fsp.readFile(join(repo, 'config'), 'utf8'));
  const lib = join(dir, 'full-lib');
  const journalDir = join(lib, 'journals', repoConfig.id, 'vm');
  // The kernel's own ENOSPC: hamal_lib_dir is a tmpfs filled to the brim (a journal is
  // never written through a link, so /dev/full behind one no longer serves).
  await fsp.mkdir(lib);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', lib]);
  try {
    await fsp.writeFile(join(lib, 'filler'), Buffer.alloc(MiB)).catch(() => {});
    const conf = join(dir, 'full.conf');
    await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n`);
    await fsp.writeFile(img, pattern(MiB, 12), { flag: 'r+' });
    const r = await hamal(['--config', conf, 'sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', repo]);
    assert.is(r.code, 1, r.stderr);
    assert.match(r.stderr, `cannot write journal ${join(journalDir, 'd.journal')}: ENOSPC`);
  } finally {
    execFileSync('umount', [lib]);
  }
  await verifyDeepPasses();
  const again = await hamal(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', repo]);
  assert.is(again.code, 0, again.stderr);
  const out = join(dir, 'out.img');
  assert.is((await hamal(['restore', '--target', repo, '--vm', 'vm', '--disk', 'd', '--out', out])).code, 0);
  assert.is(await sha256File(out), await sha256File(img));
});

test.run();
