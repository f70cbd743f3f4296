// A chunk whose plaintext is not its block's length (a manifest whose capacity lies, or a
// chunk of another size under a sound name) fails the restore with CHUNK_WRONG_SIZE naming
// the chunk and the version, and leaves no file.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FsStore, IntegrityError, Repository, restoreDisk, type Manifest } from '../../mod.ts';
import { chunkKey } from '../../src/repo/ChunkId.ts';
import { hamal } from '../helpers/cli.ts';
import { makeImage, pattern, tempDir } from '../helpers/disks.ts';

const BLOCK = 65536;
let dir: string;

test.before(async () => {
  dir = await tempDir('hamal-restore-chunk-');
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

/** A format-1 manifest of `capacity` bytes over `blocks`, as a sync would commit it. */
const manifestOf = (capacity: number, blocks: Array<string | null>): Manifest => ({
  format: 1,
  vm: 'lib',
  disk: 'd',
  version: '20260101T000000000Z-0000abcd',
  parent: null,
  createdAt: new Date().toISOString(),
  capacity,
  blockSize: BLOCK,
  source: { platform: 'local', snapshotId: 'test', changeId: null },
  stats: { readBytes: capacity, changedBytes: capacity, storedBytes: capacity, dedupBytes: 0, zeroBytes: 0, durationMs: 0 },
  blocks,
});

test('restoreDisk: a chunk longer or shorter than its block is CHUNK_WRONG_SIZE naming chunk and version; no file is left', async () => {
  const store = await FsStore.open(join(dir, 'librepo'), { create: true });
  try {
    const repo = await Repository.open(store, { create: true, blockSize: BLOCK });
    const whole = pattern(BLOCK, 1);
    const short = pattern(1000, 2);
    const [wholeId, shortId] = [repo.chunkIdOf(whole), repo.chunkIdOf(short)];
    await repo.storeChunk(wholeId, whole);
    await repo.storeChunk(shortId, short);
    await store.flush();
    const cases: Array<[string, Manifest, string, number, number]> = [
      // Capacity smaller than its chunks, same block count: the last block is 65436 bytes.
      ['longer', manifestOf(2 * BLOCK - 100, [wholeId, wholeId]), wholeId, BLOCK, BLOCK - 100],
      ['shorter', manifestOf(2 * BLOCK, [wholeId, shortId]), shortId, 1000, BLOCK],
    ];
    for (const [name, manifest, id, got, want] of cases) {
      const folder = join(dir, `lib-${name}`);
      await fsp.mkdir(folder);
      const err = await restoreDisk(repo, manifest, join(folder, 'out.img')).then(
        () => assert.unreachable(`${name}: restored`),
        (e: unknown) => e,
      );
      assert.instance(err, IntegrityError);
      const e = err as IntegrityError;
      assert.is(e.code, 'CHUNK_WRONG_SIZE');
      assert.is(e.subject, chunkKey(id));
      assert.is(e.message, `chunk ${chunkKey(id)} holds ${got} bytes, but block 1 of vm lib disk d version ${manifest.version} is ${want} bytes`);
      assert.equal(await fsp.readdir(folder), [], `${name}: no partial file, no output`);
    }
  } finally {
    await store.close();
  }
});

test('hamal restore of a version whose manifest says a smaller capacity (same block count): fails naming the chunk or the manifest, exit 1, no file', async () => {
  const repo = join(dir, 'clirepo');
  const img = join(dir, 'disk.img');
  await makeImage(img, 4 * BLOCK, [[0, pattern(4 * BLOCK, 3)]]);
  const s = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', String(BLOCK), '--json']);
  assert.is(s.code, 0, s.stderr);
  const version: string = JSON.parse(s.stdout).disks[0].version;
  const key = `vms/v/disks/d/versions/${version}.json`;
  const file = join(repo, key);
  const manifest = JSON.parse(await fsp.readFile(file, 'utf8'));
  manifest.capacity -= 100; // still 4 blocks; the last is now 100 bytes shorter than its chunk
  await fsp.writeFile(file, JSON.stringify(manifest));

  const folder = join(dir, 'cli-out');
  await fsp.mkdir(folder);
  const restore = () => hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', join(folder, 'out.img')]);
  const last = manifest.blocks[3] as string;
  const wrongSize = `chunk ${chunkKey(last)} holds ${BLOCK} bytes, but block 3 of vm v disk d version ${version} is ${BLOCK - 100} bytes`;
  const r = await restore();
  assert.is(r.code, 1, r.stderr);
  // A manifest with a digest is refused before any chunk is read: also right.
  assert.ok(r.stderr.includes(wrongSize) || r.stderr.includes(`manifest ${key}`), r.stderr);
  assert.equal(await fsp.readdir(folder), [], 'no partial file, no output');
  if (manifest.digest === undefined) return;
  // Format 1 (no digest), as an older hamal wrote it and this one still reads: now the
  // chunk's length is what fails.
  delete manifest.digest;
  manifest.format = 1;
  await fsp.writeFile(file, JSON.stringify(manifest));
  const r1 = await restore();
  assert.is(r1.code, 1, r1.stderr);
  assert.ok(r1.stderr.includes(wrongSize), r1.stderr);
  assert.equal(await fsp.readdir(folder), [], 'no partial file, no output');
});

test.run();
