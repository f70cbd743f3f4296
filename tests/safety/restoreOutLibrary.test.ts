// restoreDisk through the library API: safe by default (no force), stopped by an
// AbortSignal without leaving a file, and refusing an output swapped under it between
// its check and its opening, or between its opening and its commit.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp, rmSync, writeFileSync } from 'node:fs';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { FsStore, HamalError, LocalSource, Repository, restoreDisk, runVmSync, type Manifest } from '../../mod.ts';
import { makeImage, pattern, sha256File, tempDir } from '../helpers/disks.ts';

const run = promisify(execFile);
const BLOCK = 65536;
let dir: string;
let store: FsStore;
let repo: Repository;
let manifest: Manifest;
let imgSha: string;

test.before(async () => {
  dir = await tempDir('hamal-restore-lib-');
  const img = join(dir, 'disk.img');
  await makeImage(img, 64 * BLOCK, [[0, pattern(64 * BLOCK, 4)]]);
  imgSha = await sha256File(img);
  store = await FsStore.open(join(dir, 'repo'), { create: true });
  repo = await Repository.open(store, { create: true, blockSize: BLOCK });
  const result = await runVmSync(new LocalSource({ vms: { v: [{ id: 'd', path: img }] } }), 'v', repo, { journalDir: join(dir, 'lib') });
  manifest = result.versions[0]!;
});
test.after(async () => {
  await store.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

/** The HamalError a restore rejects with (fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<HamalError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.instance(err, HamalError, 'the restore fails with a HamalError');
  return err as HamalError;
}

/** A fresh folder of the test's own. */
const folder = async (name: string) => {
  const f = join(dir, name);
  await fsp.mkdir(f);
  return f;
};

/** Runs `fn` while the first lstat of `path` runs `swap` right after it looked: a race made certain. */
async function swapAfterCheck<T>(path: string, swap: () => Promise<void>, fn: () => Promise<T>): Promise<T> {
  const lstat = fsp.lstat;
  let swapped = false;
  fsp.lstat = (async (p: string, ...rest: []) => {
    const st = await lstat(p, ...rest);
    if (!swapped && p === path) {
      swapped = true;
      await swap();
    }
    return st;
  }) as typeof fsp.lstat;
  try {
    return await fn();
  } finally {
    fsp.lstat = lstat;
  }
}

test('without force, an existing file is refused (OUTPUT_EXISTS) and left as it was', async () => {
  const out = join(await folder('exists'), 'out.img');
  await fsp.writeFile(out, 'keep me');
  const err = await failure(restoreDisk(repo, manifest, out));
  assert.is(err.code, 'OUTPUT_EXISTS');
  assert.is(err.exitCode, 2);
  assert.is(await fsp.readFile(out, 'utf8'), 'keep me');
});

test('an AbortSignal stops the restore: RESTORE_STOPPED, fewer blocks written, no partial file; aborted before: nothing opened', async () => {
  const f = await folder('abort');
  const abort = new AbortController();
  let written = 0;
  const err = await failure(
    restoreDisk(repo, manifest, join(f, 'out.img'), {
      concurrency: 2,
      signal: abort.signal,
      onBlock: (_bytes, wrote) => {
        if (wrote && ++written === 1) abort.abort();
      },
    }),
  );
  assert.is(err.code, 'RESTORE_STOPPED');
  assert.match(err.message, `to ${join(f, 'out.img')} stopped: ${join(f, 'out.img')} is as it was (the partial file was removed)`);
  assert.ok(written < manifest.blocks.length, `${written} blocks written`);
  assert.equal(await fsp.readdir(f), []);
  const before = await failure(restoreDisk(repo, manifest, join(f, 'out.img'), { signal: AbortSignal.abort() }));
  assert.is(before.code, 'RESTORE_STOPPED');
  assert.equal(await fsp.readdir(f), []);
});

test('a replica swapped for another file, or a FIFO, between check and open: OUTPUT_CHANGED, without blocking; for a link: refused', async () => {
  const f = await folder('swap');
  const out = join(f, 'replica.img');
  const cases: Array<[string, () => Promise<void>, string]> = [
    ['another file', async () => {
      await fsp.writeFile(join(f, 'other'), 'other file');
      await fsp.rename(join(f, 'other'), out);
    }, 'OUTPUT_CHANGED'],
    ['a FIFO', async () => {
      await fsp.rm(out);
      await run('mkfifo', [out]);
    }, 'OUTPUT_CHANGED'],
    ['a link', async () => {
      await fsp.rm(out);
      await fsp.symlink(join(f, 'victim'), out);
    }, 'OUTPUT_NOT_WRITABLE'],
  ];
  await fsp.writeFile(join(f, 'victim'), 'victim');
  for (const [what, swap, code] of cases) {
    await fsp.rm(out, { force: true });
    await fsp.writeFile(out, 'replica');
    const err = await swapAfterCheck(out, swap, () => failure(restoreDisk(repo, manifest, out, { from: manifest })));
    assert.is(err.code, code, `${what}: ${err.message}`);
    if (code === 'OUTPUT_CHANGED') assert.match(err.message, `${out} changed between its check and its opening`);
  }
  assert.is(await fsp.readFile(join(f, 'victim'), 'utf8'), 'victim', 'the link was not followed');
  assert.is((await fsp.readlink(out)), join(f, 'victim'));
});

test('force over a file that is swapped for a FIFO during the restore: OUTPUT_CHANGED at commit, the FIFO stays, no partial file', async () => {
  const f = await folder('swap-late');
  const out = join(f, 'out.img');
  await fsp.writeFile(out, 'old');
  let swapped = false;
  // Synchronously, in the middle of the restore: done before it commits.
  const onBlock = () => {
    if (swapped) return;
    swapped = true;
    rmSync(out);
    execFileSync('mkfifo', [out]);
  };
  const err = await failure(restoreDisk(repo, manifest, out, { force: true, concurrency: 1, onBlock }));
  assert.is(err.code, 'OUTPUT_CHANGED');
  assert.ok((await fsp.lstat(out)).isFIFO());
  assert.equal(await fsp.readdir(f), ['out.img']);
});

test('a new file whose name is taken during the restore: OUTPUT_EXISTS at commit, what appeared stays, no partial file', async () => {
  const f = await folder('appeared');
  const out = join(f, 'out.img');
  let appeared = false;
  const onBlock = () => {
    if (!appeared) writeFileSync(out, 'someone else');
    appeared = true;
  };
  const err = await failure(restoreDisk(repo, manifest, out, { concurrency: 1, onBlock }));
  assert.is(err.code, 'OUTPUT_EXISTS');
  assert.is(await fsp.readFile(out, 'utf8'), 'someone else');
  assert.equal(await fsp.readdir(f), ['out.img']);
  await fsp.rm(out);
  await restoreDisk(repo, manifest, out);
  assert.is(await sha256File(out), imgSha);
  assert.is((await fsp.stat(out)).mode & 0o777, 0o600);
});

test.run();
