// `storedBytes` is the logical size of the chunks a sync wrote; `writtenBytes` what they
// took on the target, which is what a compressed repository's owner pays for.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FsStore, LocalSource, Repository, runVmSync, type Compression } from '../mod.ts';
import { syncTable } from '../src/cli/sync.ts';
import { MiB, makeImage, pattern, tempDir } from './helpers/disks.ts';

/** Bytes of every file under `dir`. */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await fsp.stat(join(e.parentPath, e.name))).size;
  }
  return total;
}

/** 4 MiB of text (compresses well), then 2 MiB of random bytes (does not). */
async function mixedImage(dir: string): Promise<string> {
  const path = join(dir, 'disk.img');
  const text = Buffer.from('hamal syncs VM disks to object storage, block by block.\n'.repeat(80_000)).subarray(0, 4 * MiB);
  await makeImage(path, 6 * MiB, [[0, text], [4 * MiB, pattern(2 * MiB, 7)]]);
  return path;
}

async function syncInto(compression: Compression) {
  const dir = await tempDir();
  const source = new LocalSource({ vms: { vm1: [{ id: 'd0', path: await mixedImage(dir) }] } });
  const repoDir = join(dir, 'repo');
  const repo = await Repository.open(await FsStore.open(repoDir, { create: true }), { create: true, compression, blockSize: 1 * MiB });
  const first = await runVmSync(source, 'vm1', repo);
  const again = await runVmSync(source, 'vm1', repo);
  return { first, again, chunkBytes: await bytesUnder(join(repoDir, 'chunks')) };
}

test('zstd: writtenBytes is what the chunks take on disk, well under the logical storedBytes', async () => {
  const { first, again, chunkBytes } = await syncInto('zstd');
  const s = first.versions[0]!.stats;
  assert.is(s.storedBytes, 6 * MiB, 'logical: every block written, whatever its compression');
  assert.ok(s.writtenBytes! < 3 * MiB, `the text compresses: ${s.writtenBytes} bytes written`);
  assert.ok(s.writtenBytes! > 2 * MiB, 'the random 2 MiB do not');
  assert.ok(Math.abs(s.writtenBytes! - chunkBytes) <= 4096, `written ${s.writtenBytes} vs ${chunkBytes} under chunks/`);
  assert.is(again.versions[0]!.stats.writtenBytes, 0, 'nothing new the second time');
  assert.match(syncTable(first), /written/);
});

test('uncompressed: writtenBytes equals storedBytes', async () => {
  const { first, chunkBytes } = await syncInto('none');
  const s = first.versions[0]!.stats;
  assert.is(s.writtenBytes, s.storedBytes);
  assert.is(chunkBytes, s.storedBytes);
});

test.run();
