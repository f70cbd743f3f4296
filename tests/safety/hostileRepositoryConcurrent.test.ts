// Read-only commands never remove a running writer's temporary files, and two writers do
// not disturb each other: while a slow sync runs (its objects waiting in its own folder
// under .tmp/ until the next flush), versions, verify, a restore of an older version and
// a refused prune run again and again, and a sync of another VM writes to the same
// repository. The slow sync still commits, verify --deep passes, both restore exactly.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, promises as fsp } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { hamal, HAMAL, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from '../helpers/disks.ts';

const KILL60 = ['timeout', '-s', 'KILL', '60'];
const show = (r: Run) => `exit ${r.code} ${r.signal ?? ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('7: versions, verify, restore, a refused prune and another VM\'s sync beside a slow sync: none disturbs it', async () => {
  const dir = await tempDir('hamal-hostile-concurrent-');
  try {
    const repo = join(dir, 'repo');
    const lib = join(dir, 'lib');
    await fsp.mkdir(lib);
    // 1500 ms per MB read: about 6 s for the 8 MiB image on this machine (300 ms/MB made
    // it ~1.6 s, too short to repeat the other commands during it).
    const slowConf = join(dir, 'slow.conf');
    await fsp.writeFile(slowConf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[hamal]\nlocal_release_cpu_time = 1500\n[data_sync_v2]\nfsync_period_frequency = 1\n`);

    const img = join(dir, 'disk.img');
    await makeImage(img, 8 * MiB, [[0, pattern(8 * MiB, 71)]]);
    const sha1 = await sha256File(img);
    const first = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL60);
    assert.is(first.code, 0, show(first));
    const v1 = JSON.parse(first.stdout).disks[0].version as string;
    // Every block changes: the slow sync writes chunks all along.
    await makeImage(img, 8 * MiB, [[0, pattern(8 * MiB, 72)]]);
    const sha2 = await sha256File(img);
    const img2 = join(dir, 'other.img');
    await makeImage(img2, 2 * MiB, [[0, pattern(2 * MiB, 73)]]);
    const sha3 = await sha256File(img2);

    const child = spawn(process.execPath, [HAMAL, 'sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json'], {
      env: { ...process.env, HAMAL_CONFIG: slowConf },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let cout = '';
    let cerr = '';
    child.stdout.on('data', (d) => (cout += d));
    child.stderr.on('data', (d) => (cerr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    let running = true;
    void exited.then(() => (running = false));

    try {
      // Wait for the writer's own folder under .tmp/ with something in it.
      const t0 = Date.now();
      let writerFolder: string | undefined;
      while (!writerFolder && Date.now() - t0 < 15_000 && running) {
        const names = await fsp.readdir(join(repo, '.tmp')).catch(() => [] as string[]);
        for (const n of names.filter((x) => x.startsWith('w-'))) {
          if ((await fsp.readdir(join(repo, '.tmp', n)).catch(() => [])).length > 0) writerFolder = n;
        }
        if (!writerFolder) await sleep(50);
      }
      assert.ok(writerFolder, `the slow sync never had temporary files under .tmp/ (exited: ${!running})\n${cerr}`);

      let rounds = 0;
      let roundsWhileRunning = 0;
      let otherSyncDone = false;
      const prunes: string[] = [];
      while (running && rounds < 6) {
        const o = join(dir, `old-${rounds}.img`);
        const jobs: Array<Promise<void>> = [
          hamal(['versions', '--target', repo, '--json'], {}, KILL60).then((r) => {
            assert.is(r.code, 0, `versions: ${show(r)}`);
            assert.ok((JSON.parse(r.stdout) as Array<{ version: string }>).some((x) => x.version === v1), r.stdout);
          }),
          hamal(['verify', '--target', repo], {}, KILL60).then((r) => assert.is(r.code, 0, `verify: ${show(r)}`)),
          hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--version', v1, '--out', o], {}, KILL60).then(async (r) => {
            assert.is(r.code, 0, `restore of ${v1}: ${show(r)}`);
            assert.is(await sha256File(o), sha1, 'restore of the older version differs');
            await fsp.rm(o);
          }),
          hamal(['prune', '--target', repo, '--keep-last', '1'], {}, KILL60).then((r) => {
            // Refused while a sync holds the repository, or (if the sync just finished) done.
            prunes.push(`${r.code} ${r.stderr.trim().split('\n').pop()}`);
            if (running) {
              assert.is.not(r.code, 0, `prune ran beside a running sync: ${show(r)}`);
              assert.match(`${r.stdout}${r.stderr}`, /in use/, `prune's refusal does not say the repository is in use: ${show(r)}`);
            }
          }),
        ];
        if (!otherSyncDone) {
          otherSyncDone = true;
          jobs.push(
            hamal(['sync', '--vm', 'w', '--disk', `e=${img2}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL60).then((r) =>
              assert.is(r.code, 0, `sync of another VM beside the slow sync: ${show(r)}`),
            ),
          );
        }
        await Promise.all(jobs);
        rounds++;
        if (running) roundsWhileRunning++;
      }
      if (process.env.HOSTILE_DEBUG) console.log(`rounds ${rounds}, while running ${roundsWhileRunning}, ${prunes.join(' | ')}`);
      assert.ok(roundsWhileRunning >= 2, `only ${roundsWhileRunning} rounds of commands finished while the slow sync ran`);

      const code = await exited;
      assert.is(code, 0, `the slow sync failed beside the other commands:\n${cout}\n${cerr}`);
      const v2 = JSON.parse(cout).disks[0].version as string;

      const deep = await hamal(['verify', '--target', repo, '--deep', '--json'], {}, KILL60);
      assert.is(deep.code, 0, show(deep));
      assert.is(JSON.parse(deep.stdout).versions, 3);
      for (const [vm, disk, version, sha] of [
        ['v', 'd', v2, sha2],
        ['v', 'd', v1, sha1],
        ['w', 'e', 'latest', sha3],
      ] as const) {
        const o = join(dir, `final-${vm}-${disk}.img`);
        const r = await hamal(['restore', '--target', repo, '--vm', vm, '--disk', disk, '--version', version, '--out', o], {}, KILL60);
        assert.is(r.code, 0, show(r));
        assert.is(await sha256File(o), sha, `${vm}/${disk}@${version} restores other bytes`);
        await fsp.rm(o);
      }
      // Every store removed its own folder when it closed.
      const left = existsSync(join(repo, '.tmp')) ? await fsp.readdir(join(repo, '.tmp')) : [];
      assert.equal(left, [], 'writer folders left under .tmp/');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test.run();
