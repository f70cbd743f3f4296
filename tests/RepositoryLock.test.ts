import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FsStore } from '../src/sinks/fs/FsStore.ts';
import { RepositoryLock } from '../src/repo/RepositoryLock.ts';
import { tempDir } from './helpers/disks.ts';
import { log } from '../src/log/Logger.ts';

const refused = async (p: Promise<unknown>, pattern: RegExp) => {
  await p.then(
    () => assert.unreachable('lock granted'),
    (err) => {
      assert.is(err.code, 'REPOSITORY_LOCKED');
      assert.match(err.message, pattern);
    },
  );
};

test('shared locks coexist; exclusive waits for them; shared waits for exclusive', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(join(dir, 'r'), { create: true });
  const s1 = await RepositoryLock.acquire(store, 'shared', { purpose: 'sync of VM a' });
  const s2 = await RepositoryLock.acquire(store, 'shared', { purpose: 'sync of VM b' });
  await refused(RepositoryLock.acquire(store, 'exclusive', { purpose: 'prune' }), /in use: sync of VM (a|b) by .*; sync of VM (a|b)/);
  assert.is(await store.head('locks/exclusive.json'), null, 'a refused exclusive lock leaves nothing behind');
  await s1.release();
  await s2.release();
  const x = await RepositoryLock.acquire(store, 'exclusive', { purpose: 'prune' });
  await refused(RepositoryLock.acquire(store, 'shared', { purpose: 'sync of VM c' }), /in use: prune by /);
  await refused(RepositoryLock.acquire(store, 'exclusive'), /in use: prune by /);
  await x.assertHeld();
  await x.release();
  const keys: string[] = [];
  for await (const k of store.list('locks/')) keys.push(k);
  assert.equal(keys, []);
  await fsp.rm(dir, { recursive: true });
});

test("a crashed holder's lock expires (after its ttl plus the clock skew) and is taken over", async () => {
  const dir = await tempDir();
  const store = await FsStore.open(join(dir, 'r'), { create: true });
  const now = Date.now();
  const dead = { kind: 'exclusive', owner: 'gone/1', purpose: 'prune', created: new Date(now - 10_000).toISOString(), expires: new Date(now - 2_000).toISOString() };
  await store.put('locks/exclusive.json', Buffer.from(JSON.stringify(dead)));
  await store.flush();
  // Within the allowed clock skew it still counts as held.
  await refused(RepositoryLock.acquire(store, 'shared', { clockSkewSeconds: 60 }), /prune by gone\/1/);
  const s = await RepositoryLock.acquire(store, 'shared', { clockSkewSeconds: 1 });
  await s.release();
  const x = await RepositoryLock.acquire(store, 'exclusive', { clockSkewSeconds: 1 });
  await x.assertHeld();
  await x.release();
  await fsp.rm(dir, { recursive: true });
});

test('a holder renews its lock before it expires', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(join(dir, 'r'), { create: true });
  const s = await RepositoryLock.acquire(store, 'shared', { ttlSeconds: 0.3 });
  const first = JSON.parse((await store.get(s.key)).toString()).expires;
  await new Promise((r) => setTimeout(r, 250));
  const later = JSON.parse((await store.get(s.key)).toString()).expires;
  assert.ok(Date.parse(later) > Date.parse(first), `${later} after ${first}`);
  await s.release();
  await fsp.rm(dir, { recursive: true });
});

test('renewals that fail: warnings while the stored lock holds, an error naming the risk once it has expired', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(join(dir, 'r'), { create: true });
  const lines: string[] = [];
  log.configure({ sink: (l) => lines.push(l) });
  try {
    const s = await RepositoryLock.acquire(store, 'shared', { ttlSeconds: 0.3, purpose: 'export vm1/d0' });
    const put = store.put.bind(store);
    store.put = () => Promise.reject(new Error('bucket unreachable'));
    await new Promise((r) => setTimeout(r, 700));
    store.put = put;
    const warned = lines.filter((l) => l.includes(`cannot renew repository lock ${s.key} (it holds until`));
    const lapsed = lines.filter((l) => l.includes('ERROR') && l.includes(`repository lock ${s.key} expired at`));
    assert.ok(warned.length >= 1, lines.join('\n'));
    assert.ok(lapsed.length >= 1, lines.join('\n'));
    assert.match(lapsed[0]!, 'a prune elsewhere may now delete chunks this export vm1/d0 still uses');
    assert.match(lapsed[0]!, 'bucket unreachable');
    await s.release();
  } finally {
    log.configure({ sink: (l) => process.stderr.write(l + '\n') });
    await fsp.rm(dir, { recursive: true });
  }
});

test.run();
