// Data safety [11] item 1: a sync killed with SIGKILL, its lock expired, a prune that
// deletes the chunks only that sync had stored, then the sync run again: the version it
// commits must be whole (verify --deep, restore byte for byte), never name pruned chunks.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { HAMAL, hamal } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from '../helpers/disks.ts';

const BS = 64 * 1024;

async function config(dir: string, name: string, extra: string): Promise<string> {
  const path = join(dir, name);
  await fsp.writeFile(
    path,
    `[DEFAULT]\nhamal_lib_dir = ${join(dir, 'lib')}\nlog_dir = ${join(dir, 'no-logs')}\n[data_sync_v2]\nfsync_period_frequency = 1\npre_disk_readers_count = 1\n[hamal]\nlock_ttl = 10\nlock_clock_skew = 0\npartial_index_interval = 0\n${extra}`,
  );
  return path;
}

/** Records of the disk's journal checkpoint, 0 until there is one. */
async function checkpointed(lib: string): Promise<number> {
  for (const repo of await fsp.readdir(join(lib, 'journals')).catch(() => [] as string[])) {
    const text = await fsp.readFile(join(lib, 'journals', repo, 'v', 'd.checkpoint'), 'utf8').catch(() => '');
    if (text) return JSON.parse(text).records as number;
  }
  return 0;
}

test('a resumed sync after a prune rereads the chunks the prune deleted: the version is whole', async () => {
  const dir = await tempDir();
  const image = join(dir, 'd.img');
  const repo = join(dir, 'repo');
  const lib = join(dir, 'lib');
  await makeImage(image, 8 * MiB, [[0, pattern(8 * MiB, 1)]]);
  const fast = await config(dir, 'fast.conf', '');
  // ~25 ms per 64 KiB block: the sync runs long enough to be killed after a few checkpoints.
  const slow = await config(dir, 'slow.conf', 'local_release_cpu_time = 400\n');
  const sync = (conf: string) => ['sync', '--config', conf, '--vm', 'v', '--disk', `d=${image}`, '--target', repo, '--block-size', String(BS)];

  const first = await hamal(sync(fast));
  assert.is(first.code, 0, first.stderr);
  // Most of the disk changes: version 2 stores new chunks.
  await writeAt(image, 0, pattern(7 * MiB, 2));
  const child = spawn(process.execPath, [HAMAL, ...sync(slow)], { stdio: 'ignore' });
  try {
    let records = 0;
    for (let i = 0; i < 400 && records < 24; i++) {
      await new Promise((r) => setTimeout(r, 50));
      records = await checkpointed(lib);
    }
    assert.ok(records >= 24, `the killed sync checkpointed ${records} blocks`);
  } finally {
    child.kill('SIGKILL');
  }
  await new Promise((r) => child.once('close', r));

  // Its shared lock expires (lock_ttl 10 s); then prune may run and deletes its chunks.
  let pruned;
  for (let i = 0; i < 40; i++) {
    pruned = await hamal(['prune', '--config', fast, '--target', repo, '--keep-last', '1', '--json']);
    if (pruned.code === 0) break;
    assert.match(pruned.stderr, /is in use/);
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.is(pruned!.code, 0, pruned!.stderr);
  assert.ok(JSON.parse(pruned!.stdout).deletedChunks >= 20, pruned!.stdout);

  const again = await hamal([...sync(fast), '--json']);
  assert.is(again.code, 0, again.stderr);
  const verify = await hamal(['verify', '--config', fast, '--target', repo, '--deep']);
  assert.is(verify.code, 0, verify.stdout + verify.stderr);
  const out = join(dir, 'out.img');
  const restore = await hamal(['restore', '--config', fast, '--target', repo, '--vm', 'v', '--disk', 'd', '--out', out]);
  assert.is(restore.code, 0, restore.stderr);
  assert.is(await sha256File(out), await sha256File(image));
  assert.match(again.stderr, /a prune since the interrupted sync deleted \d+ of the chunks its local journal names: \d+ blocks are read again/);
  await fsp.rm(dir, { recursive: true });
});

test.run();
