// Command-line numbers get the ranges hamal.conf and task files have: a flag out of range
// is bad usage (exit 2) naming the flag and the range, before anything is created.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal } from '../helpers/cli.ts';
import { makeImage, pattern, tempDir } from '../helpers/disks.ts';

let dir: string;
let img: string;
const exists = (path: string) => fsp.access(path).then(() => true, () => false);

test.before(async () => {
  dir = await tempDir('hamal-flags-');
  img = join(dir, 'disk.img');
  await makeImage(img, 100_000, [[0, pattern(100_000, 5)]]);
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

test('sync: --writers, --readers, --parallel-disks and --block-size out of range exit 2 naming the flag and range; nothing is created', async () => {
  const target = join(dir, 'refused');
  const cases: Array<[string[], string]> = [
    [['--writers', '99999'], '--writers must be a whole number from 1 to 64'],
    [['--writers', '0'], '--writers must be a whole number from 1 to 64'],
    [['--writers', '4.5'], '--writers must be a whole number from 1 to 64'],
    [['--readers', '1025'], '--readers must be a whole number from 1 to 1024'],
    [['--readers', '17'], 'readers 17 exceeds max_pre_disk_readers_count (16)'],
    [['--parallel-disks', '1025'], '--parallel-disks must be a whole number from 1 to 1024'],
    [['--parallel-disks', '17'], 'parallel disks 17 exceeds max_parallel_sync_disks_count (16)'],
    [['--block-size', '4097'], '--block-size must be a multiple of 4096 from 4096 to 67108864 (64 MiB)'],
    [['--block-size', '2048'], '--block-size must be a multiple of 4096 from 4096 to 67108864 (64 MiB)'],
    [['--block-size', String(64 * 1048576 + 4096)], '--block-size must be a multiple of 4096 from 4096 to 67108864 (64 MiB)'],
  ];
  for (const [flags, message] of cases) {
    const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', target, ...flags]);
    assert.is(r.code, 2, `${flags}: ${r.stderr}`);
    assert.ok(r.stderr.includes(message), `${flags}: ${r.stderr}`);
    assert.not.ok(await exists(target), `${flags}: no repository created`);
  }
});

test('sync: the bounds themselves are accepted', async () => {
  const target = join(dir, 'edges');
  const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', target, '--writers', '64', '--readers', '16', '--parallel-disks', '1', '--block-size', '4096']);
  assert.is(r.code, 0, r.stderr);
  const p = await hamal(['prune', '--target', target, '--keep-last', '100000']);
  assert.is(p.code, 0, p.stderr);
});

test('init --block-size-mb 1..64 and prune --keep-last 1..100000: outside exit 2 naming the flag and range', async () => {
  for (const n of ['0', '65', '1048576']) {
    const target = join(dir, `init-${n}`);
    const r = await hamal(['init', '--target', target, '--block-size-mb', n]);
    assert.is(r.code, 2, r.stderr);
    assert.ok(r.stderr.includes('--block-size-mb must be a whole number from 1 to 64'), r.stderr);
    assert.not.ok(await exists(target));
  }
  const ok = await hamal(['init', '--target', join(dir, 'init-64'), '--block-size-mb', '64', '--json']);
  assert.is(ok.code, 0, ok.stderr);
  assert.is(JSON.parse(ok.stdout).blockSize, 64 * 1048576);
  for (const n of ['0', '100001', '99999999999999999999']) {
    const r = await hamal(['prune', '--target', join(dir, 'init-64'), '--keep-last', n]);
    assert.is(r.code, 2, r.stderr);
    assert.ok(r.stderr.includes('--keep-last must be a whole number from 1 to 100000'), r.stderr);
  }
});

test.run();
