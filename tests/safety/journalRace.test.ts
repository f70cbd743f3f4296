// Data safety [11] item 5: disks of one VM share the VM's journal folder; one disk
// finishing must never take it from under a sibling that is creating its journal there.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal } from '../helpers/cli.ts';
import { pattern, sha256File, tempDir } from '../helpers/disks.ts';

const DISKS = 96;
const RUNS = 4;

test(`a VM of ${DISKS} tiny disks synced ${RUNS} times, 32 disks at once: every run commits every disk`, async () => {
  const dir = await tempDir();
  const conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${join(dir, 'lib')}\nlog_dir = ${join(dir, 'no-logs')}\n[data_sync_v2]\nparallel_sync_disks_count = 32\nmax_parallel_sync_disks_count = 32\n`);
  const disks: string[] = [];
  for (let i = 0; i < DISKS; i++) {
    const path = join(dir, `d${i}.img`);
    await fsp.writeFile(path, pattern(4096, i + 1));
    disks.push('--disk', `d${i}=${path}`);
  }
  const repo = join(dir, 'repo');
  for (let run = 0; run < RUNS; run++) {
    // Every disk changes, so every run writes a journal and a version per disk.
    for (let i = 0; i < DISKS; i++) await fsp.writeFile(join(dir, `d${i}.img`), pattern(4096, 1000 * run + i + 1));
    const r = await hamal(['sync', '--config', conf, '--vm', 'v', ...disks, '--target', repo, '--block-size', '65536', '--json']);
    assert.is(r.code, 0, `run ${run}: ${r.stderr.split('\n').filter((l) => /ERROR|failed/.test(l)).slice(0, 3).join('\n')}`);
    assert.is(JSON.parse(r.stdout).disks.length, DISKS);
  }
  const out = join(dir, 'out.img');
  const restore = await hamal(['restore', '--config', conf, '--target', repo, '--vm', 'v', '--disk', `d${DISKS - 1}`, '--out', out]);
  assert.is(restore.code, 0, restore.stderr);
  assert.is(await sha256File(out), await sha256File(join(dir, `d${DISKS - 1}.img`)));
  await fsp.rm(dir, { recursive: true });
});

test.run();
