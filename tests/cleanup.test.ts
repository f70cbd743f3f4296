// An embedder that stops a sync (abort, unsubscribe) and exits right after must leave no
// platform snapshot and no repository lock behind: cleanup is awaitable.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { lastValueFrom, of, type Observable } from 'rxjs';
import { FsStore, HamalError, releasesSettled, Repository, RepositoryLock, runVmSync, syncVm, type DiskInfo, type Extent, type Snapshot, type Source } from '../mod.ts';
import { MiB, pattern, tempDir } from './helpers/disks.ts';

const BLOCK = 64 * 1024;
const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** A platform whose reads take 10 ms and whose snapshot takes 300 ms to remove. */
class SlowReleaseSource implements Source {
  readonly platform = 'slow-release';
  releaseStarted = false;
  releaseEnded = false;
  reads = 0;

  async snapshot(vm: string): Promise<Snapshot> {
    const disk: DiskInfo = { id: 'd0', label: 'd0', capacity: 4 * MiB, changeId: null };
    return {
      vm: { id: vm, name: vm },
      id: 'snap-1',
      platform: this.platform,
      disks: [disk],
      changes: (d: DiskInfo): Observable<Extent> => of({ offset: 0, length: d.capacity }),
      read: async (_d, offset, length) => {
        this.reads++;
        await sleep(10);
        return pattern(length, offset / BLOCK + 1);
      },
      release: async () => {
        this.releaseStarted = true;
        await sleep(300);
        this.releaseEnded = true;
      },
    };
  }
}

async function freshRepo(): Promise<Repository> {
  const dir = await tempDir();
  return Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true, blockSize: BLOCK });
}

/** Fails unless no shared lock is left: prune's exclusive lock refuses to coexist with one. */
async function exclusiveLockFree(repo: Repository): Promise<void> {
  const lock = await RepositoryLock.acquire(repo.store, 'exclusive', { purpose: 'test' });
  await lock.release();
}

async function whenRead(source: SlowReleaseSource, reads: number): Promise<void> {
  while (source.reads < reads) await sleep(2);
}

test('runVmSync rejects after an abort only once the snapshot is released and the lock dropped', async () => {
  const repo = await freshRepo();
  const source = new SlowReleaseSource();
  const abort = new AbortController();
  void whenRead(source, 3).then(() => abort.abort());
  const err = await runVmSync(source, 'vm1', repo, { readers: 1, writers: 1 }, undefined, abort.signal).then(
    () => assert.unreachable('the sync should have been interrupted'),
    (e: unknown) => e,
  );
  assert.instance(err, HamalError);
  assert.is((err as HamalError).code, 'INTERRUPTED');
  assert.ok(source.releaseEnded, 'the snapshot release had ended when the promise settled');
  await exclusiveLockFree(repo);
});

test('syncVm with a signal errors only after the release', async () => {
  const repo = await freshRepo();
  const source = new SlowReleaseSource();
  const abort = new AbortController();
  void whenRead(source, 2).then(() => abort.abort());
  const err = await lastValueFrom(syncVm(source, 'vm1', repo, { readers: 1, writers: 1, signal: abort.signal })).catch((e: unknown) => e);
  assert.is((err as HamalError).code, 'INTERRUPTED');
  assert.ok(source.releaseEnded);
  await exclusiveLockFree(repo);
});

test('after an abort nobody awaits (serve stopping a task), releasesSettled() covers the release', async () => {
  const repo = await freshRepo();
  const source = new SlowReleaseSource();
  const abort = new AbortController();
  const sync = runVmSync(source, 'vm1', repo, { readers: 1, writers: 1 }, undefined, abort.signal).catch(() => {});
  await whenRead(source, 2);
  abort.abort();
  await releasesSettled();
  assert.ok(source.releaseEnded, 'the snapshot release had ended');
  await exclusiveLockFree(repo);
  await sync;
});

test('an abort before the sync starts takes no snapshot and no lock', async () => {
  const repo = await freshRepo();
  const source = new SlowReleaseSource();
  const err = await runVmSync(source, 'vm1', repo, {}, undefined, AbortSignal.abort()).catch((e: unknown) => e);
  assert.is((err as HamalError).code, 'INTERRUPTED');
  assert.is(source.releaseStarted, false, 'no snapshot was taken');
  await exclusiveLockFree(repo);
});

test('after an unsubscription, releasesSettled() settles once the snapshot and lock are released', async () => {
  const repo = await freshRepo();
  const source = new SlowReleaseSource();
  const sub = syncVm(source, 'vm1', repo, { readers: 1, writers: 1 }).subscribe({ error: () => {} });
  await whenRead(source, 2);
  sub.unsubscribe();
  await releasesSettled();
  assert.ok(source.releaseEnded, 'the snapshot release had ended');
  await exclusiveLockFree(repo);
});

test('unsubscribed while the lock is being taken, the lock is dropped once taken', async () => {
  const repo = await freshRepo();
  const source = new SlowReleaseSource();
  const sub = syncVm(source, 'vm1', repo).subscribe({ error: () => {} });
  sub.unsubscribe();
  await releasesSettled();
  await exclusiveLockFree(repo);
  assert.is(source.releaseStarted, false, 'no snapshot was taken');
});

test.run();
