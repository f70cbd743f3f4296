import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FsStore, LocalSource, Repository, restoreDisk, runVmSync } from '../mod.ts';
import { Journal, JOURNAL_FORMAT, type JournalHeader } from '../src/repo/Journal.ts';
import { pullMap } from '../src/streams/pullMap.ts';
import { blocksOf } from '../src/streams/blocksOf.ts';
import { SlowStore } from './helpers/SlowStore.ts';
import { CountingSource, killAndResume } from './helpers/killAndResume.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { lastValueFrom, toArray } from 'rxjs';

const BS = 64 * 1024;

test('a sync killed with SIGKILL after a checkpoint resumes without rereading checkpointed blocks', async () => {
  const repoDir = await tempDir();
  await killAndResume(repoDir + '/repo', async () => Repository.open(await FsStore.open(repoDir + '/repo'), {}));
  await fsp.rm(repoDir, { recursive: true });
});

async function interruptedJournal(dir: string) {
  const image = join(dir, 'd.img');
  await makeImage(image, 16 * BS, [[0, pattern(16 * BS, 9)]]);
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true, blockSize: BS });
  const libDir = join(dir, 'lib');
  const header: JournalHeader = { format: JOURNAL_FORMAT, repository: repo.config.id, vm: 'vm', disk: 'd', capacity: 16 * BS, blockSize: BS, parent: null, since: null, snapshotId: '', changeId: null, generation: 0 };
  const source = new CountingSource(new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } }));
  header.snapshotId = await source.snapshot('vm').then(async (s) => { await s.release(); return s.id; });
  const path = Journal.pathFor(libDir, header);
  // A journal that claims 8 blocks are stored (their chunks are not: trusting it would be wrong).
  const journal = await Journal.open(path, header);
  for (let i = 0; i < 8; i++) journal.record(i, 'ab'.repeat(32));
  await journal.checkpoint();
  await journal.close();
  return { image, repo, libDir, path, source, header };
}

for (const [name, damage] of [
  ['truncated', async (path: string) => { const st = await fsp.stat(path); await fsp.truncate(path, st.size - 10); }],
  ['flipped byte', async (path: string) => { const b = await fsp.readFile(path); b[b.length - 40]! ^= 0x10; await fsp.writeFile(path, b); }],
] as const) {
  test(`a ${name} journal is detected and the version starts over`, async () => {
    const dir = await tempDir();
    const { image, repo, libDir, path, source, header } = await interruptedJournal(dir);
    assert.is((await Journal.recover(path, header)).status, 'resumed', 'the intact journal would be resumed');
    await damage(path);
    const rec = await Journal.recover(path, header);
    assert.is(rec.status, name === 'truncated' ? 'truncated' : 'corrupt');
    const notes: string[] = [];
    const result = await runVmSync(source, 'vm', repo, { journalDir: libDir }, (e) => {
      if (e.type === 'disk-start') notes.push(...e.notes);
    });
    assert.match(notes.join('\n'), /journal of an interrupted sync not used .*starting this version over/);
    assert.is(source.reads.length, 16, 'every block read again');
    const out = join(dir, 'out.img');
    await restoreDisk(repo, result.versions[0]!, out);
    assert.is(await sha256File(out), await sha256File(image));
    await fsp.rm(dir, { recursive: true });
  });
}

test('a journal of another snapshot (the disk changed since) is not resumed', async () => {
  const dir = await tempDir();
  const { header, path } = await interruptedJournal(dir);
  const rec = await Journal.recover(path, { ...header, snapshotId: 'local-other' });
  assert.is(rec.status, 'mismatch');
  await fsp.rm(dir, { recursive: true });
});

test('a checkpoint slower than fsync_timeout fails the disk cleanly; a rerun completes', async () => {
  const dir = await tempDir();
  const image = join(dir, 'd.img');
  await makeImage(image, 16 * BS, [[0, pattern(16 * BS, 4)]]);
  const inner = await FsStore.open(join(dir, 'repo'), { create: true });
  const slow = new SlowStore(inner, 20, 400);
  const repo = await Repository.open(slow, { create: true, blockSize: BS });
  const source = new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } });
  const failed = await runVmSync(source, 'vm', repo, { journalDir: join(dir, 'lib'), checkpointSeconds: 0.05, checkpointTimeoutSeconds: 0.1 });
  assert.is(failed.failed.length, 1);
  assert.is((failed.failed[0]!.error as { code?: string }).code, 'FSYNC_TIMEOUT');
  assert.match(failed.failed[0]!.error.message, 'disk d: a checkpoint took longer than fsync_timeout (0.1 s)');
  assert.equal(await repo.listVersions('vm', 'd'), []);
  const fast = await Repository.open(inner, {});
  const ok = await runVmSync(source, 'vm', fast, { journalDir: join(dir, 'lib') });
  assert.equal(ok.failed, []);
  const out = join(dir, 'out.img');
  await restoreDisk(fast, ok.versions[0]!, out);
  assert.is(await sha256File(out), await sha256File(image));
  await fsp.rm(dir, { recursive: true });
});

test('bytes in flight never exceed (readers + writers) x block size against a slow store', async () => {
  const dir = await tempDir();
  const image = join(dir, 'd.img');
  await makeImage(image, 40 * BS, [[0, pattern(40 * BS, 3)]]);
  const store = new SlowStore(await FsStore.open(join(dir, 'repo'), { create: true }), 15);
  const repo = await Repository.open(store, { create: true, blockSize: BS });
  let peak = 0;
  const result = await runVmSync(new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } }), 'vm', repo, {
    readers: 2,
    writers: 1,
    onInFlight: (bytes) => (peak = Math.max(peak, bytes)),
  });
  assert.equal(result.failed, []);
  assert.ok(peak <= 3 * BS, `peak ${peak} over the bound`);
  assert.ok(peak > BS, `peak ${peak}: the caps were never used`);
  assert.is(store.chunkPuts, 40);
  await fsp.rm(dir, { recursive: true });
});

test('pullMap pauses a pushing child process: data pulled but not done stays within the bound', async () => {
  // 16 MiB from a real child process's stdout, consumed 4 blocks at a time, slowly.
  const child = spawn('head', ['-c', String(16 * MiB), '/dev/urandom'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let pulled = 0;
  let done = 0;
  let worst = 0;
  const counted = (async function* () {
    for await (const b of blocksOf(child.stdout!, BS)) {
      pulled += b.length;
      yield b;
    }
  })();
  const sizes = await lastValueFrom(
    pullMap(
      counted,
      async (b) => {
        worst = Math.max(worst, pulled - done);
        await new Promise((r) => setTimeout(r, 1));
        done += b.length;
        return b.length;
      },
      4,
    ).pipe(toArray()),
  );
  assert.is(sizes.reduce((a, b) => a + b, 0), 16 * MiB);
  assert.ok(worst <= 4 * BS, `worst ${worst}`);
});

test('pullMap stops pulling when unsubscribed, and the child stream is destroyed', async () => {
  const child = spawn('cat', ['/dev/zero'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let got = 0;
  await new Promise<void>((resolve) => {
    const sub = pullMap(blocksOf(child.stdout!, BS), async (b) => b.length, 2).subscribe(() => {
      if (++got === 10) {
        sub.unsubscribe();
        resolve();
      }
    });
  });
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(child.stdout!.destroyed, 'stdout destroyed');
  child.kill();
  assert.is(got, 10);
});

test.run();
