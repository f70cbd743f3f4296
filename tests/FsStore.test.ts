import { test } from 'uvu';
import { readdirSync, readlinkSync } from 'node:fs';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { FsStore } from '../src/sinks/fs/FsStore.ts';
import { putParts, type ObjectStore } from '../src/sinks/ObjectStore.ts';
import { sweepStaleWriters } from '../src/sinks/fs/writerDirs.ts';
import { NotFoundError } from '../src/errors.ts';
import { tempDir } from './helpers/disks.ts';

test('putParts stores the parts joined, written in pieces across their edges', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(join(dir, 's'), { create: true });
  const parts = [Buffer.from('HMC\x01\x00', 'latin1'), randomBytes(1024 * 1024 + 7), Buffer.alloc(0), randomBytes(512 * 1024 - 12), Buffer.from('tail')];
  await store.putParts('chunks/ab/abc', parts);
  await store.flush();
  assert.ok((await fsp.readFile(join(dir, 's', 'chunks', 'ab', 'abc'))).equals(Buffer.concat(parts)));
  await store.putParts('empty', [Buffer.alloc(0)]);
  assert.is((await store.get('empty')).length, 0);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('putParts() joins the parts for a store without putParts, in the room given: no fresh buffer per object', async () => {
  const puts: Uint8Array[] = [];
  const store = { put: async (_key: string, body: Uint8Array) => void puts.push(body) } as unknown as ObjectStore;
  const room = Buffer.alloc(64 * 1024);
  room.write('HMC\x01\x00', 'latin1');
  const block = randomBytes(60 * 1024);
  await putParts(store, 'k', [room.subarray(0, 5), block], {}, room);
  assert.ok(puts[0]!.buffer === room.buffer && puts[0]!.byteOffset === room.byteOffset, 'joined in the room');
  assert.ok(Buffer.from(puts[0]!).equals(Buffer.concat([Buffer.from('HMC\x01\x00', 'latin1'), block])));
  await putParts(store, 'k', [Buffer.from('ab'), randomBytes(64 * 1024)], {}, room); // too large for it
  assert.ok(puts[1]!.buffer !== room.buffer && puts[1]!.length === 64 * 1024 + 2);
});

test('put, get, head, list, delete keep the ObjectStore contract', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(join(dir, 's'), { create: true });
  await store.put('a/b/c', Buffer.from('hello'));
  await store.put('a/b/c', Buffer.from('hello')); // idempotent
  await store.put('a/d', Buffer.from('x'));
  await store.put('top', Buffer.from(''));
  assert.is((await store.get('a/b/c')).toString(), 'hello');
  assert.equal(await store.head('a/d'), { size: 1 });
  assert.is(await store.head('a/nope'), null);
  const all: string[] = [];
  for await (const k of store.list('')) all.push(k);
  assert.equal(all.sort(), ['a/b/c', 'a/d', 'top']);
  const some: string[] = [];
  for await (const k of store.list('a/b')) some.push(k);
  assert.equal(some, ['a/b/c']);
  await store.delete('a/d');
  await store.delete('a/d');
  try {
    await store.get('a/d');
    assert.unreachable();
  } catch (err) {
    assert.instance(err, NotFoundError);
    assert.match((err as Error).message, 'object a/d not found');
  }
  await store.flush();
  await fsp.rm(dir, { recursive: true });
});

/** Files waiting in the temporary folders of every writer. */
async function temporaries(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const w of await fsp.readdir(join(root, '.tmp')).catch(() => [] as string[])) {
    const st = await fsp.lstat(join(root, '.tmp', w));
    if (st.isDirectory()) for (const f of await fsp.readdir(join(root, '.tmp', w))) out.push(`${w}/${f}`);
    else out.push(w);
  }
  return out;
}

test('temporaries of writers that are gone are swept by the next writer, never by a reader, and never listed', async () => {
  const dir = await tempDir();
  const root = join(dir, 's');
  const live = await FsStore.open(root, { create: true });
  await live.put('live/object', Buffer.from('not flushed yet'));
  // A writer that is gone: a real process that has exited, named as FsStore names its folder.
  const child = spawn('true');
  await new Promise((r) => child.once('exit', r));
  const [mine] = await fsp.readdir(join(root, '.tmp'));
  const dead = mine!.replace(/^w-\d+-\d+-/, `w-${child.pid}-1-`);
  await fsp.mkdir(join(root, '.tmp', dead));
  await fsp.writeFile(join(root, '.tmp', dead, 'half-written'), 'xx');
  // Loose files of an earlier release: swept once a day old.
  await fsp.writeFile(join(root, '.tmp', '0123456789abcdef01234567'), 'xx');
  await fsp.utimes(join(root, '.tmp', '0123456789abcdef01234567'), new Date(Date.now() - 2 * 86400_000), new Date(Date.now() - 2 * 86400_000));
  await fsp.writeFile(join(root, '.tmp', '89abcdef0123456789abcdef'), 'xx');

  const reader = await FsStore.open(root);
  const keys: string[] = [];
  for await (const k of reader.list('')) keys.push(k);
  assert.equal(keys, [], 'nothing under .tmp is listed by another store');
  assert.ok((await temporaries(root)).includes(`${dead}/half-written`), 'a reader sweeps nothing');

  const writer = await FsStore.open(root);
  await writer.put('other', Buffer.from('x'));
  const left = await temporaries(root);
  assert.not.ok(left.some((f) => f.startsWith(dead)), 'the dead writer is swept');
  assert.not.ok(left.includes('0123456789abcdef01234567'));
  assert.ok(left.includes('89abcdef0123456789abcdef'));
  await live.flush();
  assert.is((await fsp.readFile(join(root, 'live/object'))).toString(), 'not flushed yet', 'the live writer lost nothing');
  await fsp.rm(dir, { recursive: true });
});

