// Data safety [11] item 8: what a local disk may be. An empty disk syncs to an empty
// version; a FIFO, a character device, a directory are refused before they are opened
// (a FIFO used to block open() for ever and outlive SIGTERM); a link to an image is fine
// (LVM's /dev/VG/LV are links).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { TEST_CONFIG, hamal } from '../helpers/cli.ts';
import { makeImage, pattern, sha256File, tempDir } from '../helpers/disks.ts';

test('an empty disk syncs to an empty version and restores to an empty file', async () => {
  const dir = await tempDir();
  await fsp.writeFile(join(dir, 'empty.img'), '');
  const repo = join(dir, 'repo');
  // Ten seconds at most: the previous main never returned.
  const sync = await hamal(['sync', '--vm', 'v', '--disk', `e=${join(dir, 'empty.img')}`, '--target', repo, '--json'], {}, ['timeout', '-s', 'KILL', '10']);
  assert.is(sync.code, 0, sync.stderr);
  const disk = JSON.parse(sync.stdout).disks[0];
  assert.is(disk.capacity, 0);
  const out = join(dir, 'out.img');
  const restore = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'e', '--out', out]);
  assert.is(restore.code, 0, restore.stderr);
  assert.is((await fsp.stat(out)).size, 0);
  await fsp.rm(dir, { recursive: true });
});

test('a FIFO, a character device and a directory are refused by name before anything is opened', async () => {
  const dir = await tempDir();
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  execFileSync('mknod', [join(dir, 'null'), 'c', '1', '3']);
  await fsp.mkdir(join(dir, 'folder'));
  for (const [name, kind] of [['fifo', 'FIFO'], ['null', 'character device'], ['folder', 'directory']] as const) {
    const r = await hamal(['sync', '--vm', 'v', '--disk', `x=${join(dir, name)}`, '--target', join(dir, 'repo')], {}, ['timeout', '-s', 'KILL', '10']);
    assert.is(r.code, 2, `${name}: ${r.stderr}`);
    assert.match(r.stderr, `disk x: ${join(dir, name)} is a ${kind}, not a regular file or block device`);
  }
  await fsp.rm(dir, { recursive: true });
});

test('a link to an image is synced as the image', async () => {
  const dir = await tempDir();
  await makeImage(join(dir, 'real.img'), 256 * 1024, [[4096, pattern(100_000, 3)]]);
  await fsp.symlink(join(dir, 'real.img'), join(dir, 'link.img'));
  const repo = join(dir, 'repo');
  const sync = await hamal(['sync', '--config', TEST_CONFIG, '--vm', 'v', '--disk', `d=${join(dir, 'link.img')}`, '--target', repo]);
  assert.is(sync.code, 0, sync.stderr);
  const out = join(dir, 'out.img');
  assert.is((await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', out])).code, 0);
  assert.is(await sha256File(out), await sha256File(join(dir, 'real.img')));
  await fsp.rm(dir, { recursive: true });
});

test.run();