test('the sweep stays in the .tmp it opened: swapping .tmp for a link to another folder while it runs deletes nothing there', async () => {
  const dir = await tempDir();
  const tmp = join(dir, '.tmp');
  const bait = join(dir, 'bait');
  await fsp.mkdir(tmp);
  await fsp.mkdir(bait);
  const old = new Date(Date.now() - 3 * 86400_000);
  const names = Array.from({ length: 1500 }, (_, i) => i.toString(16).padStart(24, '0'));
  for (const n of names) {
    for (const d of [tmp, bait]) {
      await fsp.writeFile(join(d, n), 'x');
      await fsp.utimes(join(d, n), old, old);
    }
  }
  const sweep = sweepStaleWriters(tmp);
  await new Promise((r) => setTimeout(r, 5));
  await fsp.rename(tmp, join(dir, 'moved'));
  await fsp.symlink(bait, tmp);
  await sweep;
  assert.is((await fsp.readdir(bait)).length, names.length, 'a file outside the repository was deleted');
  await fsp.rm(dir, { recursive: true });
});

test('batched: an object is visible at once, under its name only after flush; a crash before flush leaves nothing', async () => {
  const dir = await tempDir();
  const root = join(dir, 's');
  const store = await FsStore.open(root, { create: true });
  await store.put('chunks/ab/abcd', Buffer.from('data'));
  assert.is((await store.get('chunks/ab/abcd')).toString(), 'data');
  assert.equal(await store.head('chunks/ab/abcd'), { size: 4 });
  const listed: string[] = [];
  for await (const k of store.list('chunks/')) listed.push(k);
  assert.equal(listed, ['chunks/ab/abcd']);
  await fsp.stat(join(root, 'chunks/ab/abcd')).then(() => assert.unreachable('renamed before flush'), () => {});
  // "Crash": another store opens the directory without this one having flushed.
  const after = await FsStore.open(root);
  assert.is(await after.head('chunks/ab/abcd'), null);
  // A flushed object survives.
  const again = await FsStore.open(root, { create: true });
  await again.put('k', Buffer.from('v'));
  await again.flush();
  assert.is((await fsp.readFile(join(root, 'k'))).toString(), 'v');
  await fsp.rm(dir, { recursive: true });
});

for (const earlySyncs of [0, 2]) {
  test(`batched with earlySyncs ${earlySyncs}: at most that many files held open between puts, none after flush; every object whole, also those overwritten while syncing`, async () => {
    const dir = await tempDir();
    const store = await FsStore.open(dir, { create: true, earlySyncs });
    // Files of this store held open (other tests in this process open their own).
    const fds = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
        } catch {
          return false;
        }
      }).length;
    const base = 0;
    let most = 0;
    for (let i = 0; i < 30; i++) {
      await store.put(`o/${i % 20}`, Buffer.alloc(256 * 1024, i)); // 10 overwritten while waiting
      most = Math.max(most, fds() - base);
    }
    assert.ok(most <= earlySyncs, `${most} files held open`);
    await store.flush();
    assert.is(fds(), base, 'nothing left open');
    for (let k = 0; k < 20; k++) {
      const i = k < 10 ? k + 20 : k;
      assert.ok((await fsp.readFile(join(dir, 'o', String(k)))).equals(Buffer.alloc(256 * 1024, i)), `o/${k}`);
    }
    assert.equal(await temporaries(dir), []);
    await fsp.rm(dir, { recursive: true });
  });
}

test('syncEachObject: renamed into place as put resolves', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(dir, { create: true, syncEachObject: true });
  await store.put('a/b', Buffer.from('x'));
  assert.is((await fsp.readFile(join(dir, 'a/b'))).toString(), 'x');
  await fsp.rm(dir, { recursive: true });
});

test('keys that could escape the root are refused', async () => {
  const dir = await tempDir();
  const store = await FsStore.open(dir, { create: true });
  for (const key of ['../x', 'a/../../x', '/etc/passwd', 'a//b', '']) {
    await store.put(key, Buffer.from('x')).then(
      () => assert.unreachable(key),
      (err) => assert.instance(err, RangeError),
    );
  }
  await fsp.rm(dir, { recursive: true });
});

test('opening a missing directory for reading is REPOSITORY_NOT_FOUND and creates nothing', async () => {
  const dir = await tempDir();
  await FsStore.open(join(dir, 'none')).then(
    () => assert.unreachable(),
    (err) => assert.is(err.code, 'REPOSITORY_NOT_FOUND'),
  );
  assert.equal(await fsp.readdir(dir), []);
  await fsp.rm(dir, { recursive: true });
});

test.run();
